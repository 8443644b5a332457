//! First contact: what a new user meets beyond the dream itself. Output options, warnings
//! for flags that do nothing, the plan and estimate before long work, progress without a
//! terminal, octave counts fitted to the picture.

use crate::util::{deepdream, repo, scratch};
use image::ImageDecoder;
use std::path::Path;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A minimal little-endian EXIF (TIFF) block: IFD0 with one entry, Orientation.
fn exif_with_orientation(orientation: u16) -> Vec<u8> {
    let mut e = b"II*\0".to_vec();
    e.extend(8u32.to_le_bytes()); // IFD0 at 8
    e.extend(1u16.to_le_bytes()); // one entry
    e.extend(0x0112u16.to_le_bytes()); // Orientation
    e.extend(3u16.to_le_bytes()); // SHORT
    e.extend(1u32.to_le_bytes());
    e.extend(orientation.to_le_bytes());
    e.extend([0, 0]);
    e.extend(0u32.to_le_bytes()); // no next IFD
    e
}

#[test]
fn a_jpeg_keeps_its_profile_and_exif_upright_at_the_quality_asked() {
    let dir = scratch("jpeg-meta");
    // A sideways phone photo: the pixels stored turned, EXIF orientation 6 (turn 90 clockwise).
    let photo = image::open(repo().join("examples/chelsea.png")).unwrap().to_rgb8();
    let photo = image::imageops::resize(&photo, 90, 60, image::imageops::FilterType::Triangle);
    // Not a real profile, but an RGB one by its header, kept byte for byte.
    let mut icc = vec![7u8; 132];
    icc[16..20].copy_from_slice(b"RGB ");
    icc[36..40].copy_from_slice(b"acsp");
    let mut bytes = Vec::new();
    {
        use image::ImageEncoder;
        let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 95);
        enc.set_icc_profile(icc.clone()).unwrap();
        enc.set_exif_metadata(exif_with_orientation(6)).unwrap();
        enc.write_image(photo.as_raw(), 90, 60, image::ExtendedColorType::Rgb8).unwrap();
    }
    let input = dir.join("phone.jpg");
    std::fs::write(&input, bytes).unwrap();
    let quick = ["--octaves", "1", "--steps", "2"];
    let run = |out: &Path, extra: &[&str]| {
        let o = deepdream(&[&["dream", s(&input), "-o", s(out)][..], &quick, extra].concat());
        assert!(o.status.success(), "{}", stderr(&o));
        o
    };
    let (good, small) = (dir.join("q95.jpg"), dir.join("q40.jpg"));
    run(&good, &[]);
    run(&small, &["--quality", "40"]);
    let mut dec = image::codecs::jpeg::JpegDecoder::new(std::io::Cursor::new(std::fs::read(&good).unwrap())).unwrap();
    assert_eq!(dec.dimensions(), (60, 90), "turned upright");
    assert_eq!(dec.icc_profile().unwrap(), Some(icc));
    let exif = dec.exif_metadata().unwrap().expect("EXIF kept");
    assert_eq!(image::metadata::Orientation::from_exif_chunk(&exif), Some(image::metadata::Orientation::NoTransforms));
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    assert!(size(&small) * 3 < size(&good) * 2, "quality 40: {} bytes, 95: {}", size(&small), size(&good));
    // A PNG keeps the profile too; --quality on it is a warning, not silence.
    let png = dir.join("out.png");
    let o = run(&png, &["--quality", "40"]);
    assert!(stderr(&o).contains("warning: --quality 40 applies to JPEG output only"), "{}", stderr(&o));
    let mut dec =
        image::codecs::png::PngDecoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap())).unwrap();
    assert!(dec.icc_profile().unwrap().is_some());
    let o = deepdream(&["dream", s(&input), "-o", s(&dir.join("x.jpg")), "--quality", "0"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--quality"), "{}", stderr(&o));
}

#[test]
fn flags_an_output_ignores_are_warned_of() {
    let dir = scratch("ignored-flags");
    let example = repo().join("examples/chelsea.png");
    let frames = dir.join("frames");
    let o = deepdream(&[
        "zoom",
        s(&example),
        "-o",
        s(&frames),
        "--frames",
        "2",
        "--max-size",
        "64",
        "--octaves",
        "1",
        "--steps",
        "1",
        "--crf",
        "30",
        "--x264-preset",
        "slow",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("warning: --crf does nothing for PNG frames"), "{err}");
    assert!(err.contains("warning: --x264-preset does nothing for PNG frames"), "{err}");
    // A seed with nothing random, a class mode with no class.
    let o = deepdream(&[
        "dream",
        s(&example),
        "-o",
        s(&dir.join("d.png")),
        "--max-size",
        "64",
        "--steps",
        "1",
        "--layers",
        "block3",
        "--jitter",
        "0",
        "--seed",
        "7",
        "--class-mode",
        "logits",
    ]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("warning: --seed does nothing without --jitter"), "{err}");
    assert!(err.contains("warning: --class-mode does nothing without --class"), "{err}");
}

#[test]
fn a_render_says_what_it_will_do_and_reports_at_a_readable_pace() {
    let dir = scratch("plan");
    let example = repo().join("examples/chelsea.png");
    // Without a terminal: the plan first, a line for the first frame, then at most one every
    // couple of seconds and the last; a 12-frame zoom of quick frames prints a few, not 12.
    let o = deepdream(&["zoom", s(&example), "-o", s(&dir.join("z")), "--frames", "12", "--max-size", "96"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    let lines: Vec<&str> = err.lines().collect();
    assert!(lines[0].starts_with("zoom: 12 frames of 96x64 on efficientnet-lite0: the first 3 octaves x 10 steps, then 1 octave x 2 steps a frame"), "{err}");
    let frame_lines: Vec<_> = lines.iter().filter(|l| l.starts_with("frame ")).collect();
    assert!(frame_lines.first().is_some_and(|l| l.starts_with("frame 1/12")), "{err}");
    assert!(frame_lines.last().is_some_and(|l| l.starts_with("frame 12/12") && l.contains("ETA 0 s")), "{err}");
    assert!(frame_lines.len() < 12, "a line per frame: {err}");
    assert!(lines.iter().any(|l| l.starts_with("finishing the output")), "{err}");
}

#[test]
fn a_large_photo_gets_more_octaves_and_an_estimate() {
    let dir = scratch("octaves");
    let big = dir.join("big.png");
    let photo = image::open(repo().join("examples/chelsea.png")).unwrap().to_rgb8();
    image::imageops::resize(&photo, 1000, 667, image::imageops::FilterType::Triangle).save(&big).unwrap();
    // The recipe's 3 octaves become 4 at 1000 px; one step an octave is short work, which
    // starts without an announcement.
    let o = deepdream(&["dream", s(&big), "-o", s(&dir.join("o.png")), "--steps", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("1000x667: 4 octaves instead of the recipe's 3"), "{err}");
    assert!(!err.contains("dreaming"), "{err}");
    // Longer work is announced with a measured estimate (a bound: max_loss may stop early).
    let o = deepdream(&["dream", s(&big), "-o", s(&dir.join("o.png")), "--steps", "4"]);
    let err = stderr(&o);
    assert!(err.contains("dreaming 1000x667 on efficientnet-lite0: 4 octaves x 4 steps; at most about"), "{err}");
    // Given on the command line, the count is exact.
    let o = deepdream(&["dream", s(&big), "-o", s(&dir.join("o.png")), "--steps", "1", "--octaves", "2"]);
    assert!(!stderr(&o).contains("octaves instead"), "{}", stderr(&o));
}
