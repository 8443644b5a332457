//! The installed binary on its own, as `cargo install` leaves it: copied out of the build
//! tree and run from an empty directory, with a home of its own and no path into the source
//! tree. It must dream, zoom, render video and run every built-in preset.

use crate::util::{repo, scratch};
use deepdream::config::BUILTIN_PRESETS;
use std::path::PathBuf;
use std::process::Command;

struct Installed {
    bin: PathBuf,
    home: PathBuf,
    work: PathBuf,
    /// Holds the directories above (removed with it).
    _root: crate::util::Scratch,
}

impl Installed {
    fn new(name: &str) -> Installed {
        let root = scratch(name);
        let (bin, home, work) = (root.join("bin/deepdream"), root.join("home"), root.join("work"));
        for d in [bin.parent().unwrap(), &home, &work] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::copy(env!("CARGO_BIN_EXE_deepdream"), &bin).unwrap();
        Installed { bin, home, work, _root: root }
    }

    /// Runs the copy in the work directory with nothing of this process's environment but
    /// PATH (for nothing: the binary starts no programs) and the models other than the built-in
    /// one, which a user installs into their own cache.
    fn run(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args).current_dir(&self.work).env_clear().env("HOME", &self.home);
        if let Some(path) = std::env::var_os("PATH") {
            cmd.env("PATH", path);
        }
        if let Some(models) = deepdream::model::weights::cache_dir().filter(|d| d.is_dir()) {
            cmd.env("DEEPDREAM_MODELS", models);
        }
        let o = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "deepdream {}: {err}", args.join(" "));
        String::from_utf8_lossy(&o.stdout).into_owned() + &err
    }

    fn has(&self, file: &str) -> bool {
        std::fs::metadata(self.work.join(file)).is_ok_and(|m| m.len() > 0)
    }
}

const QUICK: [&str; 6] = ["--octaves", "1", "--steps", "1", "--max-size", "64"];

fn quick<'a>(args: &[&'a str]) -> Vec<&'a str> {
    [args, &QUICK[..]].concat()
}

#[test]
fn a_copied_binary_runs_everything_from_an_empty_directory() {
    let app = Installed::new("installed");
    // The user's own photo, in the directory they work in.
    std::fs::copy(repo().join("examples/coffee.jpg"), app.work.join("photo.jpg")).unwrap();
    let text = app.run(&["models"]);
    assert!(text.contains("efficientnet-lite0") && text.contains("built into the binary"), "{text}");
    app.run(&["classify", "photo.jpg"]);
    app.run(&quick(&["dream", "photo.jpg", "-o", "dream.png"]));
    assert!(app.has("dream.png"));
    app.run(&quick(&["zoom", "photo.jpg", "-o", "zoom", "--frames", "2"]));
    assert!(app.has("zoom/frame_00002.png"));
    for (name, _) in BUILTIN_PRESETS {
        let preset = deepdream::config::PresetFile::load(name).unwrap();
        let model = preset.preset.model.as_ref().map_or(deepdream::model::DEFAULT_MODEL, |m| m.get_ref().as_str());
        if !crate::util::installed(model) {
            continue;
        }
        let out = format!("{name}.png");
        app.run(&["dream", "photo.jpg", "-o", &out, "--preset", name, "--octaves", "1", "--steps", "1"]);
        assert!(app.has(&out), "{name}");
    }
    #[cfg(feature = "video")]
    {
        app.run(&quick(&["zoom", "photo.jpg", "-o", "clip.mp4", "--frames", "3"]));
        app.run(&quick(&["video", "clip.mp4", "-o", "dreamed.mp4"]));
        assert!(app.has("dreamed.mp4"));
    }
    // Nothing was written beside the binary.
    let beside: Vec<_> = std::fs::read_dir(app.bin.parent().unwrap()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(beside, vec![app.bin.clone()]);
}
