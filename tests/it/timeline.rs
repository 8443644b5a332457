//! Keyframed zoom settings end to end: `--animate` and a preset's `[timeline]`, the dry run's
//! curves, the frames at the keys rendered with the keyed values, and mistakes reported where
//! they were written.

use crate::util::{deepdream, repo, scratch};
use std::path::Path;
use std::process::Output;

fn ok(o: &Output) -> (String, String) {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    (String::from_utf8_lossy(&o.stdout).into_owned(), err)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The dry run's row at `time` (e.g. "2.00s"), as numbers.
fn row(table: &str, time: &str) -> Vec<f64> {
    let line = table.lines().find(|l| l.trim_start().starts_with(time)).unwrap_or_else(|| panic!("{table}"));
    line.split_whitespace().skip(2).map(|v| v.parse().unwrap()).collect()
}

#[test]
fn a_preset_timeline_crossfades_looks_and_the_dry_run_shows_it() {
    let dir = scratch("timeline-dry");
    let preset = dir.join("drift.toml");
    std::fs::write(
        &preset,
        "base = \"zoom\"\n[dream.layers]\nblock5 = 1\nblock10 = 0\n\n[timeline]\n\
         zoom = \"0: 1.02, 4s: 1.08 ease, 8s: 1.02\"\nrotate = \"0: 0 smooth, 5s: 2 smooth, 10s: 0\"\n\
         \"layers.block5\" = \"0: 1, 4s: 1 ease, 6s: 0\"\n\"layers.block10\" = \"0: 0, 4s: 0 ease, 6s: 1\"\n",
    )
    .unwrap();
    let still = repo().join("examples/chelsea.png");
    let o = deepdream(&[
        "zoom",
        s(&still),
        "-o",
        s(&dir.join("out.gif")),
        "--preset",
        s(&preset),
        "--duration",
        "10",
        "--fps",
        "24",
        "--dry-run",
    ]);
    let (table, _) = ok(&o);
    assert!(table.starts_with("240 frames at 24 fps; 4 animated settings"), "{table}");
    // Columns in the order of the names: layers.block10, layers.block5, rotate, zoom. The
    // rotation is a Catmull-Rom curve (1.856 at 4 s and 6 s), the zoom eases, the looks
    // cross-fade between 4 s and 6 s.
    let near = |got: Vec<f64>, want: [f64; 4]| {
        assert!(got.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-4), "{got:?} vs {want:?}\n{table}");
    };
    near(row(&table, "0.00s"), [0.0, 1.0, 0.0, 1.02]);
    near(row(&table, "4.00s"), [0.0, 1.0, 1.856, 1.08]);
    near(row(&table, "5.00s"), [0.5, 0.5, 2.0, 1.0706]);
    near(row(&table, "6.00s"), [1.0, 0.0, 1.856, 1.05]);
    assert!(!dir.join("out.gif").exists(), "a dry run renders nothing");
}

#[test]
fn frames_at_the_keys_use_the_keyed_values() {
    // With no dreaming between frames (--frame-steps 0), frame k is frame k-1 moved by the
    // zoom the timeline gives at k: unchanged while it is 1, then the keyed 1.3, exactly as a
    // zoom of 1.3 moves the first frame.
    let dir = scratch("timeline-keys");
    let still = repo().join("examples/chelsea.png");
    let common = ["--max-size", "64", "--octaves", "1", "--steps", "1", "--frame-steps", "0", "--rotate", "0"];
    let (keyed, constant) = (dir.join("keyed"), dir.join("constant"));
    ok(&deepdream(
        &[
            &["zoom", s(&still), "-o", s(&keyed), "--frames", "5", "--animate", "zoom=0: 1 step, 3: 1.3 step"][..],
            &common,
        ]
        .concat(),
    ));
    ok(&deepdream(&[&["zoom", s(&still), "-o", s(&constant), "--frames", "2", "--zoom", "1.3"][..], &common].concat()));
    let frame = |d: &Path, i: u32| image::open(d.join(format!("frame_{i:05}.png"))).unwrap().to_rgb8();
    assert!(frame(&keyed, 1) == frame(&keyed, 3), "zoom 1 keeps the picture");
    assert!(frame(&keyed, 4) == frame(&constant, 2), "the frame at the key moves by the keyed zoom");
}

#[test]
fn timeline_mistakes_name_their_origin() {
    let dir = scratch("timeline-bad");
    let still = repo().join("examples/chelsea.png");
    let out = dir.join("z.gif");
    let run = |extra: &[&str]| deepdream(&[&["zoom", s(&still), "-o", s(&out), "--dry-run"][..], extra].concat());
    let refused = |o: Output, needle: &str| {
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains(needle), "{needle:?} not in {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    };
    refused(run(&["--animate", "zoom"]), "--animate: `zoom` is not SETTING=KEYS");
    refused(run(&["--animate", "wobble=0: 1"]), "`wobble` cannot be animated");
    refused(run(&["--animate", "zoom=0: 1, 2s: 500"]), "zoom reaches 500");
    refused(run(&["--animate", "layers.block9=0: 1"]), "no layer block9");
    refused(run(&["--animate", "guide_weight=0: 1"]), "the objective has no guide image");
    refused(
        run(&["--layers", "block5", "--animate", "look=0: patterns, 4: objects", "--animate", "layers.block5=0: 1"]),
        "a look sets the layers' weights",
    );
    refused(run(&["--animate", "jitter=0: 0 smooth, 1000000: 5000"]), "jitter reaches 5000");
    let preset = dir.join("p.toml");
    std::fs::write(&preset, "base = \"zoom\"\n\n[timeline]\nzoom = \"0: 1, 5: 1.1 wobble\"\n").unwrap();
    refused(run(&["--preset", s(&preset)]), "line 4, key `timeline.zoom`: zoom: key 2");
    #[cfg(feature = "video")]
    refused(
        deepdream(&["video", s(&still), "-o", s(&dir.join("v.mp4")), "--preset", s(&preset)]),
        "line 4, key `timeline.zoom`: zoom moves a zoom; a video's frames are not zoomed",
    );
}

#[cfg(feature = "video")]
/// A mono 16-bit WAV of `seconds` at 8 kHz: a 440 Hz tone, loud for 0.1 s on each beat
/// (every 0.5 s), quiet between; returns the file and its samples.
fn beat_wav(path: &Path, seconds: f64) -> Vec<f64> {
    let rate = 8000u32;
    let n = (seconds * rate as f64) as usize;
    let samples: Vec<f64> = (0..n)
        .map(|i| {
            let t = i as f64 / rate as f64;
            let level = if t % 0.5 < 0.1 { 0.8 } else { 0.05 };
            level * (2.0 * std::f64::consts::PI * 440.0 * t).sin()
        })
        .collect();
    let mut bytes = Vec::new();
    let data = (n * 2) as u32;
    bytes.extend(b"RIFF");
    bytes.extend((36 + data).to_le_bytes());
    bytes.extend(b"WAVEfmt ");
    bytes.extend(16u32.to_le_bytes());
    bytes.extend(1u16.to_le_bytes()); // PCM
    bytes.extend(1u16.to_le_bytes()); // mono
    bytes.extend(rate.to_le_bytes());
    bytes.extend((rate * 2).to_le_bytes());
    bytes.extend(2u16.to_le_bytes());
    bytes.extend(16u16.to_le_bytes());
    bytes.extend(b"data");
    bytes.extend(data.to_le_bytes());
    for v in &samples {
        bytes.extend(((v * 32767.0) as i16).to_le_bytes());
    }
    std::fs::write(path, bytes).unwrap();
    samples
}

#[cfg(feature = "video")]
#[test]
fn an_audio_reactive_zoom_follows_the_beat() {
    let dir = scratch("timeline-audio");
    let wav = dir.join("beat.wav");
    let samples = beat_wav(&wav, 4.0);
    let still = repo().join("examples/chelsea.png");
    let o = deepdream(&[
        "zoom",
        s(&still),
        "-o",
        s(&dir.join("z.mp4")),
        "--audio",
        s(&wav),
        "--duration",
        "4",
        "--fps",
        "24",
        "--animate",
        "step=audio(min=0.005, max=0.03, smooth=0.02)",
        "--dry-run",
    ]);
    let (table, _) = ok(&o);
    let steps: Vec<f64> =
        table.lines().skip(2).map(|l| l.split_whitespace().nth(2).unwrap().parse().unwrap()).collect();
    assert_eq!(steps.len(), 96, "every frame of an audio curve: {table}");
    // The loudness of each frame's samples, against the step printed for it.
    let loud: Vec<f64> = (0..96)
        .map(|k| {
            let w = &samples[k * 8000 / 24..(k + 1) * 8000 / 24];
            (w.iter().map(|v| v * v).sum::<f64>() / w.len() as f64).sqrt()
        })
        .collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (ml, ms) = (mean(&loud), mean(&steps));
    let cov: f64 = loud.iter().zip(&steps).map(|(a, b)| (a - ml) * (b - ms)).sum();
    let (vl, vs): (f64, f64) =
        (loud.iter().map(|a| (a - ml).powi(2)).sum(), steps.iter().map(|b| (b - ms).powi(2)).sum());
    let r = cov / (vl * vs).sqrt();
    eprintln!("correlation of the step with the loudness: {r:.3}");
    assert!(r > 0.8, "r = {r}");
    let (lo, hi) = steps.iter().fold((f64::MAX, 0.0f64), |(l, h), &v| (l.min(v), h.max(v)));
    assert!(lo < 0.008 && hi > 0.025, "the step spans its range: {lo}..{hi}");
    // An audio curve needs a sound track.
    let none =
        deepdream(&["zoom", s(&still), "-o", s(&dir.join("n.gif")), "--animate", "step=audio(min=0.01, max=0.02)"]);
    assert_eq!(none.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&none.stderr).contains("follows --audio FILE"));
}

#[cfg(feature = "video")]
#[test]
fn a_zoom_carries_its_sound_track() {
    let dir = scratch("timeline-sound");
    let wav = dir.join("beat.wav");
    beat_wav(&wav, 2.0);
    let out = dir.join("z.mp4");
    let still = repo().join("examples/chelsea.png");
    ok(&deepdream(&[
        "zoom",
        s(&still),
        "-o",
        s(&out),
        "--audio",
        s(&wav),
        "--frames",
        "12",
        "--fps",
        "6",
        "--max-size",
        "48",
        "--octaves",
        "1",
        "--steps",
        "1",
        "--frame-steps",
        "1",
        "--animate",
        "jitter=audio(min=0, max=8)",
    ]));
    let m = deepdream::source::video::summarize(&out).unwrap();
    assert_eq!(m.frames, 12);
    let audio = m.audio_seconds.expect("the zoom's MP4 has the sound track");
    assert!((audio - 2.0).abs() < 0.1, "{audio} s of sound for 2 s of zoom");
}

#[cfg(feature = "video")]
#[test]
fn a_video_timeline_animates_its_blend_and_dream() {
    let Some(shared) = crate::util::shared() else { return };
    let dir = scratch("timeline-video");
    let clip = shared.join("media/bigbuckbunny.mp4");
    let o = deepdream(&[
        "video",
        s(&clip),
        "-o",
        s(&dir.join("v.mp4")),
        "--motion",
        "blend",
        "--blend",
        "0.5",
        "--animate",
        "blend=0: 0.2, 2s: 0.8",
        "--animate",
        "step=audio(min=0.01, max=0.03)",
        "--dry-run",
    ]);
    let (table, _) = ok(&o);
    assert!(table.contains("2 animated settings"), "{table}");
    // The sound track makes the table frame by frame; blend is 0.5 at 1 s.
    let at_one = table.lines().find(|l| l.trim_start().starts_with("1.00s")).unwrap();
    let blend: f64 = at_one.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!((blend - 0.5).abs() < 1e-3, "{at_one}");
    let flow = deepdream(&["video", s(&clip), "-o", s(&dir.join("f.mp4")), "--animate", "blend=0: 0.5", "--dry-run"]);
    assert_eq!(flow.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&flow.stderr).contains("applies to --motion blend"));
}

#[test]
fn looks_cross_fade_from_one_preset_to_another() {
    let dir = scratch("timeline-looks");
    let still = repo().join("examples/chelsea.png");
    let out = dir.join("z.gif");
    let o = deepdream(&[
        "zoom",
        s(&still),
        "-o",
        s(&out),
        "--frames",
        "12",
        "--fps",
        "2",
        "--animate",
        "look=0: patterns, 2s: patterns ease, 4s: objects",
        "--dry-run",
    ]);
    let (table, _) = ok(&o);
    // The patterns preset's block1, block2 (1) and block3 (0.5), then objects' block10,
    // block11 (1) and block12 (0.5): all of patterns until 2 s, half of each at 3 s, objects
    // from 4 s.
    let header = table.lines().nth(1).unwrap();
    assert!(header.contains("patterns:block1") && header.contains("objects:block12"), "{table}");
    assert_eq!(row(&table, "2.00s"), [1.0, 1.0, 0.5, 0.0, 0.0, 0.0]);
    assert_eq!(row(&table, "3.00s"), [0.5, 0.5, 0.25, 0.5, 0.5, 0.25]);
    assert_eq!(row(&table, "4.00s"), [0.0, 0.0, 0.0, 1.0, 1.0, 0.5]);
    // A look and a class together render.
    let small = ["--frames", "3", "--max-size", "48", "--octaves", "1", "--steps", "1", "--frame-steps", "1"];
    let fade = ["--animate", "look=0: patterns, 2: class-banana"];
    ok(&deepdream(&[&["zoom", s(&still), "-o", s(&dir.join("frames"))][..], &small, &fade].concat()));
    // A look with a guide image fades its guide weight in, and one guide into another.
    let guide = deepdream(&["zoom", s(&still), "-o", s(&out), "--animate", "look=0: patterns, 2: guide", "--dry-run"]);
    let (table, _) = ok(&guide);
    assert!(table.lines().nth(1).unwrap().ends_with("guide:guide weight"), "{table}");
    let hubble = dir.join("hubble.toml");
    let image = repo().join("examples/hubble.jpg");
    std::fs::write(
        &hubble,
        format!("base = \"guide\"\n[objective.guide]\nimage = \"{}\"\nlayers = {{ block8 = 1 }}\n", s(&image)),
    )
    .unwrap();
    let look = format!("look=0: guide, 2: {}", s(&hubble));
    let two = deepdream(&["zoom", s(&still), "-o", s(&out), "--frames", "4", "--animate", &look, "--dry-run"]);
    let (table, _) = ok(&two);
    let weights: Vec<f64> =
        table.lines().skip(2).map(|l| l.split_whitespace().last().unwrap().parse().unwrap()).collect();
    assert_eq!(weights.first(), Some(&0.0), "the second guide starts unseen: {table}");
    let frames = dir.join("guides");
    ok(&deepdream(&[&["zoom", s(&still), "-o", s(&frames)][..], &small, &["--animate", &look]].concat()));
}

#[test]
fn the_render_log_reads_back_the_keyed_values() {
    let dir = scratch("timeline-log");
    let still = repo().join("examples/chelsea.png");
    let log = dir.join("settings.jsonl");
    ok(&deepdream(&[
        "zoom",
        s(&still),
        "-o",
        s(&dir.join("z")),
        "--frames",
        "6",
        "--fps",
        "2",
        "--max-size",
        "48",
        "--octaves",
        "1",
        "--steps",
        "1",
        "--animate",
        "zoom=0: 1.02, 2: 1.02 ease, 4: 1.1",
        "--animate",
        "look=0: patterns, 2: patterns, 4: objects",
        "--animate",
        "frame_steps=0: 1, 4: 3 step",
        "--log",
        s(&log),
    ]));
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 6, "a line per dreamed frame");
    let at = |frame: usize, key: &str| lines[frame][key].clone();
    // At the keys: the keyed zoom, steps, and the looks' weights; halfway between, half.
    assert_eq!((at(2, "zoom"), at(4, "zoom")), (serde_json::json!(1.02), serde_json::json!(1.1)));
    assert_eq!((at(3, "time"), at(4, "steps")), (serde_json::json!(1.5), serde_json::json!(3)));
    assert_eq!(lines[2]["layers"]["block1"], 1.0);
    assert_eq!(lines[2]["layers"]["block10"], 0.0);
    assert_eq!(lines[3]["layers"]["block1"], 0.5);
    assert_eq!(lines[4]["layers"]["block1"], 0.0);
    assert_eq!(lines[4]["layers"]["block10"], 1.0);
}
