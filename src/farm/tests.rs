use super::*;

fn cuts_at(n: usize, at: &[usize]) -> Vec<bool> {
    (0..n).map(|i| at.contains(&i)).collect()
}

fn spans(chunks: &[Chunk]) -> Vec<(u64, u64)> {
    chunks.iter().map(|c| (c.start, c.end)).collect()
}

#[test]
fn independent_frames_cut_evenly_and_every_seam_is_exact() {
    let chunks = chunk_table(&cuts_at(250, &[100]), Temporal::None, 60, 8, 8);
    assert_eq!(spans(&chunks), [(0, 60), (60, 120), (120, 180), (180, 240), (240, 250)]);
    assert!(chunks[1..].iter().all(|c| c.seam == Seam::Independent && c.warm_start == c.start && c.fade == 0));
}

#[test]
fn video_seams_go_to_nearby_scene_cuts_else_warm_up_and_fade() {
    let chunks = chunk_table(&cuts_at(250, &[70, 200]), Temporal::Video, 60, 8, 8);
    assert_eq!(spans(&chunks), [(0, 70), (70, 130), (130, 200), (200, 250)]);
    let seams: Vec<Seam> = chunks.iter().map(|c| c.seam).collect();
    assert_eq!(seams, [Seam::First, Seam::SceneCut, Seam::Faded, Seam::SceneCut]);
    assert_eq!((chunks[2].warm_start, chunks[2].fade), (114, 8));
    assert_eq!((chunks[1].warm_start, chunks[1].fade), (70, 0));
    // A cut in the warm-up restarts the history there: exact, and less to render.
    let chunks = chunk_table(&cuts_at(60, &[12, 19]), Temporal::Video, 20, 30, 8);
    assert_eq!(spans(&chunks), [(0, 19), (19, 39), (39, 59), (59, 60)]);
    assert_eq!((chunks[2].seam, chunks[2].warm_start, chunks[2].fade), (Seam::SceneCut, 19, 0));
    // The fade never reaches back past the previous chunk, and a warm-up from frame 0 is exact.
    let chunks = chunk_table(&cuts_at(10, &[]), Temporal::Video, 3, 8, 8);
    assert_eq!(chunks[1].seam, Seam::SceneCut);
    assert!(chunks.iter().all(|c| c.fade <= 3));
}

#[test]
fn a_zoom_is_one_chunk() {
    let chunks = chunk_table(&cuts_at(500, &[]), Temporal::Zoom, 60, 8, 8);
    assert_eq!(spans(&chunks), [(0, 500)]);
}

#[test]
fn the_crossfade_keeps_the_dream_strength_level() {
    let raw = RgbImage::from_pixel(4, 1, image::Rgb([128, 128, 128]));
    let a = RgbImage::from_raw(4, 1, vec![168, 88, 168, 88, 128, 128, 128, 128, 128, 128, 128, 128]).unwrap();
    let b = RgbImage::from_raw(4, 1, vec![128, 128, 128, 128, 168, 88, 168, 88, 128, 128, 128, 128]).unwrap();
    assert_eq!(crossfade(&raw, &a, &b, 0.0), a);
    assert_eq!(crossfade(&raw, &a, &b, 1.0), b);
    let energy = |img: &RgbImage| img.as_raw().iter().map(|&v| (v as f64 - 128.0).powi(2)).sum::<f64>();
    let mid = crossfade(&raw, &a, &b, 0.5);
    assert!((energy(&mid) / energy(&a) - 1.0).abs() < 0.05, "{}", energy(&mid) / energy(&a));
    // Correlated dreams (here the same one) keep their strength too, rather than growing by
    // cos + sin = 1.41 in the middle.
    assert_eq!(crossfade(&raw, &a, &a, 0.5), a);
}

fn plan(chunks: Vec<Chunk>, frames: usize) -> Plan {
    Plan {
        format: PLAN_FORMAT,
        version: env!("CARGO_PKG_VERSION").into(),
        command: serde_json::Value::Null,
        fingerprint: String::new(),
        output: PathBuf::from("out.mp4"),
        width: 8,
        height: 8,
        rate: Rational::new(25, 1),
        time_base: Rational::new(1, 25),
        encoder: SinkOptions::default(),
        audio: None,
        loop_frames: 0,
        frames: vec![PlannedFrame { pts: 0, cut: false, crc: None }; frames],
        temporal: Temporal::Video,
        warmup: 8,
        crossfade: 8,
        chunks,
    }
}

#[test]
fn a_damaged_chunk_table_is_refused_on_reading() {
    let good = chunk_table(&cuts_at(100, &[]), Temporal::Video, 30, 8, 8);
    assert_eq!(plan(good.clone(), 100).check(), Ok(()));
    assert!(plan(good.clone(), 101).check().is_err(), "frames no chunk outputs");
    assert!(plan(Vec::new(), 100).check().is_err());
    let mut gap = good.clone();
    gap[2].start += 1;
    assert!(plan(gap, 100).check().is_err());
    let mut fade = good;
    fade[1].fade = 40;
    assert!(plan(fade, 100).check().is_err(), "a fade reaching past the warm-up");
}
