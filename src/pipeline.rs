//! The frame pipeline, the only place that knows about threads: a decode thread (video), the
//! dream on the calling thread, and an encode thread, joined by small bounded channels (so a
//! slow stage holds the others back). Frames stay in order. One abort flag stops everything;
//! an aborted or failed render still finishes a playable file with the frames done so far and
//! keeps its frame store, so `resume` carries on where it stopped and gives the same result.

use crate::dream::{self, DreamParams, Progress, StepInfo, ZoomTransform};
use crate::model::FeatureNet;
use crate::sink::{self, FrameSink, SinkOptions};
use crate::source::{Rational, SourceInfo};
use crate::{Error, Result, io};
use crossbeam_channel::bounded;
use image::RgbImage;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Where frames come from.
pub enum Input {
    /// A still image dreamed into `frames` frames of fractal zoom at `rate` frames per second.
    Zoom { image: RgbImage, frames: u64, rate: Rational, transform: ZoomTransform },
    /// A video, every frame dreamed; `blend` mixes in the previous dreamed frame (0: none).
    #[cfg(feature = "video")]
    Video { path: PathBuf, options: crate::source::video::VideoOptions, blend: f64 },
}

pub struct RenderJob {
    pub input: Input,
    pub output: PathBuf,
    /// Dream parameters of the first frame (zoom) or of every frame (video).
    pub params: DreamParams,
    /// Dream parameters of the zoom frames after the first.
    pub frame_params: DreamParams,
    pub sink: SinkOptions,
    /// Continue an interrupted render from its frame store.
    pub resume: bool,
    /// Where the frames are dreamt.
    pub device: candle_core::Device,
}

/// Per-frame progress (the abort flag, not this, stops a render).
pub trait FrameProgress: Send {
    fn frame(&mut self, done: u64, total: Option<u64>);
}

/// How a render ended.
#[derive(Debug)]
pub struct RenderSummary {
    pub frames: u64,
    pub resumed_from: u64,
    pub aborted: bool,
    pub width: u32,
    pub height: u32,
}

/// Warps the previous dreamed frame onto the current one before blending. The identity today;
/// optical flow plugs in here.
pub trait FrameWarp: Send {
    fn warp(&mut self, previous_dream: &RgbImage, current: &RgbImage) -> RgbImage;
}

pub struct NoWarp;

impl FrameWarp for NoWarp {
    fn warp(&mut self, previous_dream: &RgbImage, _current: &RgbImage) -> RgbImage {
        previous_dream.clone()
    }
}

/// The frame store beside the output: every finished frame as PNG, and a ledger of the
/// settings and of each finished frame's timestamp.
struct Store {
    dir: PathBuf,
    fingerprint: String,
    pts: std::sync::Mutex<Vec<i64>>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Ledger {
    fingerprint: String,
    pts: Vec<i64>,
}

impl Store {
    fn new(output: &Path, fingerprint: String) -> Self {
        let name = output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Store { dir: output.with_file_name(format!(".{name}.frames")), fingerprint, pts: Default::default() }
    }

    fn frame_path(&self, i: u64) -> PathBuf {
        self.dir.join(format!("{i:06}.png"))
    }

    /// Frames already done by an interrupted render with the same settings.
    fn done(&self) -> Result<u64> {
        let text = std::fs::read_to_string(self.dir.join("ledger.json"))
            .map_err(|_| Error::usage(format!("nothing to resume: no frame store at {}", self.dir.display())))?;
        let ledger: Ledger = serde_json::from_str(&text)
            .map_err(|e| Error::usage(format!("bad ledger in {}: {e}", self.dir.display())))?;
        if ledger.fingerprint != self.fingerprint {
            return Err(Error::usage(
                "cannot resume: the settings differ from the interrupted render's; run without --resume to start over",
            ));
        }
        let done = ledger.pts.len() as u64;
        *self.pts.lock().expect("ledger lock") = ledger.pts;
        Ok(done)
    }

    fn pts(&self, i: u64) -> i64 {
        self.pts.lock().expect("ledger lock")[i as usize]
    }

    fn reset(&self) -> Result<()> {
        let _ = std::fs::remove_dir_all(&self.dir);
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::Output { path: self.dir.clone(), reason: e.to_string() })
    }

    fn save(&self, i: u64, img: &RgbImage, pts: i64) -> Result<()> {
        let err = |e: String| Error::Output { path: self.dir.clone(), reason: e };
        img.save(self.frame_path(i)).map_err(|e| err(e.to_string()))?;
        let mut all = self.pts.lock().expect("ledger lock");
        all.truncate(i as usize);
        all.push(pts);
        let ledger = serde_json::to_string(&Ledger { fingerprint: self.fingerprint.clone(), pts: all.clone() })
            .expect("serialisable");
        let tmp = self.dir.join("ledger.json.tmp");
        std::fs::write(&tmp, ledger)
            .and_then(|_| std::fs::rename(&tmp, self.dir.join("ledger.json")))
            .map_err(|e| err(e.to_string()))
    }

    fn load(&self, i: u64) -> Result<RgbImage> {
        io::load_rgb(&self.frame_path(i), None)
    }
}

/// Stops a frame's dream when the abort flag is raised.
struct AbortCheck<'a>(&'a AtomicBool);

impl Progress for AbortCheck<'_> {
    fn step(&mut self, _: &StepInfo) -> bool {
        !self.0.load(Ordering::Relaxed)
    }
}

fn dream_frame(
    net: &dyn FeatureNet,
    img: &RgbImage,
    params: &DreamParams,
    index: u64,
    abort: &AtomicBool,
    device: &candle_core::Device,
) -> Result<RgbImage> {
    let mut p = params.clone();
    p.seed = params.seed.wrapping_add(index); // per-frame jitter, reproducible on resume
    let pixels = io::to_tensor(img, device)?;
    let out = dream::dream(net, &pixels, &p, &mut AbortCheck(abort))?;
    io::to_image(&out.pixels)
}

/// Message from the dream stage to the encode stage.
struct Done {
    index: u64,
    pts: i64,
    image: RgbImage,
    fresh: bool,
}

/// Runs the render. `abort` stops it cleanly (Ctrl-C).
pub fn render(
    net: &dyn FeatureNet,
    job: &RenderJob,
    progress: &mut dyn FrameProgress,
    abort: &AtomicBool,
) -> Result<RenderSummary> {
    let info = source_info(job)?;
    let fingerprint = format!(
        "{:?}|{:?}|{:?}|{}x{}",
        job.params,
        job.frame_params,
        input_fingerprint(&job.input),
        info.width,
        info.height
    );
    let store = Store::new(&job.output, fingerprint);
    let resumed_from = if job.resume { store.done()? } else { 0 };
    let mut sink = sink::open(&job.output, info.width, info.height, info.rate, info.time_base, &job.sink)?;
    if !job.resume {
        store.reset()?;
    }
    let (to_encode, encoded) = bounded::<Done>(4);
    let (encoded_count, stage_error) = std::thread::scope(|s| {
        let store = &store;
        // Encode stage: writes frames in order, stores fresh ones for resume.
        let encoder = std::thread::Builder::new()
            .name("encode".into())
            .spawn_scoped(s, move || -> Result<(Box<dyn FrameSink>, u64)> {
                let mut n = 0;
                for d in encoded.iter() {
                    sink.write(&d.image, d.pts)?;
                    if d.fresh {
                        store.save(d.index, &d.image, d.pts)?;
                    }
                    n += 1;
                }
                Ok((sink, n))
            })
            .expect("spawn encode thread");
        let dreamed = run_source(net, job, &info, store, resumed_from, &to_encode, progress, abort, s);
        drop(to_encode);
        let encoded = encoder.join().expect("encode thread");
        // The root cause first: a dream error, else the encoder's.
        match (dreamed, encoded) {
            (Ok(_), Ok(done)) => (Some(done), None),
            (Err(e), Ok(done)) => (Some(done), Some(e)),
            (Ok(_), Err(e)) | (Err(_), Err(e)) => (None, Some(e)),
        }
    });
    let aborted = abort.load(Ordering::Relaxed);
    let Some((sink, n)) = encoded_count else { return Err(stage_error.expect("an error")) };
    if n == 0 {
        // Nothing to show: no output file at all (the sink's temporary file goes with it).
        drop(sink);
        let _ = std::fs::remove_dir_all(&store.dir);
        return Err(stage_error.unwrap_or_else(|| Error::usage("no frames were rendered")));
    }
    sink.finish()?;
    if let Some(e) = stage_error
        && !matches!(e, Error::Cancelled)
    {
        return Err(e);
    }
    if !aborted {
        let _ = std::fs::remove_dir_all(&store.dir);
    }
    Ok(RenderSummary { frames: n, resumed_from, aborted, width: info.width, height: info.height })
}

fn input_fingerprint(input: &Input) -> String {
    match input {
        Input::Zoom { image, frames, rate, transform } => {
            format!("zoom {}x{} {frames} {rate:?} {transform:?} {}", image.width(), image.height(), checksum(image))
        }
        #[cfg(feature = "video")]
        Input::Video { path, options, blend } => format!("video {} {options:?} {blend}", path.display()),
    }
}

fn checksum(img: &RgbImage) -> u64 {
    img.as_raw().iter().fold(0xcbf29ce484222325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}

fn source_info(job: &RenderJob) -> Result<SourceInfo> {
    match &job.input {
        Input::Zoom { image, frames, rate, .. } => {
            if *frames == 0 {
                return Err(Error::usage("zero frames requested"));
            }
            Ok(SourceInfo {
                width: image.width(),
                height: image.height(),
                rate: *rate,
                time_base: rate.inverse(),
                frames: Some(*frames),
                has_audio: false,
            })
        }
        #[cfg(feature = "video")]
        Input::Video { path, options, .. } => crate::source::video::probe(path, options),
    }
}

#[allow(clippy::too_many_arguments)]
fn run_source<'scope, 'env>(
    net: &dyn FeatureNet,
    job: &'env RenderJob,
    info: &SourceInfo,
    store: &'env Store,
    resumed_from: u64,
    to_encode: &crossbeam_channel::Sender<Done>,
    progress: &mut dyn FrameProgress,
    abort: &'env AtomicBool,
    scope: &'scope std::thread::Scope<'scope, 'env>,
) -> Result<u64> {
    let send = |d: Done| to_encode.send(d).map_err(|_| Error::usage("the encoder stopped"));
    // Frames an interrupted render already finished go straight to the encoder.
    for i in 0..resumed_from {
        let image = store.load(i)?;
        send(Done { index: i, pts: store.pts(i), image, fresh: false })?;
    }
    match &job.input {
        Input::Zoom { image, frames, transform, .. } => {
            let mut previous = if resumed_from > 0 { Some(store.load(resumed_from - 1)?) } else { None };
            for i in resumed_from..*frames {
                if abort.load(Ordering::Relaxed) {
                    return Err(Error::Cancelled);
                }
                let (input, params) = match &previous {
                    None => (image.clone(), &job.params),
                    Some(prev) => (transform.apply(prev), &job.frame_params),
                };
                let out = dream_frame(net, &input, params, i, abort, &job.device)?;
                send(Done { index: i, pts: i as i64, image: out.clone(), fresh: true })?;
                previous = Some(out);
                progress.frame(i + 1, Some(*frames));
            }
            Ok(*frames)
        }
        #[cfg(feature = "video")]
        Input::Video { path, options, blend } => {
            let (frames_tx, frames_rx) = bounded::<crate::source::Frame>(4);
            let decoder = std::thread::Builder::new()
                .name("decode".into())
                .spawn_scoped(scope, move || {
                    crate::source::video::decode(path, options, &mut |f| {
                        !abort.load(Ordering::Relaxed) && frames_tx.send(f).is_ok()
                    })
                })
                .expect("spawn decode thread");
            let mut previous = if resumed_from > 0 { Some(store.load(resumed_from - 1)?) } else { None };
            let mut warp = NoWarp;
            let mut result = Ok(0);
            for frame in frames_rx.iter() {
                if frame.index < resumed_from {
                    continue;
                }
                if abort.load(Ordering::Relaxed) {
                    result = Err(Error::Cancelled);
                    break;
                }
                let input = match (&previous, *blend > 0.0) {
                    (Some(prev), true) => blend_images(&frame.image, &warp.warp(prev, &frame.image), *blend),
                    _ => frame.image.clone(),
                };
                let out = match dream_frame(net, &input, &job.params, frame.index, abort, &job.device) {
                    Ok(o) => o,
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                };
                if let Err(e) = send(Done { index: frame.index, pts: frame.pts, image: out.clone(), fresh: true }) {
                    result = Err(e);
                    break;
                }
                previous = Some(out);
                progress.frame(frame.index + 1, info.frames);
                result = Ok(frame.index + 1);
            }
            drop(frames_rx);
            let decoded = decoder.join().expect("decode thread");
            match (result, decoded) {
                (Err(e), _) => Err(e),
                (Ok(_), Err(e)) => Err(e),
                (Ok(n), Ok(_)) => Ok(n),
            }
        }
    }
}

/// `(1 - w) * a + w * b`, per pixel.
pub fn blend_images(a: &RgbImage, b: &RgbImage, w: f64) -> RgbImage {
    let mut out = a.clone();
    for (o, &q) in out.iter_mut().zip(b.as_raw().iter()) {
        *o = ((1.0 - w) * *o as f64 + w * q as f64).round().clamp(0.0, 255.0) as u8;
    }
    out
}
