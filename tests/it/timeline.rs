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
    refused(run(&["--animate", "guide_weight=0: 1"]), "no a guide image");
    let preset = dir.join("p.toml");
    std::fs::write(&preset, "base = \"zoom\"\n\n[timeline]\nzoom = \"0: 1, 5: 1.1 wobble\"\n").unwrap();
    refused(run(&["--preset", s(&preset)]), "line 4, key `timeline.zoom`: zoom: key 2");
    let video = deepdream(&["video", s(&still), "-o", s(&dir.join("v.mp4")), "--preset", s(&preset)]);
    refused(video, "timelines animate zoom renders");
}
