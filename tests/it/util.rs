use deepdream::model::{self, FeatureNet};
use std::path::PathBuf;
use std::sync::OnceLock;

/// Reports a test that cannot run here because an input is missing. With
/// `DEEPDREAM_REQUIRE_ALL=1` (CI sets it) a skip is a failure, so a green CI cannot hide one.
pub fn skip(reason: &str) {
    if std::env::var_os("DEEPDREAM_REQUIRE_ALL").is_some_and(|v| v != "0") {
        panic!("required input missing (DEEPDREAM_REQUIRE_ALL is set): {reason}");
    }
    eprintln!("skipped: {reason}");
}

/// `../shared`, or `None` (with the reason reported through [`skip`]) when this checkout has none.
pub fn shared() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared");
    if dir.join("reference").is_dir() {
        Some(dir)
    } else {
        skip("../shared/reference is not present in this checkout");
        None
    }
}

/// Whether zoo model `name` is installed; when it is not, the test is skipped through [`skip`].
pub fn installed(name: &str) -> bool {
    let found = model::locate(name).is_ok();
    if !found {
        skip(&format!("{name} is not installed (scripts/fetch-registry-models.sh installs it)"));
    }
    found
}

pub fn lite0() -> &'static dyn FeatureNet {
    static NET: OnceLock<Box<dyn FeatureNet>> = OnceLock::new();
    NET.get_or_init(|| model::load("efficientnet-lite0").expect("models/efficientnet_lite0.safetensors loads")).as_ref()
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Peak signal-to-noise ratio of two 8-bit images of the same size, in dB.
pub fn psnr(a: &image::RgbImage, b: &image::RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let mse: f64 = a.as_raw().iter().zip(b.as_raw()).map(|(&x, &y)| (x as f64 - y as f64).powi(2)).sum::<f64>()
        / a.as_raw().len() as f64;
    10.0 * (255.0f64 * 255.0 / mse.max(1e-12)).log10()
}

/// Runs the `deepdream` binary.
pub fn deepdream(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_deepdream")).args(args).output().expect("binary runs")
}

/// A fresh, empty directory for one test's outputs (names are unique across the test binary),
/// removed when the test ends well; a failed test leaves it for a look.
pub fn scratch(name: &str) -> Scratch {
    let d = std::env::temp_dir().join(format!("dd-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Scratch(d)
}

/// See [`scratch`]: the directory's path, which the directory does not outlive.
pub struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = PathBuf;
    fn deref(&self) -> &PathBuf {
        &self.0
    }
}

impl AsRef<std::path::Path> for Scratch {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
