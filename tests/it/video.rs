//! `deepdream zoom` and `deepdream video` end to end, with small frames so they stay quick.
//! Outputs are checked with the project's own ffmpeg decoder.

use crate::util::{deepdream, repo, scratch, shared};
use deepdream::media::Rational;
use deepdream::source::video::{MediaSummary, summarize};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn ok(o: &Output) {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const FAST: [&str; 6] = ["--octaves", "1", "--steps", "1", "--step", "0.03"];

#[test]
fn bigbuckbunny_keeps_frames_rate_size_and_audio() {
    let Some(shared) = shared() else { return };
    let input = shared.join("media/bigbuckbunny.mp4");
    let dir = scratch("bbb");
    let out = dir.join("bbb.mp4");
    let mut args = vec!["video", s(&input), "-o", s(&out), "--max-size", "160", "--blend", "0.3"];
    args.extend(FAST);
    ok(&deepdream(&args));
    let m: MediaSummary = summarize(&out).unwrap();
    assert_eq!(m.frames, 132);
    assert_eq!(m.rate, Rational::new(25, 1));
    assert_eq!((m.width, m.height), (160, 90));
    let audio = m.audio_seconds.expect("the audio is kept");
    assert!(
        (audio - 5.28).abs() < 0.1 && (m.video_seconds - 5.28).abs() < 0.01,
        "audio {audio} s, video {} s",
        m.video_seconds
    );
    // A WebM holds no AAC: the audio is re-encoded as Opus, with --start and --duration.
    let webm = dir.join("bbb.webm");
    let mut args = vec![
        "video",
        s(&input),
        "-o",
        s(&webm),
        "--max-size",
        "96",
        "--start",
        "1",
        "--duration",
        "2",
        "--blend",
        "0.3",
    ];
    args.extend(FAST);
    ok(&deepdream(&args));
    let m = summarize(&webm).unwrap();
    assert_eq!(m.frames, 50);
    let audio = m.audio_seconds.expect("the audio is kept in WebM");
    assert!((audio - 2.0).abs() < 0.1, "audio {audio} s, video {} s", m.video_seconds);
}

#[test]
fn zoom_gif_plays_and_loops() {
    let dir = scratch("gif");
    let out = dir.join("zoom.gif");
    let example = repo().join("examples/chelsea.png");
    let mut args = vec![
        "zoom",
        s(&example),
        "-o",
        s(&out),
        "--frames",
        "48",
        "--max-size",
        "96",
        "--zoom",
        "1.05",
        "--frame-steps",
        "1",
    ];
    args.extend(FAST);
    ok(&deepdream(&args));
    let m = summarize(&out).unwrap();
    assert_eq!(m.frames, 48);
    let bytes = std::fs::read(&out).unwrap();
    let at = bytes.windows(11).position(|w| w == b"NETSCAPE2.0").expect("a looping GIF has the NETSCAPE block");
    assert_eq!(&bytes[at + 11..at + 15], &[3, 1, 0, 0], "loop count 0: forever");
}

/// A clip the renderer has never seen: H.264 in QuickTime, 30000/1001 fps, odd size, no
/// audio, made by the project's own encoder from a zoom.
fn unseen_clip(dir: &Path) -> PathBuf {
    let clip = dir.join("clip.mov");
    let example = repo().join("examples/chelsea.png");
    let mut args =
        vec!["zoom", s(&example), "-o", s(&clip), "--frames", "12", "--max-size", "97", "--fps", "30000/1001"];
    args.extend(FAST);
    ok(&deepdream(&args));
    clip
}

#[test]
fn unseen_clip_keeps_frame_count_and_rate() {
    let dir = scratch("unseen");
    let clip = unseen_clip(&dir);
    let m = summarize(&clip).unwrap();
    assert_eq!((m.frames, m.rate, m.audio_seconds.is_some()), (12, Rational::new(30000, 1001), false));
    let out = dir.join("out.mp4");
    let mut args = vec!["video", s(&clip), "-o", s(&out)];
    args.extend(FAST);
    ok(&deepdream(&args));
    let o = summarize(&out).unwrap();
    assert_eq!(o.frames, 12);
    assert_eq!(o.rate, Rational::new(30000, 1001));
    assert_eq!((o.width % 2, o.height % 2), (0, 0), "odd sizes are padded for yuv420p");
    assert!(o.audio_seconds.is_none());
    // Another codec and container: VP9 in WebM (which stores times in ms, so only the count is
    // exact) back to GIF.
    let webm = dir.join("clip.webm");
    let mut args = vec!["video", s(&clip), "-o", s(&webm)];
    args.extend(FAST);
    ok(&deepdream(&args));
    let gif = dir.join("again.gif");
    let mut args = vec!["video", s(&webm), "-o", s(&gif)];
    args.extend(FAST);
    ok(&deepdream(&args));
    assert_eq!((summarize(&webm).unwrap().frames, summarize(&gif).unwrap().frames), (12, 12));
}

#[test]
fn interrupted_render_resumes_to_the_same_frames() {
    let dir = scratch("resume");
    let example = repo().join("examples/chelsea.png");
    let common = [
        "--frames",
        "40",
        "--max-size",
        "128",
        "--frame-steps",
        "2",
        "--octaves",
        "1",
        "--steps",
        "2",
        "--jitter",
        "4",
    ];
    let full = dir.join("full");
    let mut args = vec!["zoom", s(&example), "-o", s(&full)];
    args.extend(common);
    ok(&deepdream(&args));
    // Interrupt with Ctrl-C (SIGINT) once a few frames are stored.
    let cut = dir.join("cut");
    let mut args = vec!["zoom", s(&example), "-o", s(&cut)];
    args.extend(common);
    let status = interrupt(&args, &dir.join(".cut.frames"), 2);
    let store = dir.join(".cut.frames");
    // Forty frames take seconds; the signal comes after three.
    assert_eq!(status.code(), Some(130), "the render was not interrupted");
    let partial = std::fs::read_dir(&cut).unwrap().count();
    assert!((1..40).contains(&partial), "{partial} frames after the interruption");
    args.push("--resume");
    let resumed = deepdream(&args);
    ok(&resumed);
    // The progress says where it resumes, and counts only the frames dreamed now.
    let err = String::from_utf8_lossy(&resumed.stderr);
    let line = err.lines().find(|l| l.starts_with("resuming after frame ")).unwrap_or_else(|| panic!("{err}"));
    let from: u64 = line["resuming after frame ".len()..].parse().unwrap();
    assert!(from > 0 && err.contains("frame 40/40"), "{err}");
    for i in 1..=40 {
        let name = format!("frame_{i:05}.png");
        let (a, b) =
            (image::open(full.join(&name)).unwrap().to_rgb8(), image::open(cut.join(&name)).unwrap().to_rgb8());
        assert!(a == b, "{name} differs between the resumed and the uninterrupted render");
    }
    assert!(!store.exists(), "the frame store is removed once the render is complete");
}

/// Runs `deepdream ARGS`, sends `signal` once three frames are stored in `store`, and waits.
fn interrupt(args: &[&str], store: &Path, signal: i32) -> std::process::ExitStatus {
    let mut child =
        Command::new(env!("CARGO_BIN_EXE_deepdream")).args(args).stderr(std::process::Stdio::null()).spawn().unwrap();
    let start = std::time::Instant::now();
    while std::fs::read_dir(store).map(|d| d.count()).unwrap_or(0) < 4 && start.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    unsafe { libc_kill(child.id() as i32, signal) };
    child.wait().unwrap()
}

#[test]
fn sigterm_finishes_a_playable_file_and_keeps_the_store() {
    let dir = scratch("sigterm");
    let example = repo().join("examples/chelsea.png");
    let gif = dir.join("cut.gif");
    let args = ["zoom", s(&example), "-o", s(&gif), "--frames", "40", "--max-size", "96", "--octaves", "1"];
    let status = interrupt(&args, &dir.join(".cut.gif.frames"), 15);
    assert_eq!(status.code(), Some(130), "a scheduler's SIGTERM stops the render like Ctrl-C");
    let frames = summarize(&gif).unwrap().frames;
    assert!((1..40).contains(&frames), "{frames} frames in the interrupted GIF");
    assert!(dir.join(".cut.gif.frames/ledger.json").is_file(), "the store stays for --resume");
    // A stored frame of another size, and one that does not decode (a damaged store): resume
    // renders again from the first of them, says so, and never deletes the sound frames.
    image::RgbImage::new(10, 10).save(dir.join(".cut.gif.frames/000001.png")).unwrap();
    std::fs::write(dir.join(".cut.gif.frames/000002.png"), b"not a png").unwrap();
    let mut resume = args.to_vec();
    resume.push("--resume");
    let o = deepdream(&resume);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("stored frame 2 was damaged") && err.contains("resumed after 1"), "{err}");
    assert_eq!(summarize(&gif).unwrap().frames, 40);
    assert!(!dir.join(".cut.gif.frames").exists(), "the store goes once the render is complete");
    // Interrupting a new render to the same path leaves the complete one there.
    let status = interrupt(&args, &dir.join(".cut.gif.frames"), 2);
    assert_eq!(status.code(), Some(130));
    assert_eq!(summarize(&gif).unwrap().frames, 40, "the earlier, complete render stays");
    assert!(dir.join(".cut.gif.frames/ledger.json").is_file(), "the new one can be resumed");
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

#[test]
fn bad_videos_are_clear_errors() {
    let dir = scratch("bad");
    let out = dir.join("out.mp4");
    let text = dir.join("notes.txt");
    std::fs::write(&text, "not a video").unwrap();
    let o = deepdream(&["video", s(&text), "-o", s(&out)]);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    let o = deepdream(&["video", "/no/such.mp4", "-o", s(&out)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no such file"));
    if let Some(shared) = shared() {
        let corrupt = dir.join("corrupt.mp4");
        std::fs::write(&corrupt, &std::fs::read(shared.join("media/bigbuckbunny.mp4")).unwrap()[..4000]).unwrap();
        let o = deepdream(&["video", s(&corrupt), "-o", s(&out)]);
        assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
        let bbb = shared.join("media/bigbuckbunny.mp4");
        let mut args = vec!["video", s(&bbb), "-o", s(&out), "--start", "60"];
        args.extend(FAST);
        let o = deepdream(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains("--start: starts at 60 s, past the end of") && err.contains("(5.28 s long)"), "{err}");
    }
    std::fs::remove_file(&text).unwrap();
    let left: Vec<_> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).filter(|n| n != "corrupt.mp4").collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn file_names_with_a_colon_are_files_not_protocols() {
    let dir = scratch("colon");
    let example = repo().join("examples/chelsea.png");
    let mp4 = dir.join("take1:2.mp4");
    let gif = dir.join("12:30.gif");
    let mut args = vec!["zoom", s(&example), "-o", s(&mp4), "--frames", "3", "--max-size", "64"];
    args.extend(FAST);
    ok(&deepdream(&args));
    let mut args = vec!["video", s(&mp4), "-o", s(&gif)];
    args.extend(FAST);
    ok(&deepdream(&args));
    assert_eq!((summarize(&mp4).unwrap().frames, summarize(&gif).unwrap().frames), (3, 3));
}

#[test]
fn a_second_render_to_the_same_output_is_refused() {
    let dir = scratch("lock");
    let example = repo().join("examples/chelsea.png");
    let gif = dir.join("o.gif");
    let args = ["zoom", s(&example), "-o", s(&gif), "--frames", "80", "--max-size", "96", "--octaves", "1"];
    let mut first =
        Command::new(env!("CARGO_BIN_EXE_deepdream")).args(args).stderr(std::process::Stdio::null()).spawn().unwrap();
    let start = std::time::Instant::now();
    while std::fs::read_dir(dir.join(".o.gif.frames")).map(|d| d.count()).unwrap_or(0) < 3
        && start.elapsed().as_secs() < 60
    {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let o = deepdream(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("another render is writing"), "{err}");
    assert!(first.wait().unwrap().success(), "the first render is undisturbed");
    assert_eq!(summarize(&gif).unwrap().frames, 80);
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("o.gif")], "no lock or store left behind");
}

/// Copies `src`'s video stream, packets untouched, into a `format` container, asking for time
/// base `1/time_scale` where given: how the tests make inputs the project's encoder would never
/// write.
pub fn remux(src: &Path, dst: &Path, format: &str, time_scale: Option<i32>) {
    use ffmpeg_next as ff;
    ff::init().unwrap();
    let mut ictx = ff::format::input(&src).unwrap();
    let mut octx = ff::format::output_as(&dst, format).unwrap();
    let ist = ictx.streams().best(ff::media::Type::Video).unwrap();
    let (index, in_tb) = (ist.index(), ist.time_base());
    let mut ost = octx.add_stream(ff::encoder::find(ff::codec::Id::None)).unwrap();
    ost.set_parameters(ist.parameters());
    // SAFETY: the stream's parameters were just set; the tag of one container means nothing in another.
    unsafe { (*ost.parameters().as_mut_ptr()).codec_tag = 0 };
    if let Some(scale) = time_scale {
        ost.set_time_base(ff::Rational::new(1, scale));
    }
    octx.write_header().unwrap();
    let out_tb = octx.stream(0).unwrap().time_base();
    for (stream, mut packet) in ictx.packets() {
        if stream.index() != index {
            continue;
        }
        packet.rescale_ts(in_tb, out_tb);
        packet.set_position(-1);
        packet.set_stream(0);
        packet.write_interleaved(&mut octx).unwrap();
    }
    octx.write_trailer().unwrap();
}

/// A 2 s, 12 fps, 24-frame H.264 MP4 made by the project's own encoder from a zoom.
fn two_second_clip(dir: &Path) -> PathBuf {
    let clip = dir.join("clip.mp4");
    let example = repo().join("examples/chelsea.png");
    let mut args = vec!["zoom", s(&example), "-o", s(&clip), "--frames", "24", "--max-size", "80", "--fps", "12"];
    args.extend(FAST);
    ok(&deepdream(&args));
    clip
}

#[test]
fn raw_h264_without_timestamps_keeps_its_duration() {
    let dir = scratch("rawh264");
    let clip = two_second_clip(&dir);
    let raw = dir.join("clip.h264");
    remux(&clip, &raw, "h264", None);
    let out = dir.join("out.mp4");
    let mut args = vec!["video", s(&raw), "-o", s(&out)];
    args.extend(FAST);
    ok(&deepdream(&args));
    let m = summarize(&out).unwrap();
    assert_eq!(m.frames, 24);
    assert!((m.video_seconds - 2.0).abs() < 0.1, "{m:?}");
}

#[test]
fn a_huge_time_base_keeps_every_frame() {
    let dir = scratch("hugetb");
    let clip = two_second_clip(&dir);
    let odd = dir.join("odd.nut");
    remux(&clip, &odd, "nut", Some(i32::MAX));
    let out = dir.join("out.mp4");
    let mut args = vec!["video", s(&odd), "-o", s(&out)];
    args.extend(FAST);
    ok(&deepdream(&args));
    let m = summarize(&out).unwrap();
    assert_eq!(m.frames, 24, "{m:?}");
    assert!((m.video_seconds - 2.0).abs() < 0.1, "{m:?}");
}

#[test]
fn a_stream_whose_size_changes_midway_keeps_the_first_size() {
    let dir = scratch("sizechange");
    let example = repo().join("examples/chelsea.png");
    let mut stream = Vec::new();
    for (name, size) in [("big", "80"), ("small", "56")] {
        let mp4 = dir.join(format!("{name}.mp4"));
        let mut args = vec!["zoom", s(&example), "-o", s(&mp4), "--frames", "6", "--max-size", size, "--fps", "12"];
        args.extend(FAST);
        ok(&deepdream(&args));
        let raw = dir.join(format!("{name}.h264"));
        remux(&mp4, &raw, "h264", None);
        stream.extend(std::fs::read(&raw).unwrap());
    }
    // Annex B streams concatenate: 6 frames at 80x54, then 6 at 56x38.
    let both = dir.join("both.h264");
    std::fs::write(&both, stream).unwrap();
    let out = dir.join("out.gif");
    let mut args = vec!["video", s(&both), "-o", s(&out)];
    args.extend(FAST);
    ok(&deepdream(&args));
    let m = summarize(&out).unwrap();
    assert_eq!((m.width, m.height, m.frames), (80, 54, 12), "{m:?}");
}

/// Every frame of a video at `max_size`.
fn frames(path: &Path, max_size: u32) -> Vec<image::RgbImage> {
    let mut out = Vec::new();
    let options = deepdream::source::video::VideoOptions { max_size: Some(max_size), ..Default::default() };
    deepdream::source::video::decode(path, &options, &mut |f| {
        out.push(f.image);
        true
    })
    .unwrap();
    out
}

/// Lai et al.'s warping error of `output` against `source` (x1000), with the project's own
/// flow on the source frames, and the dream strength (mean |output - source|, 0..255).
fn warping_error(source: &[image::RgbImage], output: &[image::RgbImage]) -> (f64, f64) {
    use deepdream::source::flow::{DisParams, Plane};
    use deepdream::source::motion::{motion, warp};
    assert_eq!(source.len(), output.len());
    let (w, h) = source[0].dimensions();
    let params = DisParams::for_size(w as usize, h as usize);
    let (mut e_warp, mut strength) = (0.0, 0.0);
    for t in 1..source.len() {
        let m = motion(&Plane::luma(&source[t - 1]), &Plane::luma(&source[t]), &params);
        let warped = warp(&output[t - 1], &m.back);
        let (mut sum, mut n) = (0.0, 0.0);
        for (i, (o, p)) in output[t].pixels().zip(warped.pixels()).enumerate() {
            let d: f64 = (0..3).map(|c| ((o[c] as f64 - p[c] as f64) / 255.0).powi(2)).sum();
            sum += m.mask[i] as f64 * d;
            n += m.mask[i] as f64;
        }
        e_warp += 1000.0 * sum / n.max(1.0);
        strength +=
            output[t].as_raw().iter().zip(source[t].as_raw()).map(|(&a, &b)| (a as f64 - b as f64).abs()).sum::<f64>()
                / (w * h * 3) as f64;
    }
    (e_warp / (source.len() - 1) as f64, strength / (source.len() - 1) as f64)
}

#[test]
fn flow_keeps_the_dream_on_the_moving_scene() {
    let Some(shared) = shared() else { return };
    let dir = scratch("flowvideo");
    let bbb = shared.join("media/bigbuckbunny.mp4");
    let render = |name: &str, extra: &[&str]| {
        let out = dir.join(name);
        let mut args = vec!["video", s(&bbb), "-o", s(&out), "--duration", "0.75", "--max-size", "160"];
        args.extend(["--octaves", "2", "--steps", "3", "--step", "0.03"]);
        args.extend(extra);
        ok(&deepdream(&args));
        frames(&out, 160)
    };
    let source: Vec<_> = frames(&bbb, 160).into_iter().take(19).collect();
    let (flow, blend) = (render("flow.mp4", &[]), render("blend.mp4", &["--motion", "blend", "--blend", "0.5"]));
    assert_eq!((flow.len(), blend.len()), (19, 19));
    let ((e_flow, s_flow), (e_blend, s_blend)) = (warping_error(&source, &flow), warping_error(&source, &blend));
    let (e_source, _) = warping_error(&source, &source);
    eprintln!(
        "E_warp x1e3 / strength: source {e_source:.3}, flow {e_flow:.3} / {s_flow:.1}, blend {e_blend:.3} / {s_blend:.1}"
    );
    assert!(e_flow < 0.5 * e_blend, "flow {e_flow:.3} vs blend {e_blend:.3}");
    assert!(s_flow > 0.7 * s_blend, "the dream stays as strong: {s_flow:.1} vs {s_blend:.1}");
}

#[test]
fn a_scene_cut_restarts_the_dream() {
    let dir = scratch("cut");
    let mut stream = Vec::new();
    for name in ["chelsea.png", "coffee.jpg"] {
        let mp4 = dir.join(format!("{name}.mp4"));
        let still = repo().join("examples").join(name);
        let mut args =
            vec!["zoom", s(&still), "-o", s(&mp4), "--frames", "6", "--max-size", "96", "--fps", "12", "--steps", "1"];
        args.extend(["--octaves", "1", "--step", "0.001", "--frame-steps", "0"]);
        ok(&deepdream(&args));
        let raw = dir.join(format!("{name}.h264"));
        remux(&mp4, &raw, "h264", None);
        stream.extend(std::fs::read(&raw).unwrap());
    }
    // Two shots of six frames: the seventh frame shows another picture.
    let clip = dir.join("cut.h264");
    std::fs::write(&clip, stream).unwrap();
    let out = dir.join("out.mp4");
    let mut args = vec!["video", s(&clip), "-o", s(&out), "--octaves", "2", "--steps", "4", "--step", "0.04"];
    args.extend(["--frame-octaves", "1", "--frame-steps", "1", "--frame-step", "0.005"]);
    ok(&deepdream(&args));
    let (source, output) = (frames(&clip, 96), frames(&out, 96));
    assert_eq!((source.len(), output.len()), (12, 12));
    let strength = |t: usize| {
        output[t].as_raw().iter().zip(source[t].as_raw()).map(|(&a, &b)| (a as f64 - b as f64).abs()).sum::<f64>()
            / source[t].as_raw().len() as f64
    };
    let (first, last_of_shot, cut) = (strength(0), strength(5), strength(6));
    eprintln!("mean |dream - source|: frame 1 {first:.1}, frame 6 {last_of_shot:.1}, frame 7 (the cut) {cut:.1}");
    // The first frame of the new shot gets the full dream again, not the light one.
    assert!(cut > 0.7 * first, "{cut:.1} vs {first:.1}");
}

#[test]
fn damaged_packets_are_skipped_with_a_warning() {
    let Some(shared) = shared() else { return };
    let dir = scratch("garbled");
    // Big Buck Bunny with one byte in a thousand changed: two packets no longer decode.
    let mut bytes = std::fs::read(shared.join("media/bigbuckbunny.mp4")).unwrap();
    let end = bytes.len();
    (1044..end).step_by(997).for_each(|i| bytes[i] ^= 0x5a);
    let garbled = dir.join("garbled.mp4");
    std::fs::write(&garbled, &bytes).unwrap();
    let out = dir.join("out.mp4");
    let mut args = vec!["video", s(&garbled), "-o", s(&out), "--max-size", "32", "--motion", "blend"];
    args.extend(FAST);
    let o = deepdream(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("damaged packets of") && err.contains("were skipped"), "{err}");
}
