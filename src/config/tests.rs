//! Every preset key and every numeric flag, given a bad value, is reported on one line that
//! names its true origin.

use super::*;
use crate::dream::LayerTerm;
use crate::source::motion::Continuation;
use std::path::{Path, PathBuf};

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/chelsea.png")
}

/// A directory for one test's files, removed when the test ends well (kept for a look when
/// it fails).
fn scratch(name: &str) -> Scratch {
    let d = std::env::temp_dir().join(format!("dd-config-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    Scratch(d)
}

struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = PathBuf;
    fn deref(&self) -> &PathBuf {
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

/// Resolves a zoom (or, for `[video]` keys, a video) job from a preset text.
fn resolve(dir: &Path, text: &str, video: bool) -> crate::Result<Job> {
    let path = dir.join("p.toml");
    std::fs::write(&path, text).unwrap();
    let flags = DreamFlags { preset: Some(path.to_string_lossy().into_owned()), ..Default::default() };
    let (input, e) = (example(), EncodeFlags::default());
    match video {
        true => Job::video(&input, Path::new("out.mp4"), &flags, &VideoFlags::default(), &e),
        false => Job::zoom(&input, Path::new("out.gif"), &flags, &ZoomFlags::default(), &e),
    }
}

#[test]
fn every_builtin_preset_resolves() {
    for (name, _) in BUILTIN_PRESETS {
        let flags = DreamFlags { preset: Some(name.to_string()), ..Default::default() };
        let job = Job::zoom(&example(), Path::new("o.gif"), &flags, &ZoomFlags::default(), &EncodeFlags::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let o = &job.params().objective;
        assert!(!o.layers.is_empty() || !o.classes.is_empty() || !o.guides.is_empty() || o.style.is_some(), "{name}");
    }
}

#[test]
fn every_bad_preset_value_names_its_file_line_and_key() {
    let dir = scratch("keys");
    let guide = format!("image = \"{}\"\nlayers = {{ block8 = 1 }}", example().display());
    // (section, lines before the bad one, the bad line, the key the error must name)
    let cases: &[(&str, &str, &str, &str)] = &[
        ("dream", "", "layers = { block5 = nan }", "dream.layers.block5"),
        ("dream", "", "layers = { \"block5:x\" = 1 }", "dream.layers.block5:x"),
        ("dream", "", "octaves = 0", "dream.octaves"),
        ("dream", "", "octave_scale = 0.5", "dream.octave_scale"),
        ("dream", "", "octave_scale = nan", "dream.octave_scale"),
        ("dream", "", "steps = 0", "dream.steps"),
        ("dream", "", "step = -1", "dream.step"),
        ("dream", "", "step = nan", "dream.step"),
        ("dream", "", "max_loss = inf", "dream.max_loss"),
        ("dream", "", "jitter = 100000", "dream.jitter"),
        ("dream", "", "max_size = 0", "dream.max_size"),
        ("dream", "", "tile = 100", "dream.tile"),
        ("objective", "", "classes = { bananaa = 1 }", "objective.classes.bananaa"),
        ("objective", "", "classes = { banana = inf }", "objective.classes.banana"),
        ("objective", "", "class_mode = \"soft\"", "objective.class_mode"),
        ("objective", "", "tv = -1", "objective.tv"),
        ("objective.guide", "layers = { block8 = 1 }", "image = \"no-such.png\"", "objective.guide.image"),
        ("objective.guide", &guide, "mode = \"x\"", "objective.guide.mode"),
        ("objective.guide", &guide, "weight = nan", "objective.guide.weight"),
        ("objective.guide", "", "image = \"x.png\"", "objective.guide"),
        ("objective.guide", "", "image = \"x.png\"\nlayers = { block8 = inf }", "objective.guide.layers.block8"),
        ("objective.style", &guide.replace("block8", "block1"), "weight = -inf", "objective.style.weight"),
        (
            "objective.style",
            &guide.replace("block8", "block1"),
            "content_weight = nan",
            "objective.style.content_weight",
        ),
        ("objective.style", &guide, "content_layers = { \"b:q\" = 1 }", "objective.style.content_layers.b:q"),
        ("regularize", "", "grad_blur = 50", "regularize.grad_blur"),
        ("regularize", "", "image_blur = -1", "regularize.image_blur"),
        ("regularize", "", "decay = 2.0", "regularize.decay"),
        ("regularize", "", "laplacian = 100", "regularize.laplacian"),
        ("zoom", "", "frames = 0", "zoom.frames"),
        ("zoom", "", "duration = -1", "zoom.duration"),
        ("zoom", "", "duration = 0.001", "zoom.duration"),
        ("zoom", "frames = 10", "duration = 2", "zoom.duration"),
        ("zoom", "", "fps = \"abc\"", "zoom.fps"),
        ("zoom", "", "fps = 0", "zoom.fps"),
        ("zoom", "", "zoom = 0", "zoom.zoom"),
        ("zoom", "", "zoom_per_second = -2", "zoom.zoom_per_second"),
        ("zoom", "zoom = 1.1", "zoom_per_second = 2", "zoom.zoom_per_second"),
        ("zoom", "", "zoom = 1000", "zoom.zoom"),
        ("zoom", "", "zoom_per_second = 1e-300", "zoom.zoom_per_second"),
        ("zoom", "", "rotate = nan", "zoom.rotate"),
        ("zoom", "", "pan = [1e9, 0]", "zoom.pan"),
        ("zoom", "", "pan = [1, 2, 3]", "zoom.pan"),
        ("zoom", "", "pan = [1, nan]", "zoom.pan"),
        ("zoom", "", "frame_steps = 1000000", "zoom.frame_steps"),
        ("video", "", "blend = 1.0", "video.blend"),
        ("video", "", "motion = \"swirl\"", "video.motion"),
        ("video", "", "warp = 1.5", "video.warp"),
        ("video", "", "cut = nan", "video.cut"),
        ("video", "", "scene_cut = 101", "video.scene_cut"),
        ("video", "", "frame_octaves = 0", "video.frame_octaves"),
        ("video", "", "frame_steps = 1000000", "video.frame_steps"),
        ("video", "", "frame_step = 0", "video.frame_step"),
        ("video", "", "start = -1", "video.start"),
        ("video", "", "duration = 0", "video.duration"),
        ("output", "", "crf = 99", "output.crf"),
        ("output", "", "preset = \"warp\"", "output.preset"),
        ("", "", "model = \"resnet9000\"", "model"),
    ];
    for &(section, before, bad, key) in cases {
        // `steps = 20` above `step = ...`: the error must name the right one of two similar keys.
        let filler = if bad.starts_with("steps") { "seed = 7" } else { "steps = 20" };
        let layers = if bad.starts_with("layers") { "" } else { "layers = { block5 = 1 }\n" };
        let head = format!("description = \"test\"\n[dream]\n{layers}{filler}\n");
        let (head, section_line) = match section {
            "" => (format!("{bad}\n{head}"), String::new()),
            "dream" => (head, String::new()),
            s => (head, format!("[{s}]\n")),
        };
        let body = if section.is_empty() { String::new() } else { format!("{section_line}{before}\n{bad}\n") };
        let text = format!("{head}{body}");
        let bad_first = bad.lines().last().unwrap();
        let line = text.lines().position(|l| l == bad_first).unwrap() + 1;
        let err = resolve(&dir, &text, section == "video").map(|_| ()).unwrap_err().to_string();
        let want = format!("line {line}, key `{key}`");
        assert!(err.contains("p.toml") && err.contains(&want), "{bad} in [{section}]: want '{want}' in: {err}\n{text}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

#[test]
fn every_bad_flag_names_the_flag() {
    let input = example();
    let ex = Some(input.clone());
    let d = DreamFlags::default;
    let dream_cases: Vec<(DreamFlags, &str)> = vec![
        (DreamFlags { octaves: Some(0), ..d() }, "--octaves"),
        (DreamFlags { octave_scale: Some(f64::NAN), ..d() }, "--octave-scale"),
        (DreamFlags { steps: Some(0), ..d() }, "--steps"),
        (DreamFlags { step: Some(-1.0), ..d() }, "--step"),
        (DreamFlags { step: Some(f64::NAN), ..d() }, "--step"),
        (DreamFlags { max_loss: Some(f64::INFINITY), ..d() }, "--max-loss"),
        (DreamFlags { jitter: Some(99_999), ..d() }, "--jitter"),
        (DreamFlags { max_size: Some(0), ..d() }, "--max-size"),
        (DreamFlags { tile: Some(5), ..d() }, "--tile"),
        (DreamFlags { tv: Some(-1.0), ..d() }, "--tv"),
        (DreamFlags { grad_blur: Some(30.0), ..d() }, "--grad-blur"),
        (DreamFlags { image_blur: Some(f64::NAN), ..d() }, "--image-blur"),
        (DreamFlags { decay: Some(1.0), ..d() }, "--decay"),
        (DreamFlags { laplacian: Some(99), ..d() }, "--laplacian"),
        (DreamFlags { layers: Some("block5=nan".into()), ..d() }, "--layers"),
        (DreamFlags { layers: Some("block5:x".into()), ..d() }, "--layers"),
        (DreamFlags { classes: Some("bananaa".into()), ..d() }, "--class"),
        (DreamFlags { class_mode: Some("x".into()), ..d() }, "--class-mode"),
        (
            DreamFlags { guide: ex.clone(), guide_layers: Some("block8".into()), guide_mode: Some("x".into()), ..d() },
            "--guide-mode",
        ),
        (
            DreamFlags { guide: ex.clone(), guide_layers: Some("block8".into()), guide_weight: Some(f32::NAN), ..d() },
            "--guide-weight",
        ),
        (DreamFlags { guide: ex.clone(), ..d() }, "--guide"),
        (
            DreamFlags { style: ex.clone(), style_layers: Some("block1".into()), style_weight: Some(f32::NAN), ..d() },
            "--style-weight",
        ),
        (
            DreamFlags {
                style: ex.clone(),
                style_layers: Some("block1".into()),
                content_weight: Some(f32::INFINITY),
                ..d()
            },
            "--content-weight",
        ),
        (DreamFlags { style: ex.clone(), ..d() }, "--style"),
        (DreamFlags { guide_weight: Some(2.0), ..d() }, "--guide-weight"),
        (DreamFlags { guide_layers: Some("block8".into()), ..d() }, "--guide-layers"),
        (DreamFlags { content_layers: Some("block8".into()), ..d() }, "--content-layers"),
        (DreamFlags { model: Some("nope".into()), ..d() }, "--model"),
        (DreamFlags { device: Some("tpu".into()), ..d() }, "--device"),
        (DreamFlags { preset: Some("nope".into()), ..d() }, "--preset"),
    ];
    for (flags, name) in dream_cases {
        let err = Job::dream(&input, Path::new("o.png"), &flags).map(|_| ()).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{name}:")) || err.starts_with(&format!("{name} ")), "{name}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    let z = ZoomFlags::default;
    let zoom_cases: Vec<(ZoomFlags, &str)> = vec![
        (ZoomFlags { frames: Some(0), ..z() }, "--frames"),
        (ZoomFlags { duration: Some(-1.0), ..z() }, "--duration"),
        (ZoomFlags { duration: Some(0.001), ..z() }, "--duration"),
        (ZoomFlags { fps: Some("abc".into()), ..z() }, "--fps"),
        (ZoomFlags { zoom: Some(0.0), ..z() }, "--zoom"),
        (ZoomFlags { zoom_per_second: Some(f64::NAN), ..z() }, "--zoom-per-second"),
        (ZoomFlags { zoom: Some(1e-300), ..z() }, "--zoom"),
        (ZoomFlags { zoom_per_second: Some(1e-300), ..z() }, "--zoom-per-second"),
        (ZoomFlags { pan: Some("1e300,0".into()), ..z() }, "--pan"),
        (ZoomFlags { rotate: Some(f64::INFINITY), ..z() }, "--rotate"),
        (ZoomFlags { pan: Some("1".into()), ..z() }, "--pan"),
        (ZoomFlags { frame_steps: Some(1_000_000), ..z() }, "--frame-steps"),
    ];
    let (flags, e) = (DreamFlags::default(), EncodeFlags::default());
    for (zf, name) in zoom_cases {
        let err = Job::zoom(&input, Path::new("o.gif"), &flags, &zf, &e).map(|_| ()).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{name}:")), "{name}: {err}");
    }
    let v = VideoFlags::default;
    for (vf, name) in [
        (VideoFlags { blend: Some(1.0), ..v() }, "--blend"),
        (VideoFlags { motion: Some("swirl".into()), ..v() }, "--motion"),
        (VideoFlags { warp: Some(-0.1), ..v() }, "--warp"),
        (VideoFlags { cut: Some(f64::INFINITY), ..v() }, "--cut"),
        (VideoFlags { frame_octaves: Some(0), ..v() }, "--frame-octaves"),
        (VideoFlags { frame_steps: Some(1_000_000), ..v() }, "--frame-steps"),
        (VideoFlags { frame_step: Some(f64::NAN), ..v() }, "--frame-step"),
        // A value for the other motion.
        (VideoFlags { motion: Some("flow".into()), blend: Some(0.5), ..v() }, "--blend"),
        (VideoFlags { motion: Some("blend".into()), warp: Some(0.5), ..v() }, "--warp"),
        (VideoFlags { blend: Some(0.5), frame_steps: Some(3), ..v() }, "--frame-steps"),
        (VideoFlags { start: Some(-1.0), ..v() }, "--start"),
        (VideoFlags { duration: Some(0.0), ..v() }, "--duration"),
    ] {
        let err = Job::video(&input, Path::new("o.mp4"), &flags, &vf, &e).map(|_| ()).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{name}:")), "{name}: {err}");
    }
    for (ef, name) in [
        (EncodeFlags { crf: Some(64), ..Default::default() }, "--crf"),
        (EncodeFlags { x264_preset: Some("warp".into()), ..Default::default() }, "--x264-preset"),
    ] {
        let err = Job::zoom(&input, Path::new("o.mp4"), &flags, &z(), &ef).map(|_| ()).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{name}:")), "{name}: {err}");
    }
}

#[test]
fn flags_override_the_preset_and_replace_its_objective() {
    let input = example();
    let flags = DreamFlags { layers: Some("block3=2, block4".into()), steps: Some(5), ..Default::default() };
    let job = Job::dream(&input, Path::new("o.png"), &flags).unwrap();
    assert_eq!(job.params().steps, 5);
    assert_eq!(job.params().objective.layers, vec![LayerTerm::new("block3", 2.0), LayerTerm::new("block4", 1.0)]);
    let flags = DreamFlags { classes: Some("banana".into()), ..Default::default() };
    let job = Job::dream(&input, Path::new("o.png"), &flags).unwrap();
    assert!(job.params().objective.layers.is_empty(), "--class replaces the preset's layers");
}

#[test]
fn a_bad_preset_value_is_reported_even_when_a_flag_overrides_it() {
    let dir = scratch("both");
    let path = dir.join("p.toml");
    std::fs::write(&path, "[dream]\nlayers = { block5 = 1 }\nstep = -1\n").unwrap();
    let flags = DreamFlags { preset: Some(path.to_string_lossy().into()), step: Some(0.02), ..Default::default() };
    let err = Job::dream(&example(), Path::new("o.png"), &flags).unwrap_err().to_string();
    assert!(err.contains("line 3, key `dream.step`"), "{err}");
}

#[test]
fn the_job_serialises_with_image_hashes_not_paths() {
    let flags = DreamFlags { preset: Some("guide".into()), ..Default::default() };
    let job = Job::dream(&example(), Path::new("o.png"), &flags).unwrap();
    let text = serde_json::to_string(&job).unwrap();
    assert!(text.contains("sha256:"), "{text}");
}

#[test]
fn the_fingerprint_follows_what_is_rendered_not_the_encoder() {
    let dir = scratch("fingerprint");
    let input = dir.join("in.png");
    std::fs::copy(example(), &input).unwrap();
    let fingerprint = |flags: DreamFlags, e: EncodeFlags| {
        let job = Job::zoom(&input, &dir.join("o.gif"), &flags, &ZoomFlags::default(), &e).unwrap();
        job.fingerprint().unwrap()
    };
    let d = DreamFlags::default;
    let base = fingerprint(d(), EncodeFlags::default());
    let reencoded = EncodeFlags { crf: Some(30), x264_preset: Some("fast".into()), resume: true, log: None };
    assert_eq!(base, fingerprint(d(), reencoded), "the stored frames do not depend on the encoder");
    assert_ne!(base, fingerprint(DreamFlags { device: Some("cpu-portable".into()), ..d() }, EncodeFlags::default()));
    assert_ne!(base, fingerprint(DreamFlags { steps: Some(3), ..d() }, EncodeFlags::default()));
    let other = image::RgbImage::from_pixel(40, 30, image::Rgb([9, 99, 199]));
    other.save(&input).unwrap();
    assert_ne!(base, fingerprint(d(), EncodeFlags::default()), "new content at the same path");
    // A video's continuation settings are part of what is rendered.
    let video = |v: VideoFlags| {
        Job::video(&input, &dir.join("o.mp4"), &d(), &v, &EncodeFlags::default()).unwrap().fingerprint().unwrap()
    };
    let flow = video(VideoFlags::default());
    for changed in [
        VideoFlags { warp: Some(0.5), ..Default::default() },
        VideoFlags { cut: Some(0.5), ..Default::default() },
        VideoFlags { frame_steps: Some(5), ..Default::default() },
        VideoFlags { motion: Some("blend".into()), ..Default::default() },
    ] {
        assert_ne!(flow, video(changed));
    }
}

#[test]
fn a_flag_settles_a_preset_pair_but_every_preset_value_is_checked() {
    let dir = scratch("settle");
    let text = "[dream]\nlayers = { block5 = 1 }\n[zoom]\nframes = 10\nduration = 2\nzoom = 1.1\nzoom_per_second = 2\n";
    let path = dir.join("p.toml");
    std::fs::write(&path, text).unwrap();
    let flags = DreamFlags { preset: Some(path.to_string_lossy().into()), ..Default::default() };
    let z = ZoomFlags { frames: Some(7), zoom: Some(1.02), ..Default::default() };
    let job = Job::zoom(&example(), Path::new("o.gif"), &flags, &z, &EncodeFlags::default()).unwrap();
    let Work::Zoom(plan) = &job.work else { panic!("a zoom") };
    assert_eq!((plan.frames, plan.transform.zoom), (7, 1.02));
    std::fs::write(&path, "[dream]\nlayers = { block5 = 1 }\ntile = 100\n").unwrap();
    let flags = DreamFlags { tile: Some(512), ..flags };
    let err = Job::dream(&example(), Path::new("o.png"), &flags).unwrap_err().to_string();
    assert!(err.contains("line 3, key `dream.tile`"), "{err}");
}

#[test]
fn the_fingerprint_does_not_depend_on_how_paths_are_spelt() {
    let dir = scratch("spelling");
    let input = dir.join("in.png");
    std::fs::copy(example(), &input).unwrap();
    let dotted = dir.join(".").join("in.png");
    let fingerprint = |input: &Path, output: &Path| {
        let (d, z, e) = (DreamFlags::default(), ZoomFlags::default(), EncodeFlags::default());
        Job::zoom(input, output, &d, &z, &e).unwrap().fingerprint().unwrap()
    };
    assert_eq!(fingerprint(&input, &dir.join("o.gif")), fingerprint(&dotted, &dir.join(".").join("o.gif")));
}

#[test]
fn a_blend_without_a_motion_blends_and_a_motion_flag_overrides_a_presets_blend() {
    let dir = scratch("motion");
    let video = |flags: &DreamFlags, v: VideoFlags| {
        let job = Job::video(&example(), &dir.join("o.mp4"), flags, &v, &EncodeFlags::default()).unwrap();
        let Work::Video(plan) = job.work else { panic!("a video") };
        plan.continuation
    };
    let d = DreamFlags::default();
    assert!(matches!(video(&d, VideoFlags::default()), Continuation::Flow { .. }));
    assert_eq!(video(&d, VideoFlags { blend: Some(0.5), ..Default::default() }), Continuation::Blend { blend: 0.5 });
    let path = dir.join("p.toml");
    std::fs::write(&path, "[dream]\nlayers = { block5 = 1 }\n[video]\nblend = 0.4\n").unwrap();
    let with_preset = DreamFlags { preset: Some(path.to_string_lossy().into()), ..Default::default() };
    assert_eq!(video(&with_preset, VideoFlags::default()), Continuation::Blend { blend: 0.4 });
    let flow = VideoFlags { motion: Some("flow".into()), ..Default::default() };
    assert!(matches!(video(&with_preset, flow), Continuation::Flow { .. }), "the flag wins over the preset's blend");
}
