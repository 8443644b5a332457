//! Hostile inputs through the binary, one table: each case must exit with its code, say one
//! line on stderr naming the problem, never panic, and leave nothing in the output directory.
//! (More cases live beside the features they guard: cli.rs, video.rs, fetch.rs, config tests.)

use crate::util::{deepdream, repo, scratch};
use std::path::Path;

/// Inputs made here: a 1x1, a 1x300 and a 1x16384 image, a text file named .png, an empty file.
fn inputs(dir: &Path) {
    image::RgbImage::from_pixel(1, 1, image::Rgb([200, 10, 10])).save(dir.join("dot.png")).unwrap();
    image::RgbImage::from_fn(1, 300, |_, y| image::Rgb([y as u8, 90, 200])).save(dir.join("line.bmp")).unwrap();
    std::fs::write(dir.join("text.png"), "not an image").unwrap();
    std::fs::write(dir.join("empty.jpg"), b"").unwrap();
    std::fs::write(dir.join("clip.mp4"), b"\0\0\0\x18ftypisom\0\0\x02\0isomiso2").unwrap();
    image::RgbImage::from_pixel(1, 16384, image::Rgb([9, 9, 9])).save(dir.join("tall.png")).unwrap();
    // A 60 bytes BMP that declares 60000 x 60000 pixels (10 GB decoded).
    let mut bmp = b"BM".to_vec();
    for v in [62u32, 0, 54, 40, 60000, 60000] {
        bmp.extend(v.to_le_bytes());
    }
    bmp.extend(1u16.to_le_bytes());
    bmp.extend(24u16.to_le_bytes());
    bmp.extend([0u8; 24 + 8]);
    std::fs::write(dir.join("bomb.bmp"), bmp).unwrap();
}

#[test]
fn hostile_inputs_get_one_clear_line() {
    let src = scratch("hostile-src");
    inputs(&src);
    let out = scratch("hostile-out");
    let (ex, o_png, o_gif) = (
        repo().join("examples/chelsea.png").to_string_lossy().into_owned(),
        out.join("o.png").to_string_lossy().into_owned(),
        out.join("o.gif").to_string_lossy().into_owned(),
    );
    let s = |name: &str| src.join(name).to_string_lossy().into_owned();
    let dream = |extra: &[&'static str]| [&["dream", ex.as_str(), "-o", o_png.as_str()][..], extra].concat();
    let zoom = |extra: &[&'static str]| [&["zoom", ex.as_str(), "-o", o_gif.as_str()][..], extra].concat();
    let (text, empty, tall, bomb) = (s("text.png"), s("empty.jpg"), s("tall.png"), s("bomb.bmp"));
    let clip = s("clip.mp4");
    let o_webp = out.join("o.webp").to_string_lossy().into_owned();
    let o_slash = format!("{o_png}/");
    // A name that would print a line break and turn the terminal red.
    let odd = s("odd\n\u{1b}[31mname.png");
    // (arguments, exit code, text the one line must hold)
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (dream(&["--step", "nan"]), 2, "--step: must be positive"),
        (dream(&["--step=-inf"]), 2, "--step"),
        (dream(&["--octave-scale", "inf"]), 2, "--octave-scale"),
        (dream(&["--octaves", "0"]), 2, "--octaves"),
        (dream(&["--octaves", "18446744073709551615"]), 2, "--octaves"),
        (dream(&["--jitter", "99999999999"]), 2, "--jitter"),
        (dream(&["--decay", "-0.1"]), 2, "--decay"),
        (dream(&["--tv", "1e308"]), 2, "--tv"),
        (dream(&["--grad-blur", "1e-320"]), 2, "--grad-blur: must be 0 (off) or between 0.1 and 20"),
        (dream(&["--class", ""]), 2, "--class: no classes in"),
        (dream(&["--max-size", "0"]), 2, "--max-size"),
        (dream(&["--tile", "100"]), 2, "--tile"),
        (dream(&["--layers", "block5=nan"]), 2, "--layers"),
        (dream(&["--layers", "block5=1e38"]), 2, "--layers"),
        (dream(&["--class", "zzz"]), 2, "--class"),
        (dream(&["--class", "banana=inf"]), 2, "--class"),
        (dream(&["--seed", "-1"]), 2, "--seed"),
        (dream(&["--max-loss", "5", "--steps", "1", "--octaves", "1"]), 2, "no ascent step was taken"),
        (dream(&["--device", "tpu"]), 2, "--device"),
        (dream(&["--preset", "no-such-preset"]), 2, "--preset"),
        (vec!["dream", text.as_str(), "-o", o_png.as_str()], 2, "not an image format"),
        (vec!["dream", empty.as_str(), "-o", o_png.as_str()], 2, "cannot read image"),
        (
            vec!["dream", clip.as_str(), "-o", o_png.as_str()],
            2,
            "a video, not an image: dream it with `deepdream video`",
        ),
        (vec!["dream", odd.as_str(), "-o", o_png.as_str()], 2, "odd\\n\\u{1b}[31mname.png"),
        (vec!["dream", tall.as_str(), "-o", o_webp.as_str()], 2, "1x16384 image is too large for .webp"),
        (vec!["dream", bomb.as_str(), "-o", o_png.as_str()], 2, "declares a picture larger than 32768 pixels"),
        (vec!["classify", bomb.as_str()], 2, "declares a picture larger than 32768 pixels"),
        (vec!["dream", "/dev/zero", "-o", o_png.as_str()], 2, "larger than 512 MiB"),
        (vec!["dream", ex.as_str(), "-o", "/no/such/dir/o.png"], 2, "/no/such/dir/o.png"),
        (vec!["dream", ex.as_str(), "-o", o_slash.as_str()], 2, "ends with '/'"),
        (zoom(&["--frames", "0"]), 2, "--frames"),
        (zoom(&["--frames", "18446744073709551615"]), 2, "--frames"),
        (zoom(&["--duration", "1e308"]), 2, "--duration"),
        (zoom(&["--fps", "0"]), 2, "--fps"),
        (zoom(&["--fps", "inf"]), 2, "--fps"),
        (zoom(&["--zoom", "0"]), 2, "--zoom"),
        (zoom(&["--zoom-per-second", "1e-300"]), 2, "--zoom-per-second"),
        (zoom(&["--pan", "1,inf"]), 2, "--pan"),
        (zoom(&["--rotate", "nan"]), 2, "--rotate"),
        (zoom(&["--crf", "99"]), 2, "--crf"),
        (zoom(&["--x264-preset", "warp"]), 2, "--x264-preset"),
        (vec!["layers", "--size", "0x0"], 2, "--size"),
        (vec!["layers", "--size", "18446744073709551615x2"], 2, "--size"),
        (vec!["classify", ex.as_str(), "--top", "0"], 2, "--top"),
        (vec!["classify", ex.as_str(), "--max-size", "0"], 2, "--max-size"),
        (vec!["bench", "--steps", "0", "--size", "32x32"], 2, "--steps"),
        (vec!["bench", "--formula-weights", "--size", "32x32"], 2, "efficientnet-lite0 has no formula weights"),
        (
            vec!["models", "import", text.as_str(), "--as", "efficientnet-lite0", "--dir", out.to_str().unwrap()],
            2,
            "text.png",
        ),
    ];
    for (args, code, needle) in &cases {
        let o = deepdream(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(*code), "{args:?}: {err}");
        assert!(
            err.contains(needle) && err.trim_end().lines().count() == 1,
            "{args:?}: want one line with {needle:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        let left: Vec<_> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(left.is_empty(), "{args:?} left {left:?}");
    }
    // A layer given on the command line is not held back by the default preset's max_loss
    // (tuned to its own layers): it dreams.
    let o = deepdream(&dream(&["--layers", "block12=100", "--steps", "2", "--octaves", "1", "--max-size", "96"]));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && err.contains("2 steps"), "{err}");
    std::fs::remove_file(&o_png).unwrap();
    // Tiny and one-pixel-wide images dream (the default network pads every layer). A 1x1
    // red dot's loss starts past the default preset's max_loss, which the dream says instead
    // of writing the input back unchanged; without the limit it dreams.
    let o = deepdream(&["dream", &s("dot.png"), "-o", &o_png, "--octaves", "2", "--steps", "1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.code() == Some(2) && err.contains("past max_loss (600)") && !Path::new(&o_png).exists(), "{err}");
    for (name, size) in [("dot.png", (1, 1)), ("line.bmp", (1, 300))] {
        let args = ["dream", &s(name), "-o", &o_png, "--octaves", "2", "--steps", "1", "--max-loss", "1e30"];
        let o = deepdream(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success() && err.contains("2 steps"), "{name}: {err}");
        assert_eq!(image::open(&o_png).unwrap().to_rgb8().dimensions(), size);
        std::fs::remove_file(&o_png).unwrap();
    }
}

#[test]
fn staging_files_of_killed_runs_are_cleaned_up() {
    let dir = scratch("orphans");
    let out = dir.join("o.png");
    // PID 4194305 is above Linux's largest; PID 1 always runs; the others are not ours.
    let names = [".o.png.4194305.tmp", ".o.png.1.tmp", ".o.png.notes.tmp", ".other.png.4194305.tmp"];
    // Left an hour ago; one of the same kind written just now may belong to a process this
    // machine cannot see (another host on a shared disk) and stays.
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    for name in names {
        let file = std::fs::File::create(dir.join(name)).unwrap();
        file.set_modified(hour_ago).unwrap();
    }
    std::fs::write(dir.join(".o.png.4194306.tmp"), b"fresh").unwrap();
    let example = repo().join("examples/chelsea.png");
    let o =
        deepdream(&["dream", example.to_str().unwrap(), "-o", out.to_str().unwrap(), "--steps", "1", "--octaves", "1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut left: Vec<_> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    left.sort();
    assert_eq!(left, [".o.png.1.tmp", ".o.png.4194306.tmp", ".o.png.notes.tmp", ".other.png.4194305.tmp", "o.png"]);
}

/// Runs the binary with files limited to `kib` KiB (RLIMIT_FSIZE, SIGXFSZ ignored), which
/// makes a write fail the way a full disk does, without needing a small filesystem.
fn with_file_limit(kib: u32, args: &[&str]) -> std::process::Output {
    let script = format!("trap '' XFSZ; ulimit -f {kib}; exec \"$0\" \"$@\"");
    std::process::Command::new("bash")
        .arg("-c")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_deepdream"))
        .args(args)
        .output()
        .expect("bash runs")
}

#[test]
fn a_full_disk_names_the_file_and_leaves_no_output() {
    let dir = scratch("fulldisk");
    let example = repo().join("examples/chelsea.png");
    // The zoom writes a directory of PNG frames, which every build can (no ffmpeg needed).
    let (ex, png, frames) = (example.to_str().unwrap(), dir.join("o.png"), dir.join("frames"));
    let still = ["dream", ex, "-o", png.to_str().unwrap(), "--octaves", "1", "--steps", "1"];
    let zoom = ["zoom", ex, "-o", frames.to_str().unwrap(), "--frames", "30", "--octaves", "1", "--steps", "1"];
    for (args, names) in [(&still[..], "o.png"), (&zoom[..], "frames/frame_00001.png")] {
        let o = with_file_limit(10, args);
        let err = String::from_utf8_lossy(&o.stderr);
        let last = err.trim_end().lines().last().unwrap_or("");
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(last.contains(names) && last.contains("File too large"), "{args:?}: {last}");
        assert!(!err.contains("panicked"), "{err}");
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(left.is_empty(), "{args:?} left {left:?}");
    }
}

/// A disk that fills while the video grows: the finished frames stay for --resume, and the one
/// error line says so.
#[cfg(feature = "video")]
#[test]
fn a_full_disk_mid_render_keeps_the_frames_and_says_how_to_resume() {
    let dir = scratch("fullmid");
    let example = repo().join("examples/chelsea.png");
    let mp4 = dir.join("o.mp4");
    let args = ["zoom", example.to_str().unwrap(), "-o", mp4.to_str().unwrap(), "--frames", "60", "--octaves", "1"];
    let o = with_file_limit(
        60,
        &[&args[..], &["--steps", "1", "--frame-steps", "1", "--crf", "0", "--max-size", "128"]].concat(),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    let last = err.trim_end().lines().last().unwrap_or("");
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(last.contains("File too large") && last.contains("kept in") && last.contains("--resume"), "{last}");
    assert!(dir.join(".o.mp4.frames/ledger.json").is_file() && !mp4.exists());
}

#[test]
fn planted_files_are_refused_not_destroyed() {
    let dir = scratch("planted");
    let example = repo().join("examples/chelsea.png");
    // A directory of PNG frames: every build writes it (no ffmpeg needed).
    let out = dir.join("o");
    let victim = dir.join("victim.txt");
    std::fs::write(&victim, "precious").unwrap();
    let args = ["zoom", example.to_str().unwrap(), "-o", out.to_str().unwrap(), "--frames", "2", "--max-size", "64"];
    let run = |extra: &[&str]| deepdream(&[&args[..], extra, &["--octaves", "1", "--steps", "1"]].concat());
    // A lock that is a link to someone's file: refused, the file untouched.
    std::os::unix::fs::symlink(&victim, dir.join(".o.lock")).unwrap();
    let o = run(&[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains(".o.lock") && err.contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    std::fs::remove_file(dir.join(".o.lock")).unwrap();
    // A directory by the frame store's name holding someone's files: refused, kept.
    let store = dir.join(".o.frames");
    std::fs::create_dir(&store).unwrap();
    std::fs::write(store.join("notes.txt"), "mine").unwrap();
    let o = run(&[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("notes.txt, which no render wrote"), "{err}");
    assert_eq!(std::fs::read_to_string(store.join("notes.txt")).unwrap(), "mine");
    std::fs::remove_dir_all(&store).unwrap();
    assert!(run(&[]).status.success());
    assert!(out.is_dir() && !store.exists() && !dir.join(".o.lock").exists());
}

#[test]
fn a_signal_before_the_dream_starts_exits_at_once() {
    let dir = scratch("fifo");
    let fifo = dir.join("in.png");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let out = dir.join("o.png");
    // Opening a FIFO nobody writes to blocks; SIGTERM must still end the process.
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_deepdream"))
        .args(["dream", fifo.to_str().unwrap(), "-o", out.to_str().unwrap()])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    unsafe { kill(child.id() as i32, 15) };
    let start = std::time::Instant::now();
    let status = child.wait_with_output().unwrap().status;
    assert_eq!(status.code(), Some(130));
    assert!(start.elapsed().as_secs() < 5);
    assert!(!out.exists());
}

unsafe extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

#[test]
fn without_a_home_nothing_goes_to_a_shared_directory() {
    let dir = scratch("nohome");
    let file = dir.join("w.pth");
    std::fs::write(&file, b"not a checkpoint").unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_deepdream"))
        .args(["models", "import", file.to_str().unwrap(), "--as", "efficientnet-lite1"])
        .env_remove("HOME")
        .env_remove("XDG_CACHE_HOME")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("no cache directory") && err.contains("--dir"), "{err}");
}

#[test]
fn weights_that_compute_nothing_are_not_installed() {
    let dir = scratch("zeroweights");
    let shipped = repo().join("models/efficientnet_lite0.safetensors");
    let tensors = candle_core::safetensors::load(&shipped, &candle_core::Device::Cpu).unwrap();
    let zeros: std::collections::HashMap<String, candle_core::Tensor> =
        tensors.into_iter().map(|(k, t)| (k, t.zeros_like().unwrap())).collect();
    let file = dir.join("zeros.safetensors");
    candle_core::safetensors::save(&zeros, &file).unwrap();
    let models = dir.join("models");
    let o = deepdream(&[
        "models",
        "import",
        file.to_str().unwrap(),
        "--as",
        "efficientnet-lite0",
        "--dir",
        models.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("gives the same output for every image"), "{err}");
    assert!(!models.join("efficientnet_lite0.safetensors").exists());
}

#[test]
fn the_longest_names_a_file_system_allows_are_written() {
    let dir = scratch("longname");
    let example = repo().join("examples/chelsea.png");
    let name = "n".repeat(251);
    // The zoom writes a directory of PNG frames (every build can).
    for (command, ext, extra) in [("dream", ".png", &[][..]), ("zoom", "", &["--frames", "2", "--max-size", "64"][..])]
    {
        let out = dir.join(format!("{name}{ext}"));
        let args = [command, example.to_str().unwrap(), "-o", out.to_str().unwrap(), "--steps", "1", "--octaves", "1"];
        let o = deepdream(&[&args[..], extra].concat());
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(out.exists());
    }
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2, "no companions left");
}
