//! Render farms end to end through the CLI: `plan`, `render-chunk` for every chunk, `merge`,
//! against the one-machine render of the same clip: bit-identical where no frame depends on
//! another or the seam is a scene cut, within the seam targets where chunks cross-fade. Then
//! the faults: a killed chunk, a missing or damaged chunk, a plan whose settings changed.

use crate::util::{deepdream, psnr, repo, scratch};
use deepdream::media::Rational;
use image::RgbImage;
use std::path::{Path, PathBuf};
use std::process::Output;

fn ok(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    err
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Small and quick: the dream barely changes between runs of these tests.
const FAST: [&str; 8] = ["--max-size", "64", "--octaves", "1", "--steps", "1", "--step", "0.03"];

/// A clip never seen before: three shots (the cat panning right, the coffee panning down,
/// the cat close up panning left) of 14, 12 and 24 frames at 12 fps, 80x60, H.264 with a
/// keyframe every 6 frames.
pub fn three_shot_clip(dir: &Path) -> PathBuf {
    let clip = dir.join("shots.mp4");
    let load = |name: &str, w: u32| {
        let img = image::open(repo().join("examples").join(name)).unwrap().to_rgb8();
        let h = img.height() * w / img.width();
        image::imageops::resize(&img, w, h, image::imageops::FilterType::Triangle)
    };
    let (cat, coffee, close) = (load("chelsea.png", 160), load("coffee.jpg", 130), load("chelsea.png", 320));
    let mut frames: Vec<RgbImage> = Vec::new();
    for i in 0..14 {
        frames.push(image::imageops::crop_imm(&cat, 10 + 4 * i, 20, 80, 60).to_image());
    }
    for i in 0..12 {
        frames.push(image::imageops::crop_imm(&coffee, 20, 2 + 2 * i, 80, 60).to_image());
    }
    for i in 0..24 {
        frames.push(image::imageops::crop_imm(&close, 150 - 3 * i, 40, 80, 60).to_image());
    }
    // A keyframe every 6 frames: the chunks seek.
    encode_with_keyframes(&frames, &clip, 6);
    clip
}

/// `frames` as H.264 in MP4 with a keyframe every `keyint` frames (the project's encoder
/// leaves x264's 250), so that a chunk's decode seeks to a keyframe near it.
fn encode_with_keyframes(frames: &[RgbImage], path: &Path, keyint: u32) {
    use ffmpeg_next as ff;
    ff::init().unwrap();
    ff::log::set_level(ff::log::Level::Error);
    let (w, h) = frames[0].dimensions();
    let mut octx = ff::format::output(&path).unwrap();
    let codec = ff::encoder::find_by_name("libx264").unwrap();
    let global = octx.format().flags().contains(ff::format::Flags::GLOBAL_HEADER);
    let mut ost = octx.add_stream(codec).unwrap();
    let mut enc = ff::codec::context::Context::new_with_codec(codec).encoder().video().unwrap();
    enc.set_width(w);
    enc.set_height(h);
    enc.set_format(ff::format::Pixel::YUV420P);
    enc.set_time_base(ff::Rational::new(1, 12));
    enc.set_frame_rate(Some(ff::Rational::new(12, 1)));
    if global {
        enc.set_flags(ff::codec::Flags::GLOBAL_HEADER);
    }
    let mut dict = ff::Dictionary::new();
    dict.set("g", &keyint.to_string());
    dict.set("keyint_min", &keyint.to_string());
    dict.set("crf", "12");
    let mut enc = enc.open_with(dict).unwrap();
    ost.set_parameters(&enc);
    ost.set_time_base(ff::Rational::new(1, 12));
    octx.write_header().unwrap();
    let out_tb = octx.stream(0).unwrap().time_base();
    let mut scaler = ff::software::scaling::Context::get(
        ff::format::Pixel::RGB24,
        w,
        h,
        ff::format::Pixel::YUV420P,
        w,
        h,
        ff::software::scaling::Flags::BICUBIC,
    )
    .unwrap();
    let drain = |enc: &mut ff::encoder::Video, octx: &mut ff::format::context::Output| {
        let mut packet = ff::Packet::empty();
        while enc.receive_packet(&mut packet).is_ok() {
            packet.set_duration(1);
            packet.set_stream(0);
            packet.rescale_ts(ff::Rational::new(1, 12), out_tb);
            packet.write_interleaved(octx).unwrap();
        }
    };
    for (i, f) in frames.iter().enumerate() {
        let mut rgb = ff::frame::Video::new(ff::format::Pixel::RGB24, w, h);
        let stride = rgb.stride(0);
        for y in 0..h as usize {
            rgb.data_mut(0)[y * stride..y * stride + w as usize * 3]
                .copy_from_slice(&f.as_raw()[y * w as usize * 3..(y + 1) * w as usize * 3]);
        }
        let mut yuv = ff::frame::Video::empty();
        scaler.run(&rgb, &mut yuv).unwrap();
        yuv.set_pts(Some(i as i64));
        enc.send_frame(&yuv).unwrap();
        drain(&mut enc, &mut octx);
    }
    enc.send_eof().unwrap();
    drain(&mut enc, &mut octx);
    octx.write_trailer().unwrap();
}

/// Plans `clip` into `out` with `args`, renders every chunk one after the other (chunk 0 by
/// two workers at once, as Kubernetes may run an index twice), merges; returns the number of
/// chunks and the plan's stderr.
fn farm_render(clip: &Path, out: &Path, args: &[&str]) -> (usize, String) {
    let mut plan = vec!["plan", s(clip), "-o", s(out)];
    plan.extend(args);
    let o = deepdream(&plan);
    let said = ok(&o);
    let n: usize = String::from_utf8_lossy(&o.stdout).trim().parse().expect("plan prints the number of chunks");
    let twice: Vec<_> = (0..2)
        .map(|_| {
            std::process::Command::new(env!("CARGO_BIN_EXE_deepdream"))
                .args(["render-chunk", s(out), "0"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for worker in twice {
        ok(&worker.wait_with_output().unwrap());
    }
    for i in 1..n {
        let said = ok(&deepdream(&["render-chunk", s(out), &i.to_string()]));
        assert!(!said.contains("decoding from the start"), "chunk {i} could not seek: {said}");
    }
    ok(&deepdream(&["merge", s(out)]));
    (n, said)
}

fn one_machine(clip: &Path, out: &Path, args: &[&str]) {
    ok(&deepdream(&[&["video", s(clip), "-o", s(out)][..], args].concat()));
}

fn pngs(dir: &Path) -> Vec<RgbImage> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    names.iter().map(|p| image::open(p).unwrap().to_rgb8()).collect()
}

fn source_frames(clip: &Path, max_size: u32) -> Vec<RgbImage> {
    let mut out = Vec::new();
    let options = deepdream::source::video::VideoOptions { max_size: Some(max_size), ..Default::default() };
    deepdream::source::video::decode(clip, &options, &mut |f| {
        out.push(f.image);
        true
    })
    .unwrap();
    out
}

#[test]
fn a_chunk_seeks_near_its_frames_and_decodes_them_as_from_the_start() {
    use deepdream::source::motion::Continuation;
    use deepdream::source::video::{VideoOptions, VideoSource};
    use deepdream::source::{SeekTo, Source};
    let dir = scratch("farm-seek");
    let clip = three_shot_clip(&dir);
    let options = VideoOptions { max_size: Some(64), scene_cut: 10.0, ..Default::default() };
    let source = VideoSource::open(&clip, options, Continuation::Blend { blend: 0.5 }).unwrap();
    let mut all = Vec::new();
    source
        .decode(u64::MAX, &mut |f| {
            all.push((f.index, f.pts, f.image));
            true
        })
        .unwrap();
    // Every frame: the seeked decode starts at or before it, with the frames, indices and
    // timestamps of the decode from the start (B-frames and an open GOP included).
    let mut starts = Vec::new();
    for k in 1..50usize {
        let mut seeked = Vec::new();
        source
            .decode_from(SeekTo { index: k as u64, pts: all[k].1 }, u64::MAX, &mut |f| {
                seeked.push((f.index, f.pts, f.image));
                true
            })
            .unwrap();
        let first = seeked[0].0;
        assert!(first <= k as u64, "the decode for frame {k} starts at {first}");
        assert_eq!(seeked.len() as u64, 50 - first);
        for (i, pts, image) in &seeked {
            assert!((pts, image) == (&all[*i as usize].1, &all[*i as usize].2), "seek to {k}: frame {i} differs");
        }
        starts.push(first);
    }
    // Keyframes every 6 frames, and a margin of 16 (more than any reordering): late frames
    // are decoded from a keyframe near them, not from the start.
    assert!(starts[44] >= 24, "frame 45 decoded from {}", starts[44]);
}

#[test]
fn a_stream_without_timestamps_decodes_from_the_start_and_stays_exact() {
    // Raw H.264 has no timestamps to seek by: the chunk finds the seek does not match the plan
    // (or cannot seek at all) and decodes from the start.
    let dir = scratch("farm-raw");
    let clip = three_shot_clip(&dir);
    let raw = dir.join("shots.h264");
    crate::video::remux(&clip, &raw, "h264", None);
    let mut args = vec!["--motion", "blend", "--blend", "0"];
    args.extend(FAST);
    let (farm, one) = (dir.join("farm"), dir.join("one"));
    let plan = deepdream(&[&["plan", s(&raw), "-o", s(&farm), "--chunk-frames", "20"][..], &args].concat());
    ok(&plan);
    for i in 0..3 {
        ok(&deepdream(&["render-chunk", s(&farm), &i.to_string()]));
    }
    ok(&deepdream(&["merge", s(&farm)]));
    one_machine(&raw, &one, &args);
    let (a, b) = (pngs(&farm), pngs(&one));
    assert_eq!(a.len(), 50);
    assert!(a == b, "the merged frames differ from the one-machine render's");
}

#[test]
fn independent_frames_merge_bit_identical_to_one_machine() {
    let dir = scratch("farm-exact");
    let clip = three_shot_clip(&dir);
    let mut args = vec!["--motion", "blend", "--blend", "0"];
    args.extend(FAST);
    let (farm, one) = (dir.join("farm"), dir.join("one"));
    let mut planned = args.clone();
    planned.extend(["--chunk-frames", "10"]);
    let (n, said) = farm_render(&clip, &farm, &planned);
    assert_eq!(n, 5, "{said}");
    assert!(said.contains("every seam exact"), "{said}");
    one_machine(&clip, &one, &args);
    let (a, b) = (pngs(&farm), pngs(&one));
    assert_eq!(a.len(), 50);
    assert!(a == b, "the merged frames differ from the one-machine render's");
    assert!(!dir.join(".farm.farm").exists(), "merge removes the farm directory");
}

#[test]
fn blended_video_seams_are_exact_at_cuts_and_faded_elsewhere() {
    let dir = scratch("farm-blend");
    let clip = three_shot_clip(&dir);
    let mut args = vec!["--motion", "blend", "--blend", "0.5"];
    args.extend(FAST);
    let (farm, one) = (dir.join("farm"), dir.join("one"));
    let mut planned = args.clone();
    // Shots start at frames 14 and 26; chunks of 10 end at the cuts where they can. The
    // chunk from 36 warms up from 20, through the cut at 26: exact too. The one from 46 fades.
    planned.extend(["--chunk-frames", "10"]);
    let plan = deepdream(&[&["plan", s(&clip), "-o", s(&farm)][..], &planned].concat());
    let said = ok(&plan);
    let table: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(".farm.farm/plan.json")).unwrap()).unwrap();
    let chunks: Vec<(u64, String)> = table["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["start"].as_u64().unwrap(), c["seam"].as_str().unwrap().to_owned()))
        .collect();
    let cuts: Vec<usize> = table["frames"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .filter(|(_, f)| f["cut"] == true)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(cuts, [14, 26], "{said}");
    let seams: Vec<(u64, &str)> = chunks.iter().map(|(s, k)| (*s, k.as_str())).collect();
    assert_eq!(seams, [(0, "first"), (14, "scene-cut"), (26, "scene-cut"), (36, "scene-cut"), (46, "faded")], "{said}");
    for i in 0..chunks.len() {
        ok(&deepdream(&["render-chunk", s(&farm), &i.to_string()]));
    }
    ok(&deepdream(&["merge", s(&farm)]));
    one_machine(&clip, &one, &args);
    let (a, b, raw) = (pngs(&farm), pngs(&one), source_frames(&clip, 64));
    assert_eq!((a.len(), b.len(), raw.len()), (50, 50, 50));
    // Exact up to the faded seam's cross-fade (frames 38..46).
    let first_different = (0..50).find(|&i| a[i] != b[i]).unwrap();
    assert_eq!(first_different, 38, "exact through the scene cuts");
    // The seam targets: frame-to-frame change across the seam no worse than the worst step
    // inside the shot by more than 0.5 dB; the dream strength within 1 dB across it.
    let f2f = |t: usize| psnr(&a[t], &a[t - 1]);
    let strength = |t: usize| psnr(&a[t], &raw[t]);
    let inside = (27..=37).chain(48..50).map(f2f).fold(f64::INFINITY, f64::min);
    let across = (38..=47).map(f2f).fold(f64::INFINITY, f64::min);
    let (lo, hi) = (38..=47).map(strength).fold((f64::INFINITY, 0.0f64), |(l, h), v| (l.min(v), h.max(v)));
    let before = (30..38).map(strength).sum::<f64>() / 8.0;
    eprintln!(
        "faded seam: worst step across {across:.2} dB, inside {inside:.2}; strength {lo:.2}..{hi:.2}, before {before:.2}"
    );
    assert!(across > inside - 0.5, "worst step across the seam {across:.2} dB vs {inside:.2} inside");
    assert!((lo - before).abs() < 1.0 && (hi - before).abs() < 1.0, "strength {lo:.2}..{hi:.2} vs {before:.2}");
}

#[test]
fn a_zoom_plans_one_chunk_and_merges_as_the_zoom() {
    let dir = scratch("farm-zoom");
    let still = repo().join("examples/chelsea.png");
    let (farm, one) = (dir.join("farm"), dir.join("one"));
    let zoom = ["--frames", "6", "--loop", "2", "--max-size", "48", "--octaves", "1", "--steps", "1"];
    let plan = deepdream(&[&["plan", "zoom", s(&still), "-o", s(&farm)][..], &zoom].concat());
    let said = ok(&plan);
    assert_eq!(String::from_utf8_lossy(&plan.stdout).trim(), "1");
    assert!(said.contains("a zoom is strictly sequential"), "{said}");
    ok(&deepdream(&["render-chunk", s(&farm), "0"]));
    ok(&deepdream(&["merge", s(&farm)]));
    ok(&deepdream(&[&["zoom", s(&still), "-o", s(&one)][..], &zoom].concat()));
    let (a, b) = (pngs(&farm), pngs(&one));
    assert_eq!(a.len(), 6);
    assert!(a == b, "the merged zoom differs from the zoom");
}

/// Runs `deepdream ARGS`, kills it (SIGKILL) once `dir` holds `frames` files, and waits.
fn kill_after(args: &[&str], dir: &Path, frames: usize) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_deepdream"))
        .args(args)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0) < frames && start.elapsed().as_secs() < 120 {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn chunks_survive_kills_damage_and_changed_settings() {
    let dir = scratch("farm-faults");
    let clip = three_shot_clip(&dir);
    let preset = dir.join("mine.toml");
    std::fs::write(&preset, "base = \"video\"\n[dream]\noctave_scale = 1.4\n").unwrap();
    let mut args = vec!["--preset", s(&preset), "--motion", "blend", "--blend", "0.5", "--chunk-frames", "10"];
    args.extend(FAST);
    let farm = dir.join("farm.mp4");
    let plan = deepdream(&[&["plan", s(&clip), "-o", s(&farm)][..], &args].concat());
    ok(&plan);
    // Planning again with the same settings keeps the plan; other settings are refused.
    let again = deepdream(&[&["plan", s(&clip), "-o", s(&farm)][..], &args].concat());
    assert!(ok(&again).contains("the same plan was already there"));
    let other = deepdream(&[&["plan", s(&clip), "-o", s(&farm), "--seed", "5"][..], &args].concat());
    assert_eq!(other.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&other.stderr).contains("--replace"));
    // The encoder is not in the fingerprint (frames do not depend on it), but a plan is kept
    // only when everything is the same.
    let crf = deepdream(&[&["plan", s(&clip), "-o", s(&farm), "--crf", "30"][..], &args].concat());
    assert_eq!(crf.status.code(), Some(2));
    let store = dir.join(".farm.mp4.farm");
    // Chunk 0 is killed after a few frames; run again, it resumes.
    kill_after(&["render-chunk", s(&farm), "0"], &store.join("chunk-0000"), 4);
    assert!(!store.join("chunk-0000.done").exists());
    let resumed = ok(&deepdream(&["render-chunk", s(&farm), "0"]));
    assert!(resumed.contains("chunk 0: resuming after frame"), "{resumed}");
    // A finished chunk does nothing.
    assert!(ok(&deepdream(&["render-chunk", s(&farm), "0"])).contains("already done"));
    // Merge with chunks missing names them.
    ok(&deepdream(&["render-chunk", s(&farm), "2"]));
    let merge = deepdream(&["merge", s(&farm)]);
    assert_eq!(merge.status.code(), Some(2));
    let err = String::from_utf8_lossy(&merge.stderr);
    assert!(err.contains("3 of 5 chunks are not done: 1, 3, 4"), "{err}");
    assert!(!farm.exists());
    // A chunk index outside the plan, and a changed preset, are refused.
    let beyond = deepdream(&["render-chunk", s(&farm), "5"]);
    assert_eq!(beyond.status.code(), Some(2));
    std::fs::write(&preset, "base = \"video\"\n[dream]\noctave_scale = 1.5\n").unwrap();
    let changed = deepdream(&["render-chunk", s(&farm), "1"]);
    assert_eq!(changed.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&changed.stderr).contains("differs from the plan's"));
    std::fs::write(&preset, "base = \"video\"\n[dream]\noctave_scale = 1.4\n").unwrap();
    for i in [1, 3, 4] {
        ok(&deepdream(&["render-chunk", s(&farm), &i.to_string()]));
    }
    // A damaged frame: merge names the chunk, takes its completion back, and the chunk
    // renders that frame again.
    let frame = store.join("chunk-0001/000020.png");
    let good = std::fs::read(&frame).unwrap();
    std::fs::write(&frame, &good[..good.len() / 2]).unwrap();
    let merge = deepdream(&["merge", s(&farm)]);
    assert_eq!(merge.status.code(), Some(2));
    let err = String::from_utf8_lossy(&merge.stderr);
    assert!(err.contains("chunk 1 is damaged") && err.contains("000020.png"), "{err}");
    assert!(!farm.exists(), "a failed merge leaves no output");
    ok(&deepdream(&["render-chunk", s(&farm), "1"]));
    assert_eq!(std::fs::read(&frame).unwrap(), good, "the frame is rendered again, the same");
    // The same for a source frame kept for the cross-fade into chunk 4 (from frame 46).
    let raw = store.join("chunk-0004/raw-000040.png");
    let good = std::fs::read(&raw).unwrap();
    std::fs::write(&raw, &good[..good.len() / 2]).unwrap();
    let merge = deepdream(&["merge", s(&farm)]);
    assert!(String::from_utf8_lossy(&merge.stderr).contains("chunk 4 is damaged"));
    ok(&deepdream(&["render-chunk", s(&farm), "4"]));
    assert_eq!(std::fs::read(&raw).unwrap(), good);
    ok(&deepdream(&["merge", s(&farm)]));
    let m = deepdream::source::video::summarize(&farm).unwrap();
    assert_eq!((m.frames, m.rate), (50, Rational::new(12, 1)));
    assert!(!store.exists());
}
