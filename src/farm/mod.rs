//! Render farms: one render cut into chunks that an existing engine (Slurm job arrays, GNU
//! parallel, Kubernetes Indexed Jobs) runs anywhere, then merged into the file a one-machine
//! render gives. There is no scheduler, daemon or protocol here: the engine schedules; the
//! renderer plans, renders a chunk, and merges. All shared state is a directory beside the
//! output (one POSIX path on every worker; renames within a directory atomic):
//!
//! ```text
//! .OUT.farm/plan.json           the settings, the frame table, the chunk table (read-only)
//! .OUT.farm/chunk-0003/         chunk 3's dreamed frames, NNNNNN.png by frame index, and the
//!                               source frames of its cross-fade, raw-NNNNNN.png
//! .OUT.farm/chunk-0003.done     written last, by rename: the chunk is complete
//! ```
//!
//! Every frame is written to a name unique to its writer (host, process, time) and renamed
//! into place, so two workers on one chunk (Kubernetes may start a second pod for an index)
//! write the same deterministic bytes harmlessly, and a killed worker leaves only whole frames.
//!
//! A video frame continues the previous dreamed frame (blending, or the flow warp), so a
//! chunk started cold differs from the sequential render for ever. Seams are therefore cut
//! at scene changes (where the one-machine render restarts its history too: exact), or the
//! chunk starts `warmup` + `crossfade` frames early and the merge cross-fades the previous
//! chunk's last `crossfade` frames into its frames on the dream residual, with equal-power
//! weights ([`crossfade`]). A zoom is strictly sequential: one chunk.

pub mod source;

use crate::media::{AudioSource, FrameFormat, Rational};
use crate::sink::SinkOptions;
use crate::{Error, Result, io};
use image::RgbImage;
use std::path::{Path, PathBuf};

/// The plan's format; a plan of another is refused.
pub const PLAN_FORMAT: u32 = 1;

/// Defaults: frames per chunk, frames of warm-up, frames of cross-fade.
pub const DEFAULT_CHUNK_FRAMES: u64 = 120;
pub const DEFAULT_WARMUP: u64 = 8;
/// The flow warp carries 99% of the dream on: a chunk's cold-started dream needs longer to
/// grow as strong (measured on Big Buck Bunny at 192 px: 1.3 dB weaker after 8 frames, 0.7
/// after 24, where the one-machine render itself changes 0.6 dB over those frames).
pub const DEFAULT_FLOW_WARMUP: u64 = 24;
pub const DEFAULT_CROSSFADE: u64 = 8;

/// A render cut into chunks: everything a worker and the merge need.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Plan {
    pub format: u32,
    /// The deepdream version that planned: workers must run the same one.
    pub version: String,
    /// The command's flags, paths made absolute: a worker rebuilds the job from them.
    pub command: serde_json::Value,
    /// The job's fingerprint (settings, model weights, input by content; not the device).
    pub fingerprint: String,
    pub output: PathBuf,
    pub width: u32,
    pub height: u32,
    pub rate: Rational,
    pub time_base: Rational,
    pub encoder: SinkOptions,
    /// Audio to carry into the output: the input, from `start` for `duration` seconds.
    pub audio: Option<PlannedAudio>,
    /// Frames dreamed (a zoom loop's fade included) and frames of the output fade (0: none).
    pub loop_frames: u64,
    /// Each frame's timestamp, and whether it starts a new shot.
    pub frames: Vec<PlannedFrame>,
    /// Whether a frame depends on the previous dreamed frame, and if not why the chunks are
    /// exact.
    pub temporal: Temporal,
    pub warmup: u64,
    pub crossfade: u64,
    pub chunks: Vec<Chunk>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct PlannedAudio {
    pub path: PathBuf,
    pub start: f64,
    pub duration: Option<f64>,
}

/// A frame as the plan decoded it: its timestamp, whether it starts a new shot, and a CRC-32
/// of its pixels (none for a zoom's frames, which are made, not decoded).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PlannedFrame {
    pub pts: i64,
    pub cut: bool,
    pub crc: Option<u32>,
}

/// How frames depend on earlier dreamed frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Temporal {
    /// Every frame is dreamed from its source frame alone: every seam is exact.
    None,
    /// Each frame continues the previous dreamed frame (blend or flow).
    Video,
    /// A zoom: each frame is made from the previous dreamed frame; one chunk.
    Zoom,
}

/// How a chunk joins the one before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Seam {
    /// The first chunk.
    First,
    /// No frame depends on an earlier one: bit-identical to one machine.
    Independent,
    /// The chunk starts at a scene cut (or its warm-up passes one): the history restarts
    /// there in the one-machine render too, so the seam is exact.
    SceneCut,
    /// Warmed up and cross-faded: close to the one-machine render, not equal.
    Faded,
}

/// A chunk: it outputs frames `start..end` and dreams `warm_start..end`; the merge fades the
/// previous chunk's frames `start - fade..start` into this chunk's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Chunk {
    pub index: usize,
    pub start: u64,
    pub end: u64,
    pub warm_start: u64,
    pub fade: u64,
    pub seam: Seam,
}

impl Chunk {
    /// Whether this chunk keeps the source frame of frame `i` (its cross-fade's).
    pub fn keeps_raw(&self, i: u64) -> bool {
        i + self.fade >= self.start && i < self.start
    }
}

/// Cuts `cuts.len()` frames (`cuts[i]`: frame i starts a shot) into chunks of about
/// `chunk_frames`. With temporal dependence a boundary goes to a scene cut within half a chunk
/// of where it would fall, else it is warmed up and faded.
pub fn chunk_table(cuts: &[bool], temporal: Temporal, chunk_frames: u64, warmup: u64, crossfade: u64) -> Vec<Chunk> {
    let n = cuts.len() as u64;
    let chunk_frames = chunk_frames.max(1);
    let mut bounds = vec![0u64];
    if temporal != Temporal::Zoom {
        let mut s = 0;
        while s + chunk_frames < n {
            let target = s + chunk_frames;
            let (lo, hi) = (s + chunk_frames / 2 + 1, (target + chunk_frames / 2).min(n - 1));
            let near_cut = match temporal {
                Temporal::Video => (lo..=hi).filter(|&c| cuts[c as usize]).min_by_key(|&c| c.abs_diff(target)),
                _ => None,
            };
            s = near_cut.unwrap_or(target);
            bounds.push(s);
        }
    }
    bounds.push(n);
    let mut chunks: Vec<Chunk> = Vec::new();
    for (index, w) in bounds.windows(2).enumerate() {
        let (start, end) = (w[0], w[1]);
        let mut chunk = Chunk { index, start, end, warm_start: start, fade: 0, seam: Seam::First };
        if index > 0 {
            chunk.seam = match temporal {
                Temporal::None | Temporal::Zoom => Seam::Independent,
                Temporal::Video => {
                    let fade = crossfade.min(start - chunks[index - 1].start);
                    let warm = start.saturating_sub(fade.saturating_add(warmup));
                    // The latest point in the warm-up where the history restarts anyway.
                    match (warm..=start).rev().find(|&r| r == 0 || cuts[r as usize]) {
                        Some(r) => {
                            chunk.warm_start = r;
                            Seam::SceneCut
                        }
                        None => {
                            (chunk.warm_start, chunk.fade) = (warm, fade);
                            Seam::Faded
                        }
                    }
                }
            };
        }
        chunks.push(chunk);
    }
    chunks
}

/// The equal-power cross-fade of two dreams `a` (fading out) and `b` (fading in) of one source
/// frame `raw`, at `w` in 0..1, on the dream residual: raw + cos(pi w/2)(a - raw) +
/// sin(pi w/2)(b - raw), where a linear fade would dip in strength in the middle and the
/// picture visibly breathe. Two dreams of one frame are not quite uncorrelated (both follow
/// its edges), which would make the middle of that fade stronger instead (measured: 1 to 1.6
/// dB); the mixed residual is therefore scaled to the energy uncorrelated residuals would
/// have, cos^2 |a - raw|^2 + sin^2 |b - raw|^2. Equal dreams fade into themselves.
pub fn crossfade(raw: &RgbImage, a: &RgbImage, b: &RgbImage, w: f64) -> RgbImage {
    let (ca, cb) = ((w * std::f64::consts::FRAC_PI_2).cos(), (w * std::f64::consts::FRAC_PI_2).sin());
    let (mut ea, mut eb, mut em) = (0.0, 0.0, 0.0);
    for ((&r, &pa), &pb) in raw.as_raw().iter().zip(a.as_raw()).zip(b.as_raw()) {
        let (da, db) = (pa as f64 - r as f64, pb as f64 - r as f64);
        (ea, eb, em) = (ea + da * da, eb + db * db, em + (ca * da + cb * db).powi(2));
    }
    let gain = if em > 0.0 { ((ca * ca * ea + cb * cb * eb) / em).sqrt() } else { 1.0 };
    let mut out = raw.clone();
    for ((o, &pa), &pb) in out.iter_mut().zip(a.as_raw()).zip(b.as_raw()) {
        let r = *o as f64;
        *o = (r + gain * (ca * (pa as f64 - r) + cb * (pb as f64 - r))).round().clamp(0.0, 255.0) as u8;
    }
    out
}

/// The farm directory of one output.
pub struct FarmDir {
    pub dir: PathBuf,
}

impl FarmDir {
    pub fn of(output: &Path) -> FarmDir {
        let output = PathBuf::from(output.to_string_lossy().trim_end_matches('/'));
        FarmDir { dir: io::beside(&output, "farm") }
    }

    fn plan_path(&self) -> PathBuf {
        self.dir.join("plan.json")
    }

    pub fn chunk_dir(&self, chunk: usize) -> PathBuf {
        self.dir.join(format!("chunk-{chunk:04}"))
    }

    fn done_path(&self, chunk: usize) -> PathBuf {
        self.dir.join(format!("chunk-{chunk:04}.done"))
    }

    pub fn frame_path(&self, chunk: usize, frame: u64) -> PathBuf {
        self.chunk_dir(chunk).join(format!("{frame:06}.png"))
    }

    pub fn raw_path(&self, chunk: usize, frame: u64) -> PathBuf {
        self.chunk_dir(chunk).join(format!("raw-{frame:06}.png"))
    }

    pub fn exists(&self) -> bool {
        self.plan_path().is_file()
    }

    /// Reads the plan, or says that there is none and what to run.
    pub fn read_plan(&self, output: &Path) -> Result<Plan> {
        let path = self.plan_path();
        let text = std::fs::read_to_string(&path).map_err(|_| {
            Error::usage(format!(
                "no render plan for {} (looked for {}): run `deepdream plan INPUT -o {}` first",
                output.display(),
                path.display(),
                output.display()
            ))
        })?;
        let plan: Plan = serde_json::from_str(&text)
            .map_err(|e| Error::usage(format!("the plan {} is damaged ({e}); plan again", path.display())))?;
        if plan.format != PLAN_FORMAT || plan.version != env!("CARGO_PKG_VERSION") {
            return Err(Error::usage(format!(
                "the plan {} was made by deepdream {} (plan format {}), this is {} (format {PLAN_FORMAT}): run the same version everywhere, or plan again",
                path.display(),
                plan.version,
                plan.format,
                env!("CARGO_PKG_VERSION")
            )));
        }
        plan.check().map_err(|why| {
            Error::usage(format!("the plan {} is damaged ({why}); plan again with --replace", path.display()))
        })?;
        Ok(plan)
    }

    /// Writes a new plan. An existing plan is kept when it is the same (planning is
    /// idempotent); another is refused unless `replace`, which removes it and its chunks.
    /// Returns whether the plan was already there.
    pub fn write_plan(&self, plan: &Plan, replace: bool) -> Result<bool> {
        if self.exists() {
            // Everything, the encoder and the version included (the fingerprint leaves those out).
            let same = std::fs::read_to_string(self.plan_path())
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .is_some_and(|old| serde_json::to_value(plan).is_ok_and(|new| new == old));
            if same {
                return Ok(true);
            }
            if !replace {
                return Err(Error::usage(format!(
                    "a plan with other settings is in {}: merge it first, or plan with --replace to drop it and its chunks",
                    self.dir.display()
                )));
            }
            self.remove()?;
        } else if std::fs::symlink_metadata(&self.dir).is_ok() {
            return Err(Error::Output {
                path: self.dir.clone(),
                reason: "exists and holds no render plan; move it away".into(),
            });
        }
        let bad = |e: std::io::Error| Error::Output { path: self.dir.clone(), reason: e.to_string() };
        std::fs::create_dir_all(&self.dir).map_err(bad)?;
        let text = serde_json::to_string_pretty(plan).map_err(|e| Error::internal(e.to_string()))?;
        io::write_atomic(&self.plan_path(), |tmp| {
            std::fs::write(tmp, text).map_err(|e| Error::Write { path: tmp.to_owned(), reason: e.to_string() })
        })?;
        Ok(false)
    }

    /// The device that completed a chunk, if it is complete.
    pub fn done(&self, chunk: usize) -> Option<String> {
        let text = std::fs::read_to_string(self.done_path(chunk)).ok()?;
        let marker: serde_json::Value = serde_json::from_str(&text).ok()?;
        Some(marker["device"].as_str().unwrap_or("unknown").to_owned())
    }

    /// Marks a chunk complete (atomically), recording the device that rendered it.
    pub fn mark_done(&self, chunk: usize, device: &str) -> Result<()> {
        self.make_chunk_dir(chunk)?;
        let text = serde_json::json!({ "device": device, "host": host() }).to_string();
        write_unique(&self.done_path(chunk), |tmp| {
            std::fs::write(tmp, &text).map_err(|e| Error::Write { path: tmp.to_owned(), reason: e.to_string() })
        })
    }

    /// Takes a chunk's completion back, so that `render-chunk` looks at its frames again.
    pub fn undo(&self, chunk: usize) {
        let _ = std::fs::remove_file(self.done_path(chunk));
    }

    /// Makes a chunk's directory inside the farm directory, never the farm directory itself: a
    /// late worker (a second pod on one index) must not bring back a farm that was merged or
    /// replaced meanwhile.
    pub fn make_chunk_dir(&self, chunk: usize) -> Result<()> {
        let dir = self.chunk_dir(chunk);
        match std::fs::create_dir(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(_) if !self.exists() => Err(Error::usage(format!(
                "the plan in {} is gone (merged, or replaced by another plan): nothing to render",
                self.dir.display()
            ))),
            Err(e) => Err(Error::Output { path: dir, reason: e.to_string() }),
        }
    }

    /// Saves a chunk's dreamed frame `i` (and, where its fade needs it, the source frame).
    pub fn save(&self, chunk: &Chunk, i: u64, dreamed: &RgbImage, raw: &RgbImage) -> Result<()> {
        self.make_chunk_dir(chunk.index)?;
        // The source frame first: a dreamed frame on disk means its source frame is there.
        if chunk.keeps_raw(i) {
            write_unique(&self.raw_path(chunk.index, i), |tmp| io::write_png_fast(raw, tmp))?;
        }
        write_unique(&self.frame_path(chunk.index, i), |tmp| io::write_png_fast(dreamed, tmp))
    }

    /// Where a chunk's render continues: the first of its frames not on disk whole at
    /// `size` (from the start of its warm-up), and the dreamed frame before it.
    pub fn resume_point(&self, chunk: &Chunk, size: (u32, u32)) -> (u64, Option<RgbImage>) {
        let whole = |i: u64| {
            let frame = io::load_rgb(&self.frame_path(chunk.index, i), None).ok().filter(|f| f.dimensions() == size);
            let raw_ok = !chunk.keeps_raw(i)
                || io::load_rgb(&self.raw_path(chunk.index, i), None).is_ok_and(|r| r.dimensions() == size);
            frame.filter(|_| raw_ok)
        };
        let mut previous = None;
        for i in chunk.warm_start..chunk.end {
            match whole(i) {
                Some(frame) => previous = Some(frame),
                None => return (i, previous),
            }
        }
        (chunk.end, previous)
    }

    /// The first frame file a complete chunk should hold and does not hold whole (a `size`
    /// PNG), if any: a quick look at each file's header, before a merge starts.
    pub fn first_damaged(&self, chunk: &Chunk, size: (u32, u32)) -> Option<PathBuf> {
        let own = (chunk.start..chunk.end).map(|i| self.frame_path(chunk.index, i));
        let fade = (chunk.start - chunk.fade..chunk.start)
            .flat_map(|i| [self.frame_path(chunk.index, i), self.raw_path(chunk.index, i)]);
        own.chain(fade).find(|p| png_size(p) != Some(size))
    }

    /// Removes the directory (only a farm directory: it holds a plan).
    pub fn remove(&self) -> Result<()> {
        if !self.exists() {
            return Ok(());
        }
        std::fs::remove_dir_all(&self.dir).map_err(|e| Error::Output { path: self.dir.clone(), reason: e.to_string() })
    }
}

/// The frames of a planned render in order, as the merge encodes them: each from the chunk
/// that outputs it, cross-faded into the next chunk's where a faded seam follows.
pub fn merged_frame(farm: &FarmDir, plan: &Plan, i: u64) -> Result<(RgbImage, i64)> {
    let load = |path: PathBuf, chunk: usize| {
        io::load_rgb(&path, None).map_err(|e| {
            farm.undo(chunk);
            damaged(chunk, &path, &e.to_string())
        })
    };
    let at = plan.chunks.partition_point(|c| c.end <= i);
    let chunk = plan.chunks.get(at).ok_or_else(|| Error::internal(format!("frame {i} is in no chunk")))?;
    let mut image = load(farm.frame_path(chunk.index, i), chunk.index)?;
    if let Some(next) = plan.chunks.get(at + 1).filter(|n| n.keeps_raw(i)) {
        let b = load(farm.frame_path(next.index, i), next.index)?;
        let raw = load(farm.raw_path(next.index, i), next.index)?;
        let k = i + next.fade - next.start; // 0 .. fade
        image = crossfade(&raw, &image, &b, (k + 1) as f64 / (next.fade + 1) as f64);
    }
    let pts = plan.frames.get(i as usize).map_or(i as i64, |f| f.pts);
    Ok((image, pts))
}

/// A damaged chunk, said so that the user knows what to run.
pub fn damaged(chunk: usize, path: &Path, why: &str) -> Error {
    Error::usage(format!(
        "chunk {chunk} is damaged: {} {why}; run `deepdream render-chunk OUT {chunk}` again (merge has marked it not done)",
        path.display()
    ))
}

impl Plan {
    /// What the rest of the farm relies on: chunks numbered in order, covering the frames
    /// without gaps, each warm-up and fade inside the frames before it.
    fn check(&self) -> std::result::Result<(), String> {
        let n = self.frames.len() as u64;
        if self.chunks.is_empty() || n == 0 || self.width == 0 || self.height == 0 {
            return Err("no frames or no chunks".into());
        }
        let mut next = 0;
        for (i, c) in self.chunks.iter().enumerate() {
            let previous_start = if i > 0 { self.chunks[i - 1].start } else { 0 };
            let sound = c.index == i
                && c.start == next
                && c.start < c.end
                && c.warm_start <= c.start
                && c.fade <= c.start - previous_start
                && c.fade <= c.start - c.warm_start;
            if !sound {
                return Err(format!("chunk {i} does not follow the one before"));
            }
            next = c.end;
        }
        if next != n {
            return Err(format!("the chunks cover {next} frames of {n}"));
        }
        if self.loop_frames >= n {
            return Err("the loop is longer than the render".into());
        }
        Ok(())
    }

    pub fn frame_format(&self) -> FrameFormat {
        FrameFormat { width: self.width, height: self.height, rate: self.rate, time_base: self.time_base }
    }

    pub fn audio_source(&self) -> Option<AudioSource> {
        self.audio.as_ref().map(|a| AudioSource { path: a.path.clone(), start: a.start, duration: a.duration })
    }
}

/// The size a PNG file's header gives, without decoding it.
fn png_size(path: &Path) -> Option<(u32, u32)> {
    use std::io::Read as _;
    let mut head = [0u8; 24];
    std::fs::File::open(path).ok()?.read_exact(&mut head).ok()?;
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (&head[..8] == b"\x89PNG\r\n\x1a\n" && &head[12..16] == b"IHDR").then(|| (be(&head[16..20]), be(&head[20..24])))
}

/// This machine's name, for the done marker and unique temporary names.
fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

/// Writes `dest` through a temporary name no other writer on any host uses, then renames it
/// into place: two workers writing the same frame each rename a whole file.
fn write_unique(dest: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let unique = format!(
        "{}-{}-{nanos}-{}",
        host().replace(['/', '.'], "_"),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let tmp = dest.with_file_name(format!(".{name}.{unique}.part"));
    let result = write(&tmp).and_then(|()| {
        std::fs::rename(&tmp, dest).map_err(|e| Error::Write { path: dest.to_owned(), reason: e.to_string() })
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests;
