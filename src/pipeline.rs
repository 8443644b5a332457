//! The frame pipeline, the only place that knows about threads: a decode stage (the
//! [`Source`]), the dream on the calling thread, and an encode stage (the sink, opened, written
//! and finished on its own thread), joined by small bounded channels so a slow stage holds the
//! others back. Frames stay in order. The progress callback's return value stops everything:
//! an interrupted render still finishes a playable file with the frames done so far; a failed
//! one leaves no output. Both keep their frame store, so `resume` carries on where they stopped
//! and gives the same result.

use crate::device::Backend;
use crate::dream::{self, DreamParams, Progress, StepInfo};
use crate::media::FrameFormat;
use crate::model::FeatureNet;
use crate::sink::{self, SinkOptions};
use crate::source::{Frame, Source};
use crate::{Error, Result, io};
use crossbeam_channel::{Receiver, Sender, bounded};
use image::RgbImage;
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// One render: a source dreamed frame by frame into an output.
pub struct RenderJob<'a> {
    pub net: &'a dyn FeatureNet,
    pub backend: &'a Backend,
    pub source: &'a dyn Source,
    pub output: &'a Path,
    pub sink: &'a SinkOptions,
    /// Dream settings of a frame that starts afresh (the first).
    pub params: &'a DreamParams,
    /// Dream settings of a frame that continues the previous dreamed frame.
    pub frame_params: &'a DreamParams,
    /// Identifies the settings, model and input: a resume continues only the same render.
    pub fingerprint: String,
    /// Continue an interrupted render from its frame store.
    pub resume: bool,
    /// A seamless loop over this many frames (0: none): see [`Looper`].
    pub loop_frames: u64,
    /// Keyframed dream settings, applied to `params` or `frame_params` frame by frame.
    pub animation: Option<&'a crate::dream::animation::Animation>,
}

/// The settings frame `index` is dreamed with.
fn frame_settings<'p>(
    animation: Option<&crate::dream::animation::Animation>,
    index: u64,
    params: &'p DreamParams,
    continues: bool,
) -> Cow<'p, DreamParams> {
    match animation.filter(|a| !a.is_empty()) {
        Some(a) => Cow::Owned(a.params(index, params, continues)),
        None => Cow::Borrowed(params),
    }
}

/// Progress of a render. Returning `false` from either method stops it.
pub trait FrameProgress: Send {
    /// After each ascent step of a frame.
    fn step(&mut self, _info: &StepInfo) -> bool {
        true
    }
    /// After each finished frame.
    fn frame(&mut self, done: u64, total: Option<u64>) -> bool;
    /// Before frame `index` is dreamed, with the settings it is dreamed with (a render's log).
    fn dreaming(&mut self, _index: u64, _params: &DreamParams) {}
    /// Before the first frame, when a resumed render takes `frames` from its store.
    fn resumed(&mut self, _frames: u64) {}
    /// After the last frame, while the output is finished (a GIF's palette and encode happen
    /// only now).
    fn finishing(&mut self) {}
}

/// How a render ended.
#[derive(Debug)]
pub struct RenderSummary {
    pub frames: u64,
    pub resumed_from: u64,
    /// The first stored frame that was damaged (missing, unreadable, another size) and was
    /// rendered again with everything after it.
    pub damaged_from: Option<u64>,
    /// Stopped by the progress callback; the output holds the frames done so far, unless
    /// `kept_earlier` says it was left alone.
    pub interrupted: bool,
    /// Interrupted with an earlier output at the path: that output was not replaced by the
    /// partial one (the frames done are in the store for `--resume`).
    pub kept_earlier: bool,
    pub width: u32,
    pub height: u32,
}

/// The frame store beside the output: every finished frame as PNG, and a ledger of the
/// settings and of each finished frame's timestamp.
struct Store {
    dir: PathBuf,
    fingerprint: String,
    pts: std::sync::Mutex<Vec<i64>>,
    /// Set once the directory is known to be this render's store (made by [`Store::reset`] or
    /// resumed from); only then is it ever removed.
    owned: AtomicBool,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Ledger {
    fingerprint: String,
    pts: Vec<i64>,
}

impl Store {
    fn new(output: &Path, fingerprint: String) -> Self {
        Store { dir: io::beside(output, "frames"), fingerprint, pts: Default::default(), owned: AtomicBool::new(false) }
    }

    fn frame_path(&self, i: u64) -> PathBuf {
        self.dir.join(format!("{i:06}.png"))
    }

    /// Frames already done by an interrupted render with the same settings: the ledger's, up
    /// to the first stored frame that is missing, does not decode, or is not `w` x `h` (that
    /// one and all after it are rendered again; nothing is deleted here). Also returns where
    /// the damage starts, if anywhere.
    fn done(&self, (w, h): (u32, u32)) -> Result<(u64, Option<u64>)> {
        let text = std::fs::read_to_string(self.dir.join("ledger.json")).map_err(|_| {
            Error::usage(format!("--resume: nothing to resume, no frame store at {}", self.dir.display()))
        })?;
        let ledger: Ledger = serde_json::from_str(&text).map_err(|e| {
            Error::usage(format!(
                "--resume: the ledger in {} is damaged ({e}); run without --resume to start over",
                self.dir.display()
            ))
        })?;
        if ledger.fingerprint != self.fingerprint {
            return Err(Error::usage(
                "--resume: the settings, model or input differ from the interrupted render's; run without --resume to start over",
            ));
        }
        let listed = ledger.pts.len() as u64;
        let sound = (0..listed).find(|&i| !self.load(i).is_ok_and(|f| f.dimensions() == (w, h))).unwrap_or(listed);
        let mut pts = ledger.pts;
        pts.truncate(sound as usize);
        *self.pts.lock().expect("ledger lock") = pts;
        self.owned.store(true, Ordering::Release);
        Ok((sound, (sound < listed).then_some(sound)))
    }

    fn pts(&self, i: u64) -> i64 {
        self.pts.lock().expect("ledger lock")[i as usize]
    }

    /// Starts an empty store, removing an earlier render's; anything else at that path (a
    /// file, a link, a directory holding files no render wrote) is refused, not removed.
    fn reset(&self) -> Result<()> {
        let bad = |reason: String| Error::Output { path: self.dir.clone(), reason };
        match std::fs::symlink_metadata(&self.dir) {
            Err(_) => {}
            Ok(m) if m.is_dir() => {
                let entries = std::fs::read_dir(&self.dir).map_err(|e| bad(e.to_string()))?;
                for entry in entries {
                    let name = entry.map_err(|e| bad(e.to_string()))?.file_name();
                    if !Self::is_store_file(&name.to_string_lossy()) {
                        return Err(bad(format!(
                            "exists and holds {}, which no render wrote; move it away",
                            name.to_string_lossy()
                        )));
                    }
                }
                std::fs::remove_dir_all(&self.dir).map_err(|e| bad(e.to_string()))?;
            }
            Ok(_) => return Err(bad("exists and is not a frame store; move it away".into())),
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| bad(e.to_string()))?;
        self.owned.store(true, Ordering::Release);
        Ok(())
    }

    /// A name a store holds: the ledger, a frame, or one being written.
    fn is_store_file(name: &str) -> bool {
        let frame =
            |n: &str| n.strip_suffix(".png").is_some_and(|d| d.len() >= 6 && d.bytes().all(|b| b.is_ascii_digit()));
        name == "ledger.json" || frame(name) || (name.starts_with('.') && name.ends_with(".tmp"))
    }

    fn save(&self, i: u64, img: &RgbImage, pts: i64) -> Result<()> {
        let err = |e: String| Error::Write { path: self.dir.clone(), reason: e };
        let path = self.frame_path(i);
        io::write_atomic(&path, |tmp| {
            io::write_png_fast(img, tmp).map_err(|e| match e {
                Error::Write { reason, .. } => Error::Write { path: path.clone(), reason },
                e => e,
            })
        })?;
        let mut all = self.pts.lock().expect("ledger lock");
        all.truncate(i as usize);
        all.push(pts);
        let ledger = Ledger { fingerprint: self.fingerprint.clone(), pts: all.clone() };
        let text = serde_json::to_string(&ledger).map_err(|e| Error::internal(e.to_string()))?;
        io::write_atomic(&self.dir.join("ledger.json"), |tmp| std::fs::write(tmp, text).map_err(|e| err(e.to_string())))
    }

    fn load(&self, i: u64) -> Result<RgbImage> {
        io::load_rgb(&self.frame_path(i), None)
    }

    fn remove(&self) {
        if self.owned.load(Ordering::Acquire) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// A write error (a full disk, say) of a render whose finished frames stay in the store,
    /// told where they are and how to continue, in the same line.
    fn explain(&self, e: Error) -> Error {
        match e {
            Error::Write { path, reason } if self.dir.join("ledger.json").is_file() => Error::Write {
                path,
                reason: format!(
                    "{reason}; the frames finished so far are kept in {}: run again with --resume",
                    self.dir.display()
                ),
            },
            e => e,
        }
    }

    /// Removes the store when it holds no finished frame (the ledger is written with each).
    fn remove_if_empty(&self) {
        if !self.dir.join("ledger.json").exists() {
            self.remove();
        }
    }
}

/// One render per output at a time: two would share one frame store. An advisory lock on
/// `.NAME.lock` beside the output, released (and the file removed) when the render ends; the
/// system releases it if the process dies.
struct RenderLock {
    path: PathBuf,
    _file: std::fs::File,
}

impl RenderLock {
    fn take(output: &Path) -> Result<RenderLock> {
        use std::io::Write as _;
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let path = io::beside(output, "lock");
        let bad = |reason: String| Error::Output { path: path.clone(), reason };
        // A render that ends removes its lock file; one that opened the file just before may
        // then hold a lock on a file no longer there. Locking is retried until the locked file
        // is the one at the path.
        for _ in 0..8 {
            // Never through a link (O_NOFOLLOW: a planted one would have the render truncate
            // its target), and never over someone's file: an empty file or a process id.
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .map_err(|e| match e.raw_os_error() {
                    Some(libc::ELOOP) => bad("is a symbolic link; deepdream does not follow it (remove it)".into()),
                    _ => bad(e.to_string()),
                })?;
            let meta = file.metadata().map_err(|e| bad(e.to_string()))?;
            if !meta.is_file() || !Self::is_ours(&path) {
                return Err(bad("exists and is not a deepdream lock (move it away)".into()));
            }
            match file.try_lock() {
                Ok(()) => {
                    let same =
                        std::fs::symlink_metadata(&path).is_ok_and(|m| (m.dev(), m.ino()) == (meta.dev(), meta.ino()));
                    if !same {
                        continue;
                    }
                    // Ours now: say whose it is.
                    let _ = file.set_len(0).and_then(|()| write!(file, "{}", std::process::id()));
                    return Ok(RenderLock { path, _file: file });
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(Error::usage(format!(
                        "-o: another render is writing {} right now; wait for it or choose another output",
                        output.display()
                    )));
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(bad(e.to_string())),
            }
        }
        Err(bad("could not be locked: other renders keep replacing it".into()))
    }

    /// Whether the file at `path` looks like a lock deepdream left: empty or a process id.
    fn is_ours(path: &Path) -> bool {
        std::fs::read(path).is_ok_and(|b| b.len() <= 20 && b.iter().all(u8::is_ascii_digit))
    }
}

impl Drop for RenderLock {
    fn drop(&mut self) {
        if Self::is_ours(&self.path) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Message from the dream stage to the encode stage.
struct Done {
    index: u64,
    pts: i64,
    image: RgbImage,
    fresh: bool,
}

/// Runs the render: the encode stage opens the output first; only then do the decode stage
/// and the dream start. Both stages are created and joined here.
pub fn render(job: &RenderJob, progress: &mut dyn FrameProgress) -> Result<RenderSummary> {
    let info = job.source.info().clone();
    let store = Store::new(job.output, job.fingerprint.clone());
    let _lock = RenderLock::take(job.output)?;
    let (resumed_from, damaged_from) = if job.resume { store.done((info.width, info.height))? } else { (0, None) };
    let audio = job.source.audio();
    let format = FrameFormat { width: info.width, height: info.height, rate: info.rate, time_base: info.time_base };
    let keep = AtomicBool::new(true);
    let earlier = std::fs::symlink_metadata(job.output).is_ok();
    let (dreamed, encoded) = std::thread::scope(|s| {
        let (ready_tx, ready_rx) = bounded::<bool>(1);
        let (to_encode, from_dream) = bounded::<Done>(4);
        let (store, audio, format) = (&store, audio.as_ref(), &format);
        let keep = &keep;
        let encoder = spawn(s, "encode", move || {
            let sink = sink::open(job.output, format, job.sink, audio);
            let _ = ready_tx.send(sink.is_ok());
            encode_stage(sink?, format, from_dream, store, keep, job.loop_frames, info.frames)
        });
        let encoder = match encoder {
            Ok(encoder) => encoder,
            Err(e) => return (Err(e), Ok(0)),
        };
        // Nothing is decoded or dreamed until the output is known to open.
        let ready = ready_rx.recv().unwrap_or(false);
        let mut dreamed = if ready && !job.resume { store.reset() } else { Ok(()) };
        if ready && dreamed.is_ok() {
            let (frames_tx, frames_rx) = bounded::<Frame>(4);
            let source = job.source;
            dreamed = spawn(s, "decode", move || source.decode(resumed_from, &mut |f| frames_tx.send(f).is_ok()))
                .and_then(|decoder| {
                    let _ops = job.backend.enter();
                    let dreamed = dream_frames(job, store, resumed_from, &frames_rx, &to_encode, progress);
                    drop(frames_rx); // a decoder waiting to hand over a frame stops
                    dreamed.and(joined(decoder.join(), "decode"))
                });
        }
        // A failed render leaves no output (its frames stay in the store); a finished or
        // interrupted one gets a playable file. Set before the channel closes, read after.
        // An interrupted render does not replace an earlier output with its partial one.
        let finish = match &dreamed {
            Ok(()) => true,
            Err(Error::Cancelled) => !earlier,
            Err(_) => false,
        };
        keep.store(finish, Ordering::Release);
        drop(to_encode);
        if finish {
            progress.finishing();
        }
        (dreamed, joined(encoder.join(), "encode"))
    });
    // The root cause first: the encoder's error (the dream then only saw a closed channel),
    // else the dream's. A render that stored nothing leaves no store behind.
    let frames = encoded.map_err(|e| {
        store.remove_if_empty();
        store.explain(e)
    })?;
    if frames == 0 {
        store.remove();
    }
    let summary = |interrupted| RenderSummary {
        frames,
        resumed_from,
        damaged_from,
        interrupted,
        kept_earlier: interrupted && earlier,
        width: info.width,
        height: info.height,
    };
    match dreamed {
        Err(Error::Cancelled) if frames > 0 => Ok(summary(true)),
        Err(e) => Err(store.explain(e)),
        Ok(()) if frames == 0 => Err(Error::usage("the input has no frames to render in the requested range")),
        Ok(()) => {
            store.remove();
            Ok(summary(false))
        }
    }
}

/// Starts a named stage thread in `scope`.
fn spawn<'scope, 'env, T: Send + 'scope>(
    scope: &'scope std::thread::Scope<'scope, 'env>,
    name: &str,
    f: impl FnOnce() -> Result<T> + Send + 'scope,
) -> Result<std::thread::ScopedJoinHandle<'scope, Result<T>>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn_scoped(scope, f)
        .map_err(|e| Error::internal(format!("cannot start the {name} stage: {e}")))
}

/// Writes frames in order and stores fresh ones for resume; finishes the output when it holds
/// at least one frame and `keep` says so, else leaves nothing.
fn encode_stage(
    mut sink: Box<dyn sink::FrameSink>,
    format: &FrameFormat,
    from_dream: Receiver<Done>,
    store: &Store,
    keep: &AtomicBool,
    loop_frames: u64,
    total: Option<u64>,
) -> Result<u64> {
    let mut n = 0;
    let mut looper = Looper::new(loop_frames, total);
    let mut trace = Trace::new("encode stage", &["wait for a frame", "output", "frame store"]);
    let mut clock = std::time::Instant::now();
    for d in from_dream.iter() {
        trace.add(0, &mut clock);
        if d.image.dimensions() != (format.width, format.height) {
            let (w, h) = d.image.dimensions();
            return Err(Error::Output {
                path: store.dir.clone(),
                reason: format!(
                    "frame {} is {w}x{h}, the render {}x{}: a damaged frame store; run without --resume",
                    d.index + 1,
                    format.width,
                    format.height
                ),
            });
        }
        // The output first: a failed write names the output, not the store.
        if let Some((image, pts)) = looper.next(d.index, &d.image, d.pts) {
            sink.write(&image, pts)?;
            n += 1;
        }
        trace.add(1, &mut clock);
        if d.fresh {
            store.save(d.index, &d.image, d.pts)?;
        }
        trace.add(2, &mut clock);
    }
    if n > 0 && keep.load(Ordering::Acquire) {
        sink.finish()?;
    }
    Ok(n)
}

/// With `DEEPDREAM_TRACE=1`, a stage's time per frame by phase, printed to stderr when the
/// stage ends: where a render's time goes (on a GPU, what keeps it waiting).
pub(crate) struct Trace {
    stage: &'static str,
    phases: &'static [&'static str],
    secs: Vec<f64>,
    frames: u64,
    on: bool,
}

impl Trace {
    pub(crate) fn new(stage: &'static str, phases: &'static [&'static str]) -> Trace {
        let on = std::env::var("DEEPDREAM_TRACE").is_ok_and(|v| v.trim() == "1");
        Trace { stage, phases, secs: vec![0.0; phases.len()], frames: 0, on }
    }

    /// Adds the time since `clock` to `phase` and restarts the clock.
    pub(crate) fn add(&mut self, phase: usize, clock: &mut std::time::Instant) {
        let now = std::time::Instant::now();
        self.secs[phase] += now.duration_since(*clock).as_secs_f64();
        self.frames += (phase == 0) as u64;
        *clock = now;
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        if self.on && self.frames > 0 {
            let n = self.frames as f64;
            let parts: Vec<String> =
                self.phases.iter().zip(&self.secs).map(|(p, s)| format!("{p} {:.1} ms", s / n * 1e3)).collect();
            eprintln!("trace: {} per frame ({} frames): {}", self.stage, self.frames, parts.join(", "));
        }
    }
}

/// A seamless loop of a render of L + N frames into L: the first N frames are held back, the
/// output starts at frame N, and its last N frames cross-fade into the held ones, so the
/// last output frame leads into the first as any frame leads into the next. Output frame k
/// takes the timestamp of rendered frame k.
///
/// The last output frame is a third of the way from the last held frame to the first output
/// frame: a zoom's steps shrink as its dream settles, so the step from the last held frame
/// into the first output frame, an early one, would be larger than nearly every step the
/// loop shows; a third of the way on, the loop point is a smaller step than most inside it,
/// and the step into that frame not much larger than the largest.
struct Looper {
    frames: u64,
    total: Option<u64>,
    head: std::collections::VecDeque<RgbImage>,
    pts: std::collections::VecDeque<i64>,
    first: Option<RgbImage>,
}

impl Looper {
    /// A loop over `frames` of a render of `total` frames (where the tail starts).
    fn new(frames: u64, total: Option<u64>) -> Looper {
        Looper { frames, total, head: Default::default(), pts: Default::default(), first: None }
    }

    /// The output frame rendered frame `index` gives, if any.
    fn next<'i>(&mut self, index: u64, image: &'i RgbImage, pts: i64) -> Option<(Cow<'i, RgbImage>, i64)> {
        if self.frames == 0 {
            return Some((Cow::Borrowed(image), pts));
        }
        self.pts.push_back(pts);
        let n = self.frames;
        if index < n {
            self.head.push_back(image.clone());
            return None;
        }
        let pts = self.pts.pop_front().expect("one timestamp per frame");
        if index == n {
            self.first = Some(image.clone());
        }
        let tail_start = self.total.map_or(u64::MAX, |t| t - n);
        if index < tail_start {
            return Some((Cow::Borrowed(image), pts));
        }
        // Tail frame i of n fades into head frame i with weight (i + 1) / n; the last is a
        // third of the way from the last head frame to the first output frame.
        let i = index - tail_start;
        let head = self.head.pop_front().expect("a head frame per tail frame");
        let (from, w) = match (i + 1 == n, &self.first) {
            (true, Some(first)) => (first, 2.0 / 3.0),
            _ => (image, (i + 1) as f32 / n as f32),
        };
        let mut out = from.clone();
        for (o, h) in out.iter_mut().zip(head.iter()) {
            *o = ((1.0 - w) * *o as f32 + w * *h as f32).round() as u8;
        }
        Some((Cow::Owned(out), pts))
    }
}

/// A stage's result, or its panic as an error.
fn joined<T>(r: std::thread::Result<Result<T>>, stage: &str) -> Result<T> {
    r.unwrap_or_else(|panic| {
        let msg = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(Error::internal(format!("the {stage} stage panicked: {msg}")))
    })
}

fn dream_frames(
    job: &RenderJob,
    store: &Store,
    resumed_from: u64,
    frames: &Receiver<Frame>,
    to_encode: &Sender<Done>,
    progress: &mut dyn FrameProgress,
) -> Result<()> {
    let send = |d: Done| to_encode.send(d).map_err(|_| Error::internal("the encode stage stopped"));
    if resumed_from > 0 {
        progress.resumed(resumed_from);
    }
    // Frames an interrupted render already finished go straight to the encoder.
    for i in 0..resumed_from {
        send(Done { index: i, pts: store.pts(i), image: store.load(i)?, fresh: false })?;
    }
    let mut previous = if resumed_from > 0 { Some(store.load(resumed_from - 1)?) } else { None };
    let total = job.source.info().frames;
    let mut trace =
        Trace::new("dream stage", &["wait for a frame", "transform", "upload", "dream", "download", "hand to encoder"]);
    let mut clock = std::time::Instant::now();
    for frame in frames.iter() {
        trace.add(0, &mut clock);
        if frame.index < resumed_from {
            continue;
        }
        let (index, pts) = (frame.index, frame.pts);
        let input = job.source.dream_input(frame, previous.as_ref());
        trace.add(1, &mut clock);
        let params = if input.continues { job.frame_params } else { job.params };
        let params = frame_settings(job.animation, index, params, input.continues);
        progress.dreaming(index, &params);
        let image =
            dream_frame((job.net, job.backend), &input.image, &params, index, progress, (&mut trace, &mut clock))?;
        send(Done { index, pts, image: image.clone(), fresh: true })?;
        trace.add(5, &mut clock);
        previous = Some(image);
        if !progress.frame(index + 1, total) {
            return Err(Error::Cancelled);
        }
    }
    Ok(())
}

/// Passes a frame's ascent steps to the render's progress.
struct Steps<'a>(&'a mut dyn FrameProgress);

impl Progress for Steps<'_> {
    fn step(&mut self, info: &StepInfo) -> bool {
        self.0.step(info)
    }
}

fn dream_frame(
    (net, backend): (&dyn FeatureNet, &Backend),
    img: &RgbImage,
    params: &DreamParams,
    index: u64,
    progress: &mut dyn FrameProgress,
    (trace, clock): (&mut Trace, &mut std::time::Instant),
) -> Result<RgbImage> {
    let mut p = params.clone();
    p.seed = params.seed.wrapping_add(index); // per-frame jitter, reproducible on resume
    let pixels = io::to_tensor(img, &backend.device)?;
    trace.add(2, clock);
    let out = dream::dream(net, &pixels, &p, &mut Steps(progress))?;
    trace.add(3, clock);
    let image = io::to_image(&out.pixels);
    trace.add(4, clock);
    image
}

/// One chunk of a farm render: the source's frames `range` (indices in the whole render, which
/// seed their jitter, so each frame equals the one-machine render's), dreamed in order.
pub struct ChunkJob<'a> {
    pub net: &'a dyn FeatureNet,
    pub backend: &'a Backend,
    pub source: &'a dyn Source,
    pub params: &'a DreamParams,
    pub frame_params: &'a DreamParams,
    pub range: std::ops::Range<u64>,
    /// The dreamed frame before `range.start`, when the chunk resumes after it; none when the
    /// chunk starts cold.
    pub previous: Option<RgbImage>,
    /// Keyframed dream settings, as [`RenderJob::animation`].
    pub animation: Option<&'a crate::dream::animation::Animation>,
}

/// A chunk's frame as it leaves the dream: its index and what the source said of it (its
/// timestamp, whether it starts a shot), the dreamed pixels and the source's.
pub struct ChunkFrame<'a> {
    pub index: u64,
    pub pts: i64,
    pub cut: bool,
    pub dreamed: &'a RgbImage,
    pub raw: &'a RgbImage,
}

/// Renders a chunk: the source decodes on its own stage while the frames are dreamed here;
/// each dreamed frame goes to `save`, in order. Returns the frames dreamed;
/// `Error::Cancelled` when the progress stops it (what was saved stays).
pub fn render_chunk(
    job: &ChunkJob,
    save: &mut dyn FnMut(ChunkFrame) -> Result<()>,
    progress: &mut dyn FrameProgress,
) -> Result<u64> {
    let range = job.range.clone();
    std::thread::scope(|s| {
        let (frames_tx, frames_rx) = bounded::<Frame>(4);
        let source = job.source;
        let end = range.end;
        let decoder = spawn(s, "decode", move || {
            source.decode(range.start, &mut |f| f.index < end && frames_tx.send(f).is_ok())
        })?;
        let _ops = job.backend.enter();
        let mut dream = || -> Result<u64> {
            let mut previous = job.previous.clone();
            let mut trace =
                Trace::new("dream stage", &["wait for a frame", "transform", "upload", "dream", "download", "store"]);
            let mut clock = std::time::Instant::now();
            let mut done = 0;
            for frame in frames_rx.iter() {
                trace.add(0, &mut clock);
                if frame.index < range.start {
                    continue;
                }
                let (index, pts, cut, raw) = (frame.index, frame.pts, frame.cut, frame.image.clone());
                let input = job.source.dream_input(frame, previous.as_ref());
                trace.add(1, &mut clock);
                let params = if input.continues { job.frame_params } else { job.params };
                let params = frame_settings(job.animation, index, params, input.continues);
                progress.dreaming(index, &params);
                let image = dream_frame(
                    (job.net, job.backend),
                    &input.image,
                    &params,
                    index,
                    progress,
                    (&mut trace, &mut clock),
                )?;
                save(ChunkFrame { index, pts, cut, dreamed: &image, raw: &raw })?;
                trace.add(5, &mut clock);
                previous = Some(image);
                done += 1;
                if !progress.frame(done, Some(range.end - range.start)) {
                    return Err(Error::Cancelled);
                }
            }
            Ok(done)
        };
        let dreamed = dream();
        drop(frames_rx); // a decoder waiting to hand over a frame stops
        let decoded = joined(decoder.join(), "decode");
        let done = dreamed?;
        decoded?;
        if done < range.end - range.start {
            return Err(Error::Usage(format!(
                "the input has {} frames here, fewer than the plan's {}: it decodes differently on this machine",
                range.start + done,
                range.end
            )));
        }
        Ok(done)
    })
}

/// Frames already dreamed, encoded into an output: a farm's merge.
pub struct EncodeJob<'a> {
    pub output: &'a Path,
    pub format: FrameFormat,
    pub sink: &'a SinkOptions,
    pub audio: Option<crate::media::AudioSource>,
    /// Frames to encode (a loop's fade beyond the output's included).
    pub frames: u64,
    /// A seamless loop over this many frames (0: none): see [`Looper`].
    pub loop_frames: u64,
}

/// Encodes frame `i` = `make(i)` (its pixels and timestamp) for every frame, in order, into the
/// output: the frames are made on a stage of their own while the encoder works here. The
/// output appears complete or not at all. Returns the frames written.
pub fn encode(
    job: &EncodeJob,
    make: &(dyn Fn(u64) -> Result<(RgbImage, i64)> + Sync),
    progress: &mut dyn FnMut(u64) -> bool,
) -> Result<u64> {
    let mut sink = sink::open(job.output, &job.format, job.sink, job.audio.as_ref())?;
    std::thread::scope(|s| {
        let (tx, rx) = bounded::<Result<(RgbImage, i64)>>(8);
        let frames = job.frames;
        let reader = spawn(s, "read", move || {
            for i in 0..frames {
                let frame = make(i);
                let failed = frame.is_err();
                if tx.send(frame).is_err() || failed {
                    break;
                }
            }
            Ok(())
        })?;
        let mut written = || -> Result<u64> {
            let mut looper = Looper::new(job.loop_frames, Some(job.frames));
            let (mut n, (w, h)) = (0, (job.format.width, job.format.height));
            for (i, frame) in rx.iter().enumerate() {
                let (image, pts) = frame?;
                if image.dimensions() != (w, h) {
                    return Err(Error::internal(format!("frame {} is not {w}x{h}", i + 1)));
                }
                if let Some((image, pts)) = looper.next(i as u64, &image, pts) {
                    sink.write(&image, pts)?;
                    n += 1;
                }
                if !progress(i as u64 + 1) {
                    return Err(Error::Cancelled);
                }
            }
            Ok(n)
        };
        let written = written();
        drop(rx);
        joined(reader.join(), "read")?;
        written
    })
    .and_then(|n| {
        sink.finish()?;
        Ok(n)
    })
}
