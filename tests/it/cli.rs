//! The `deepdream` binary end to end, on the example image shipped in the repo.

use crate::util::{deepdream, repo, scratch};
use std::path::Path;
use std::process::{Command, Output};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn example() -> String {
    repo().join("examples/chelsea.png").to_string_lossy().into_owned()
}

/// Exit code 2, exactly one line on stderr containing `needle`, and nothing left in `dir`.
fn assert_user_error(o: &Output, needle: &str, dir: &Path) {
    assert_error(o, 2, needle, dir);
}

/// Exit code `code`, exactly one line on stderr containing `needle`, and nothing left in `dir`.
fn assert_error(o: &Output, code: i32, needle: &str, dir: &Path) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line expected: {err}");
    assert!(err.contains(needle), "'{needle}' not in: {err}");
    let left: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "files left behind: {left:?}");
}

#[test]
fn dream_writes_a_changed_image() {
    let dir = scratch("dream");
    let out = dir.join("out.png");
    let o = deepdream(&[
        "dream",
        &example(),
        "-o",
        out.to_str().unwrap(),
        "--max-size",
        "120",
        "--octaves",
        "2",
        "--steps",
        "3",
        "--layers",
        "block3=1,block5=0.5",
        "--jitter",
        "4",
        "--seed",
        "3",
        "--step",
        "0.05",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = image::open(&out).unwrap().to_rgb8();
    assert_eq!(got.dimensions(), (120, 80));
    let input = deepdream::io::load_rgb(Path::new(&example()), Some(120)).unwrap();
    let db = crate::util::psnr(&got, &input);
    assert!(db < 30.0, "the dream barely changed the image ({db:.1} dB)");
    let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("out.png")], "no temporary files left");
}

#[test]
fn missing_corrupt_and_unsupported_inputs() {
    let dir = scratch("inputs");
    let out = dir.join("out.png");
    let o = deepdream(&["dream", "/no/such/photo.png", "-o", out.to_str().unwrap()]);
    assert_user_error(&o, "no such file", &dir);

    let inputs = scratch("inputs-src");
    let corrupt = inputs.join("corrupt.png");
    let mut bytes = std::fs::read(example()).unwrap();
    bytes.truncate(2000);
    std::fs::write(&corrupt, &bytes).unwrap();
    let o = deepdream(&["dream", corrupt.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert_user_error(&o, "corrupt", &dir);

    let text = inputs.join("notes.txt");
    std::fs::write(&text, "not an image").unwrap();
    let o = deepdream(&["dream", text.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert_user_error(&o, "not an image format", &dir);
}

#[test]
fn unknown_layer_lists_the_valid_ones() {
    let dir = scratch("layer");
    let out = dir.join("out.png");
    let o = deepdream(&["dream", &example(), "-o", out.to_str().unwrap(), "--layers", "mixed4=1"]);
    assert_user_error(&o, "unknown layer 'mixed4'", &dir);
    assert!(stderr(&o).contains("block0, block1"), "{}", stderr(&o));
}

#[test]
fn unwritable_output_is_refused_before_work() {
    let dir = scratch("unwritable");
    let o = deepdream(&["dream", &example(), "-o", "/no/such/dir/out.png"]);
    assert_user_error(&o, "/no/such/dir/out.png", &dir);
    let o = deepdream(&["dream", &example(), "-o", dir.join("out.xyz").to_str().unwrap()]);
    assert_user_error(&o, "unsupported output extension", &dir);
}

#[test]
fn bad_preset_names_file_key_and_line() {
    let dir = scratch("preset");
    let src = scratch("preset-src");
    let preset = src.join("mine.toml");
    std::fs::write(&preset, "[dream]\nsteps = 4\nstepz = 0.1\n").unwrap();
    let out = dir.join("out.png");
    let o = deepdream(&["dream", &example(), "-o", out.to_str().unwrap(), "--preset", preset.to_str().unwrap()]);
    assert_user_error(&o, "mine.toml", &dir);
    assert!(stderr(&o).contains("stepz") && stderr(&o).contains("line 3"), "{}", stderr(&o));

    std::fs::write(&preset, "[dream]\noctave_scale = 0.5\n[dream.layers]\nblock3 = 1\n").unwrap();
    let o = deepdream(&["dream", &example(), "-o", out.to_str().unwrap(), "--preset", preset.to_str().unwrap()]);
    assert_user_error(&o, "octave_scale", &dir);

    let o = deepdream(&["dream", &example(), "-o", out.to_str().unwrap(), "--preset", "no-such-preset"]);
    assert_user_error(&o, "unknown preset", &dir);
}

#[test]
fn classify_the_example_like_pytorch() {
    // PyTorch's top-1 for this photo at this size is 285, Egyptian cat
    // (../shared/reference/real_efficientnet_lite0.json, case chelsea.png): --max-size
    // classifies the whole image.
    let o = deepdream(&["classify", &example(), "--top", "3", "--max-size", "512"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8(o.stdout).unwrap();
    let first = text.lines().next().unwrap();
    assert!(first.contains("285") && first.contains("Egyptian cat"), "{text}");
    assert_eq!(text.lines().count(), 3);
    // By default, the centre crop at the model's resolution: still a cat, scored otherwise.
    let o = deepdream(&["classify", &example(), "--top", "1"]);
    let cropped = String::from_utf8(o.stdout).unwrap();
    let index: usize = cropped.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!((281..=285).contains(&index), "{cropped}");
    assert_ne!(cropped.lines().next(), Some(first), "the same scores as the whole image");
}

#[test]
fn layers_presets_and_models_list() {
    let o = deepdream(&["layers"]);
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(text.contains("block15") && text.contains("320x7x7"), "{text}");
    let o = deepdream(&["presets"]);
    let text = String::from_utf8(o.stdout).unwrap();
    for name in ["classic", "patterns", "textures", "objects"] {
        assert!(text.contains(name), "{text}");
    }
    // One column for the descriptions.
    let columns: std::collections::BTreeSet<usize> =
        text.lines().map(|l| l.find("  ").unwrap() + l[l.find("  ").unwrap()..].find(|c| c != ' ').unwrap()).collect();
    assert_eq!(columns.len(), 1, "{text}");
    let o = deepdream(&["models"]);
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(text.contains("efficientnet-lite0") && text.contains("installed"), "{text}");
}

#[test]
fn import_converts_a_legacy_checkpoint() {
    let dir = scratch("import");
    // A checkpoint that is not an EfficientNet: converted, then refused, and nothing kept.
    let fixture = repo().join("tests/fixtures/tiny_legacy.pth");
    let o = deepdream(&[
        "models",
        "import",
        fixture.to_str().unwrap(),
        "--as",
        "efficientnet-lite0",
        "--dir",
        dir.to_str().unwrap(),
    ]);
    assert_user_error(&o, "missing tensor", &dir);
    let o =
        deepdream(&["models", "import", "/no/such.pth", "--as", "efficientnet-lite0", "--dir", dir.to_str().unwrap()]);
    assert_user_error(&o, "/no/such.pth", &dir);
}

#[test]
fn classic_inceptionv3_preset_dreams_an_unseen_photo() {
    if !crate::util::installed("inception-v3-tf2015") {
        return;
    }
    let Some(shared) = crate::util::shared() else { return };
    let input = shared.join("media/coffee.png");
    let dir = scratch("classic-inception");
    let out = dir.join("coffee.png");
    let o = deepdream(&[
        "dream",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--preset",
        "classic-inceptionv3",
        "--max-size",
        "160",
        "--steps",
        "6",
        "--step",
        "0.03",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = image::open(&out).unwrap().to_rgb8();
    let before = deepdream::io::load_rgb(&input, Some(160)).unwrap();
    assert_eq!(got.dimensions(), before.dimensions());
    let db = crate::util::psnr(&got, &before);
    assert!(db < 30.0, "the dream barely changed the photo ({db:.1} dB)");
}

#[test]
fn missing_model_says_how_to_get_it() {
    let dir = scratch("missing-model");
    let o = Command::new(env!("CARGO_BIN_EXE_deepdream"))
        .args([
            "dream",
            &example(),
            "-o",
            dir.join("o.png").to_str().unwrap(),
            "--model",
            "vgg16",
            "--layers",
            "conv4_3",
        ])
        .env("DEEPDREAM_MODELS", dir.to_str().unwrap())
        .env("XDG_CACHE_HOME", dir.join("cache").to_str().unwrap())
        .output()
        .unwrap();
    assert_user_error(&o, "deepdream models fetch vgg16", &dir);
}

#[test]
fn portable_path_dreams_the_same_picture() {
    // `--device cpu-portable` runs the code a GPU runs (candle's ops, the explicit gradients)
    // on the CPU: after a short dream it must match the CPU kernels' picture. Two octaves of 3
    // steps, with jitter, with a zoom of the pipeline too.
    let dir = scratch("portable");
    let args = |out: &Path, device: &str| -> Vec<String> {
        [
            "dream",
            &example(),
            "-o",
            out.to_str().unwrap(),
            "--max-size",
            "96",
            "--octaves",
            "2",
            "--steps",
            "3",
            "--jitter",
            "3",
            "--device",
            device,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let (a, b) = (dir.join("cpu.png"), dir.join("portable.png"));
    for (out, device) in [(&a, "cpu"), (&b, "cpu-portable")] {
        let args = args(out, device);
        let o = deepdream(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(o.status.success(), "{device}: {}", stderr(&o));
    }
    let db = crate::util::psnr(&image::open(&a).unwrap().to_rgb8(), &image::open(&b).unwrap().to_rgb8());
    assert!(db > 35.0, "the portable path's dream differs: {db:.1} dB");
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_without_the_feature_is_a_clear_error() {
    let dir = scratch("nocuda");
    let o = deepdream(&["dream", &example(), "-o", dir.join("o.png").to_str().unwrap(), "--device", "cuda"]);
    // Not the user's mistake but this build's limit: exit 1.
    assert_error(&o, 1, "no CUDA support", &dir);
}

#[test]
fn bad_values_name_their_origin() {
    let dir = scratch("origin");
    let out = dir.join("o.png");
    let run = |extra: &[&str]| {
        let mut args =
            vec!["dream", &example(), "-o", out.to_str().unwrap()].into_iter().map(String::from).collect::<Vec<_>>();
        args.extend(extra.iter().map(|s| s.to_string()));
        deepdream(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    assert_user_error(&run(&["--decay", "2"]), "--decay: must be in [0, 1), got 2", &dir);
    assert_user_error(&run(&["--step", "nan"]), "--step: must be positive, got NaN", &dir);
    // clap's own parse errors are one line too, and name the flag.
    assert_user_error(&run(&["--steps", "abc"]), "'--steps <N>'", &dir);
    let presets = scratch("origin-presets");
    let preset = presets.join("p.toml");
    std::fs::write(&preset, "[dream]\nlayers = { block5 = 1 }\nsteps = 20\nstep = -1\n").unwrap();
    assert_user_error(&run(&["--preset", preset.to_str().unwrap()]), "p.toml: line 4, key `dream.step`", &dir);
    std::fs::write(&preset, "[dream]\nlayers = { block5 = 1 }\n[regularize]\ndecay = 2.0\n").unwrap();
    assert_user_error(&run(&["--preset", preset.to_str().unwrap()]), "line 4, key `regularize.decay`", &dir);
    // Checks against the network say where the layer was named too.
    std::fs::write(&preset, "[dream]\nsteps = 2\nlayers = { block99 = 1 }\n").unwrap();
    let o = run(&["--preset", preset.to_str().unwrap()]);
    assert_user_error(&o, "line 3, key `dream.layers.block99`: unknown layer 'block99'", &dir);
    assert_user_error(&run(&["--layers", "block5:9999", "--max-size", "64"]), "--layers: layer block5 has", &dir);
    std::fs::write(&preset, "[dream]\nlayers = { block5 = 1 }\n[zoom]\nfps = \"abc\"\n").unwrap();
    let gif = dir.join("o.gif");
    let o = deepdream(&["zoom", &example(), "-o", gif.to_str().unwrap(), "--preset", preset.to_str().unwrap()]);
    assert_user_error(&o, "line 4, key `zoom.fps`: bad frame rate 'abc'", &dir);
}

#[test]
fn an_output_that_would_destroy_the_input_is_refused() {
    let dir = scratch("same");
    let photo = dir.join("a.png");
    std::fs::copy(example(), &photo).unwrap();
    let link = dir.join("link.png");
    std::os::unix::fs::symlink(&photo, &link).unwrap();
    let before = std::fs::read(&photo).unwrap();
    let dotted = dir.join(".").join("a.png");
    for out in [&photo, &link, &dotted] {
        let o = deepdream(&["dream", photo.to_str().unwrap(), "-o", out.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("would overwrite the input"), "{}", stderr(&o));
    }
    // The other inputs too: a guide image, the preset file.
    let main = example();
    let o = deepdream(&[
        "dream",
        &main,
        "-o",
        photo.to_str().unwrap(),
        "--guide",
        photo.to_str().unwrap(),
        "--guide-layers",
        "block8",
    ]);
    assert_user_error(&o, "would overwrite the input", &scratch("same-empty"));
    let preset = dir.join("p.toml");
    std::fs::write(&preset, "[dream]\nlayers = { block5 = 1 }\n").unwrap();
    let o = deepdream(&["dream", &main, "-o", preset.to_str().unwrap(), "--preset", preset.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&preset).unwrap(), "[dream]\nlayers = { block5 = 1 }\n");
    // A frame directory output that holds the input would be replaced as a whole.
    let frames = dir.join("frames");
    std::fs::create_dir(&frames).unwrap();
    let frame = frames.join("frame_00001.png");
    std::fs::copy(example(), &frame).unwrap();
    let o = deepdream(&["zoom", frame.to_str().unwrap(), "-o", frames.to_str().unwrap(), "--frames", "2"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_eq!(std::fs::read(&photo).unwrap(), before);
    assert!(frame.is_file());
}

#[test]
fn unusable_render_outputs_are_refused_before_work() {
    let dir = scratch("outdirs");
    let taken = dir.join("taken.mp4");
    std::fs::create_dir(&taken).unwrap();
    let o = deepdream(&["zoom", &example(), "-o", taken.to_str().unwrap(), "--frames", "2"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("is a directory"), "{}", stderr(&o));
    let o = deepdream(&["zoom", &example(), "-o", "/no/such/dir/out.gif", "--frames", "2"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("no such directory"), "{}", stderr(&o));
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("taken.mp4")]);
}

#[test]
fn exif_orientation_is_applied() {
    let dir = scratch("exif");
    // 40x20 pixels stored, left half red; EXIF orientation 6 says "turn 90 degrees clockwise".
    let img =
        image::RgbImage::from_fn(40, 20, |x, _| if x < 20 { image::Rgb([255, 0, 0]) } else { image::Rgb([0, 0, 255]) });
    let exif = vec![
        b'I', b'I', 42, 0, 8, 0, 0, 0, // TIFF header, first IFD at 8
        1, 0, // one entry
        0x12, 0x01, 3, 0, 1, 0, 0, 0, 6, 0, 0, 0, // Orientation (SHORT) = 6
        0, 0, 0, 0, // no next IFD
    ];
    let path = dir.join("phone.jpg");
    let mut file = std::fs::File::create(&path).unwrap();
    let mut encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut file, 95);
    image::ImageEncoder::set_exif_metadata(&mut encoder, exif).unwrap();
    image::ImageEncoder::write_image(encoder, img.as_raw(), 40, 20, image::ExtendedColorType::Rgb8).unwrap();
    drop(file);
    let loaded = deepdream::io::load_rgb(&path, None).unwrap();
    assert_eq!(loaded.dimensions(), (20, 40), "turned upright");
    assert!(loaded.get_pixel(10, 5)[0] > 200, "the red half is on top after the turn");
}

#[test]
fn pipes_as_inputs() {
    let dir = scratch("fifo");
    let fifo = dir.join("photo.png");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let (src, pipe) = (example(), fifo.clone());
    std::thread::spawn(move || std::fs::write(&pipe, std::fs::read(src).unwrap()));
    let out = dir.join("o.png");
    let args = ["--max-size", "64", "--octaves", "1", "--steps", "1"];
    let o = deepdream(&[&["dream", fifo.to_str().unwrap(), "-o", out.to_str().unwrap()], &args[..]].concat());
    assert!(o.status.success(), "an image through a pipe dreams: {}", stderr(&o));
    // A video is read twice (probe, then decode): a pipe is refused at once, not a hang.
    #[cfg(feature = "video")]
    video_through_a_pipe_is_refused(&dir);
}

#[cfg(feature = "video")]
fn video_through_a_pipe_is_refused(dir: &Path) {
    let video_fifo = dir.join("clip.mp4");
    assert!(Command::new("mkfifo").arg(&video_fifo).status().unwrap().success());
    let o = deepdream(&["video", video_fifo.to_str().unwrap(), "-o", dir.join("o.gif").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("not a regular file"), "{}", stderr(&o));
}

#[test]
fn a_truncated_jpeg_is_refused() {
    let dir = scratch("truncated");
    let inputs = scratch("truncated-src");
    let cut = inputs.join("cut.jpg");
    std::fs::write(&cut, &std::fs::read(repo().join("examples/coffee.jpg")).unwrap()[..10_000]).unwrap();
    let o = deepdream(&["dream", cut.to_str().unwrap(), "-o", dir.join("o.png").to_str().unwrap()]);
    assert_user_error(&o, "truncated image", &dir);
}

#[test]
fn inputs_too_small_for_the_network_say_what_would_work() {
    if !crate::util::installed("inception-v3-tf2015") {
        return;
    }
    let dir = scratch("toosmall");
    let o = deepdream(&["layers", "--model", "inception-v3-tf2015", "--size", "16x16"]);
    assert_user_error(&o, "--size (16x16) is too small for inception-v3-tf2015", &dir);
    assert!(stderr(&o).contains("at least 75x75"), "{}", stderr(&o));
    let o = deepdream(&[
        "bench",
        "--model",
        "inception-v3-tf2015",
        "--size",
        "20x20",
        "--layers",
        "mixed5",
        "--steps",
        "1",
    ]);
    assert_user_error(&o, "at least 43x43", &dir);
}

#[test]
fn weights_that_leave_nothing_to_dream_are_the_users_mistake() {
    let dir = scratch("zero");
    let o = deepdream(&[
        "dream",
        &example(),
        "-o",
        dir.join("o.png").to_str().unwrap(),
        "--layers",
        "block5=0",
        "--max-size",
        "64",
    ]);
    assert_user_error(&o, "does not depend on the image", &dir);
    let o = deepdream(&["dream", &example(), "-o", dir.join("o.png").to_str().unwrap(), "--guide-weight", "2"]);
    assert_user_error(&o, "--guide-weight: needs --guide", &dir);
}

#[test]
fn a_reader_that_goes_away_ends_output_quietly() {
    for args in [&["models"][..], &["presets"][..], &["models", "registry"][..]] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_deepdream"))
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take()); // `| head -c 0`
        let o = child.wait_with_output().unwrap();
        assert!(!stderr(&o).contains("panicked") && o.status.code() != Some(101), "{args:?}: {}", stderr(&o));
    } // Nobody to tell: a mistake with stderr on a full device still exits 2, not with a panic.
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let o =
        Command::new(env!("CARGO_BIN_EXE_deepdream")).args(["dream", "--steps", "x"]).stderr(full).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn every_installed_model_dreams_on_its_own() {
    // `--model M` and nothing else: each model's own default layers, and a picture that
    // changed. The default model and the ones installed here; a missing one is a skip.
    let dir = scratch("own-model");
    for m in deepdream::model::ZOO {
        // Only the registry's models can be installed here (the others download from hubs).
        let installed = deepdream::model::locate(m.name).is_ok();
        if !installed && m.registry.is_none() {
            continue;
        }
        if !crate::util::installed(m.name) {
            continue;
        }
        let out = dir.join(format!("{}.png", m.name));
        let o = deepdream(&["dream", &example(), "-o", out.to_str().unwrap(), "--model", m.name, "--max-size", "160"]);
        assert!(o.status.success(), "{}: {}", m.name, stderr(&o));
        let (a, b) = (
            deepdream::io::load_rgb(&out, None).unwrap(),
            deepdream::io::load_rgb(Path::new(&example()), Some(160)).unwrap(),
        );
        assert!(crate::util::psnr(&a, &b) < 30.0, "{}: the picture barely changed", m.name);
    }
}

#[test]
fn a_preset_for_another_model_maps_or_says_so() {
    let dir = scratch("foreign-preset");
    let mapped = scratch("foreign-preset-mapped");
    let out = mapped.join("o.png");
    // EfficientNet-Lite0's blocks, mapped stage by stage onto Lite1's deeper stages.
    if crate::util::installed("efficientnet-lite1") {
        let o = deepdream(&[
            "dream",
            &example(),
            "-o",
            out.to_str().unwrap(),
            "--preset",
            "objects",
            "--model",
            "efficientnet-lite1",
            "--max-size",
            "96",
            "--octaves",
            "1",
            "--steps",
            "2",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    // No counterpart: the preset file, its line and both models are named.
    let o = deepdream(&[
        "dream",
        &example(),
        "-o",
        out.to_str().unwrap(),
        "--preset",
        "objects",
        "--model",
        "mobilenet-v2",
    ]);
    assert_user_error(
        &o,
        "presets/objects.toml: line 14, key `dream.layers.block10`: the preset is written for efficientnet-lite0, and layer 'block10' has no counterpart in mobilenet-v2",
        &dir,
    );
}

#[test]
fn a_preset_builds_on_another() {
    let dir = scratch("base-presets");
    let out = scratch("base-presets-out");
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };
    // Only a [zoom] section: the rest (layers, octaves, ...) from the built-in zoom preset.
    let fast = write("fast.toml", "base = \"zoom\"\n\n[zoom]\nframes = 3\nzoom = 1.1\n");
    let frames = out.join("frames");
    let o = deepdream(&["zoom", &example(), "-o", frames.to_str().unwrap(), "--preset", &fast, "--max-size", "64"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read_dir(&frames).unwrap().count(), 3);
    // A chain of files, relative to each other: a bad value is reported in the file and on
    // the line that holds it, and a value of the child overrides its base's.
    write("bad.toml", "base = \"zoom\"\n[dream]\nsteps = 0\noctaves = 0\n");
    let child = write("child.toml", "base = \"bad.toml\"\n[dream]\nsteps = 2\n");
    let empty = scratch("base-presets-empty");
    let o = deepdream(&["dream", &example(), "-o", empty.join("o.png").to_str().unwrap(), "--preset", &child]);
    assert_user_error(&o, "bad.toml: line 4, key `dream.octaves`", &empty);
    let looped = write("loop.toml", "base = \"loop.toml\"\n");
    let o = deepdream(&["dream", &example(), "-o", empty.join("o.png").to_str().unwrap(), "--preset", &looped]);
    assert_user_error(&o, "loop.toml: line 1, key `base`: ", &empty);
    assert!(stderr(&o).contains("builds on itself"), "{}", stderr(&o));
}

#[test]
fn a_dream_from_nothing() {
    let dir = scratch("from-nothing");
    let run = |name: &str, extra: &[&str]| {
        let out = dir.join(name);
        let args = [&["dream", "-o", out.to_str().unwrap(), "--size", "96x64", "--steps", "3"][..], extra].concat();
        let o = deepdream(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        deepdream::io::load_rgb(&out, None).unwrap()
    };
    let a = run("a.png", &["--from", "noise", "--jitter", "4", "--seed", "5"]);
    let b = run("b.png", &["--from", "noise", "--jitter", "4", "--seed", "5"]);
    let c = run("c.png", &["--from", "noise", "--jitter", "4", "--seed", "6"]);
    assert_eq!(a.dimensions(), (96, 64));
    assert!(a == b && a != c, "the seed makes the noise and the jitter");
    // A flat colour grows a dream: the picture is no longer flat.
    let flat = run("flat.png", &["--from", "#336699"]);
    let first = *flat.get_pixel(0, 0);
    assert!(flat.pixels().filter(|p| **p != first).count() > 1000, "still flat");
    let empty = scratch("from-nothing-bad");
    let o = deepdream(&["dream", "-o", empty.join("x.png").to_str().unwrap(), "--from", "plaid"]);
    assert_user_error(&o, "--from: 'plaid' is neither noise nor a colour", &empty);
}

#[test]
fn a_batch_dreams_every_image_into_a_directory() {
    let src = scratch("batch-in");
    let photo = image::open(repo().join("examples/chelsea.png")).unwrap().to_rgb8();
    let small = image::imageops::resize(&photo, 60, 40, image::imageops::FilterType::Triangle);
    for name in ["a.png", "b.jpg", "c.gif"] {
        small.save(src.join(name)).unwrap();
    }
    std::fs::write(src.join("notes.txt"), "not an image").unwrap();
    let batch_out = scratch("batch-out");
    let out = batch_out.join("dreams");
    let quick = ["--octaves", "1", "--steps", "1"];
    let o = deepdream(&[&["dream", src.to_str().unwrap(), "-o", out.to_str().unwrap()][..], &quick].concat());
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    let mut names: Vec<_> =
        std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["a.png", "b.jpg", "c.png"]);
    assert!(err.contains("image 1/3: ") && err.contains("image 3/3: ") && err.contains("ETA"), "{err}");
    // Two inputs that would write one file stop the batch before any work.
    let other = scratch("batch-in-2");
    small.save(other.join("a.png")).unwrap();
    let clash = scratch("batch-clash");
    let target = clash.join("out");
    let o = deepdream(
        &[
            &[
                "dream",
                src.join("a.png").to_str().unwrap(),
                other.join("a.png").to_str().unwrap(),
                "-o",
                target.to_str().unwrap(),
            ][..],
            &quick,
        ]
        .concat(),
    );
    assert_user_error(&o, "would both be written to", &clash);
}

#[test]
fn a_recorded_dream_shows_how_it_grew() {
    let dir = scratch("record");
    let out = dir.join("out.png");
    let frames = dir.join("steps");
    let o = deepdream(&[
        "dream",
        &example(),
        "-o",
        out.to_str().unwrap(),
        "--max-size",
        "96",
        "--octaves",
        "2",
        "--steps",
        "10",
        "--layers",
        "block5",
        "--record",
        "5",
        "--record-to",
        frames.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Steps 5, 10, 15 and 20, then the result held for a second (ten frames at 10/s).
    let n = std::fs::read_dir(&frames).unwrap().count();
    assert_eq!(n, 4 + 10);
    let frame = |i: usize| deepdream::io::load_rgb(&frames.join(format!("frame_{i:05}.png")), None).unwrap();
    let result = deepdream::io::load_rgb(&out, None).unwrap();
    assert!(frame(14) == result && frame(4) == result, "the last step is the result");
    assert!(frame(1) != result, "the first picture is the dream early on");
    assert_eq!(frame(1).dimensions(), result.dimensions(), "every picture at the full size");
    let o = deepdream(&[
        "dream",
        &example(),
        "-o",
        out.to_str().unwrap(),
        "--record",
        "5",
        "--record-to",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn a_looped_zoom_flows_from_its_end_into_its_start() {
    let dir = scratch("loop");
    // Mean absolute difference between two frames, per channel value.
    let step = |a: &image::RgbImage, b: &image::RgbImage| {
        a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| (*x as f64 - *y as f64).abs()).sum::<f64>()
            / a.as_raw().len() as f64
    };
    let steps = |loop_frames: Option<&str>| {
        let out = dir.join(format!("z{}", loop_frames.unwrap_or("0")));
        let mut args = vec!["zoom", &example(), "-o", out.to_str().unwrap(), "--frames", "36", "--max-size", "96"]
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>();
        if let Some(n) = loop_frames {
            args.extend(["--loop".to_owned(), n.to_owned()]);
        }
        let o = deepdream(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(o.status.success(), "{}", stderr(&o));
        let frames: Vec<_> =
            (1..=36).map(|i| deepdream::io::load_rgb(&out.join(format!("frame_{i:05}.png")), None).unwrap()).collect();
        let mut inside: Vec<f64> = frames.windows(2).map(|w| step(&w[0], &w[1])).collect();
        let across = step(&frames[35], &frames[0]);
        inside.sort_by(f64::total_cmp);
        // The 95th percentile of the steps inside the animation, and the largest.
        (inside[(inside.len() as f64 * 0.95) as usize - 1], inside[inside.len() - 1], across)
    };
    let (_, plain_inside, plain_across) = steps(None);
    let (p95, inside, across) = steps(Some("12"));
    // Without a loop the jump back is far larger than any step; with one it is no bigger than
    // the 95th percentile of the steps inside.
    assert!(plain_across > 2.0 * plain_inside, "no loop: across {plain_across:.2}, inside at most {plain_inside:.2}");
    assert!(across <= p95, "loop: across {across:.2}, inside 95th percentile {p95:.2}, largest {inside:.2}");
    eprintln!(
        "steps: no loop {plain_across:.2} across vs {plain_inside:.2}; loop {across:.2} vs 95th percentile {p95:.2}, largest {inside:.2}"
    );
}

/// Runtime-dispatching OpenBLAS builds fall back to generic SSE3 ("Prescott") kernels on CPU
/// models newer than they know (Debian 12's 0.3.21 on an Emerald Rapids Xeon: 3x slower
/// products). deepdream asks for the kernels the CPU's instructions allow, and a user's own
/// OPENBLAS_CORETYPE is left alone; `bench` names the kernels in use.
#[cfg(all(feature = "openblas", feature = "builtin-weights", target_arch = "x86_64"))]
#[test]
fn openblas_runs_the_kernels_the_cpu_allows() {
    let run = |coretype: Option<&str>| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_deepdream"));
        c.args(["bench", "--size", "64x64", "--steps", "1"]);
        match coretype {
            Some(v) => c.env("OPENBLAS_CORETYPE", v),
            None => c.env_remove("OPENBLAS_CORETYPE"),
        };
        let o = c.output().expect("binary runs");
        assert!(o.status.success(), "{}", stderr(&o));
        format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o))
    };
    let line = run(None);
    if line.contains("threads, OpenBLAS)") {
        return; // an OpenBLAS built for one architecture: no kernels to choose
    }
    assert!(line.contains("kernels)"), "bench names the kernels: {line}");
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        assert!(!line.contains("OpenBLAS Prescott kernels"), "generic kernels on an AVX2 CPU: {line}");
    }
    let line = run(Some("Prescott"));
    assert!(line.contains("OpenBLAS Prescott kernels"), "the user's OPENBLAS_CORETYPE: {line}");
}
