//! `plan`, `render-chunk` and `merge`: a render cut into chunks for a render farm
//! ([`deepdream::farm`]). The job is resolved from the same flags as `video` and `zoom`, by
//! the same code, on the planning machine and again on every worker: a worker whose job
//! differs (a preset, input, guide or model changed since the plan) is refused.

use super::Cancel;
use super::progress::FrameBar;
use super::render::{Opened, open_video, open_zoom};
use deepdream::config::{DreamFlags, EncodeFlags, VideoFlags, Work, ZoomFlags};
use deepdream::farm::source::{PlannedSource, frame_crc};
use deepdream::farm::{self, Chunk, FarmDir, Plan, PlannedAudio, PlannedFrame, Seam, Temporal};
use deepdream::pipeline::{self, ChunkJob};
use deepdream::source::SeekTo;
use deepdream::source::motion::Continuation;
use deepdream::{Error, Result};
use std::path::{Path, PathBuf};

/// How the render is cut: `plan`'s own flags.
#[derive(clap::Args, Debug, Clone)]
pub struct FarmFlags {
    /// Frames per chunk, about (a chunk ends at a scene cut within half a chunk of this).
    #[arg(long, default_value_t = farm::DEFAULT_CHUNK_FRAMES, value_name = "N")]
    pub chunk_frames: u64,
    /// Frames a chunk that does not start at a scene cut dreams before its cross-fade, so its
    /// dream has grown as strong as the previous chunk's (default: 8 with --motion blend,
    /// whose history halves each frame at blend 0.5; 24 with flow, whose carried dream
    /// remembers longer).
    #[arg(long, value_name = "N")]
    pub warmup: Option<u64>,
    /// Frames over which the previous chunk's dream fades into the next one's at such a seam.
    #[arg(long, default_value_t = farm::DEFAULT_CROSSFADE, value_name = "N")]
    pub crossfade: u64,
    /// Replace an existing plan for this output with other settings (its chunks are removed).
    #[arg(long)]
    pub replace: bool,
}

/// The command a plan renders, its paths absolute so that any worker finds them.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Planned {
    Video { input: PathBuf, output: PathBuf, dream: DreamFlags, video: VideoFlags, encode: EncodeFlags },
    Zoom { input: PathBuf, output: PathBuf, dream: DreamFlags, zoom: ZoomFlags, encode: EncodeFlags },
}

impl Planned {
    /// Absolute paths everywhere a path is given; `--resume` is refused (chunks resume).
    pub fn with_absolute_paths(mut self) -> Result<Planned> {
        let (input, output, dream, encode) = match &mut self {
            Planned::Video { input, output, dream, encode, .. }
            | Planned::Zoom { input, output, dream, encode, .. } => (input, output, dream, encode),
        };
        if encode.resume {
            return Err(Error::usage(
                "--resume: a farm render resumes by itself: run `deepdream render-chunk OUT I` again",
            ));
        }
        *input = absolute(input)?;
        *output = absolute(output)?;
        for image in [&mut dream.guide, &mut dream.style].into_iter().flatten() {
            *image = absolute(image)?;
        }
        if let Some(preset) = &mut dream.preset
            && Path::new(preset.as_str()).is_file()
        {
            *preset = absolute(Path::new(preset.as_str()))?.to_string_lossy().into_owned();
        }
        if let Planned::Zoom { zoom, .. } = &mut self
            && let Some(sound) = &mut zoom.audio
        {
            *sound = absolute(sound)?;
        }
        // Looks named by file, for workers elsewhere.
        let animate = match &mut self {
            Planned::Zoom { zoom, .. } => &mut zoom.animate,
            Planned::Video { video, .. } => &mut video.animate,
        };
        for a in animate.iter_mut() {
            if let Some(keys) = a.strip_prefix("look=") {
                let keys: Vec<String> = keys.split(',').map(absolute_look).collect::<Result<_>>()?;
                *a = format!("look={}", keys.join(","));
            }
        }
        Ok(self)
    }

    fn output(&self) -> &Path {
        match self {
            Planned::Video { output, .. } | Planned::Zoom { output, .. } => output,
        }
    }

    /// The job, opened on `device` (the plan's when none).
    fn open(&self, device: Option<&str>) -> Result<Opened> {
        let with = |dream: &DreamFlags| DreamFlags {
            device: device.map(str::to_owned).or(dream.device.clone()),
            ..dream.clone()
        };
        match self {
            Planned::Video { input, output, dream, video, encode } => {
                open_video(input, output, &with(dream), video, encode)
            }
            Planned::Zoom { input, output, dream, zoom, encode } => {
                open_zoom(input, output, &with(dream), zoom, encode)
            }
        }
    }
}

/// A `look` key `TIME: NAME [how]` with NAME made absolute where it is a file.
fn absolute_look(key: &str) -> Result<String> {
    let Some((time, rest)) = key.rsplit_once(':') else { return Ok(key.to_owned()) };
    let mut words = rest.split_whitespace();
    match words.next() {
        Some(name) if Path::new(name).is_file() => {
            let name = absolute(Path::new(name))?.to_string_lossy().into_owned();
            Ok(format!("{time}: {}", std::iter::once(name.as_str()).chain(words).collect::<Vec<_>>().join(" ")))
        }
        _ => Ok(key.to_owned()),
    }
}

/// `path` from the root, its directory resolved (the file itself need not exist yet).
fn absolute(path: &Path) -> Result<PathBuf> {
    let trimmed = PathBuf::from(path.to_string_lossy().trim_end_matches('/'));
    let abs = std::path::absolute(&trimmed).map_err(|e| Error::usage(format!("{}: {e}", path.display())))?;
    match (abs.parent(), abs.file_name()) {
        (Some(dir), Some(name)) => Ok(dir.canonicalize().map(|d| d.join(name)).unwrap_or(abs.clone())),
        _ => Ok(abs),
    }
}

/// The job's identity across machines: its fingerprint with the device left out (workers
/// render on whichever GPU they are given).
fn fingerprint(opened: &Opened) -> Result<String> {
    let mut job = opened.job.clone();
    job.device = deepdream::device::DeviceSpec::Cpu;
    job.fingerprint()
}

/// `deepdream plan`: decodes the input once, writes the plan beside the output, prints the
/// number of chunks on stdout (for scripts) and what it planned on stderr.
pub fn plan(planned: Planned, f: &FarmFlags) -> Result<()> {
    if f.chunk_frames == 0 {
        return Err(Error::usage("--chunk-frames: a chunk has at least one frame"));
    }
    for (flag, value) in
        [("--warmup", f.warmup.unwrap_or(0)), ("--crossfade", f.crossfade), ("--chunk-frames", f.chunk_frames)]
    {
        if value > 1_000_000 {
            return Err(Error::usage(format!("{flag}: at most 1000000 frames, got {value}")));
        }
    }
    let planned = planned.with_absolute_paths()?;
    // Checked on the CPU: the planning machine (a login node) need not have the workers' GPU.
    let opened = planned.open(Some("cpu"))?;
    let info = opened.source.info().clone();
    let (frames, temporal, audio) = match &opened.job.work {
        Work::Zoom(z) => {
            let frames =
                (0..z.rendered_frames()).map(|i| PlannedFrame { pts: i as i64, cut: false, crc: None }).collect();
            let audio =
                opened.source.audio().map(|a| PlannedAudio { path: a.path, start: a.start, duration: a.duration });
            (frames, Temporal::Zoom, audio)
        }
        Work::Video(v) => {
            let mut frames = Vec::new();
            opened.source.decode(u64::MAX, &mut |f| {
                frames.push(PlannedFrame { pts: f.pts, cut: f.cut, crc: Some(frame_crc(&f.image)) });
                true
            })?;
            let temporal = match v.continuation {
                Continuation::Blend { blend: 0.0 } => Temporal::None,
                _ => Temporal::Video,
            };
            let audio =
                opened.source.audio().map(|a| PlannedAudio { path: a.path, start: a.start, duration: a.duration });
            (frames, temporal, audio)
        }
        Work::Still { .. } => return Err(Error::internal("a still job in a plan")),
    };
    if frames.is_empty() {
        return Err(Error::usage("the input has no frames to render in the requested range"));
    }
    let cuts: Vec<bool> = frames.iter().map(|f| f.cut).collect();
    let flow = matches!(&opened.job.work, Work::Video(v) if matches!(v.continuation, Continuation::Flow { .. }));
    let warmup = f.warmup.unwrap_or(if flow { farm::DEFAULT_FLOW_WARMUP } else { farm::DEFAULT_WARMUP });
    let chunks = farm::chunk_table(&cuts, temporal, f.chunk_frames, warmup, f.crossfade);
    let loop_frames = match &opened.job.work {
        Work::Zoom(z) => z.loop_frames,
        _ => 0,
    };
    let plan = Plan {
        format: farm::PLAN_FORMAT,
        version: env!("CARGO_PKG_VERSION").into(),
        command: serde_json::to_value(&planned).map_err(|e| Error::internal(e.to_string()))?,
        fingerprint: fingerprint(&opened)?,
        output: planned.output().to_owned(),
        width: info.width,
        height: info.height,
        rate: info.rate,
        time_base: info.time_base,
        encoder: opened.frames()?.encoder.clone(),
        audio,
        loop_frames,
        frames,
        temporal,
        warmup,
        crossfade: f.crossfade,
        chunks,
    };
    let farm = FarmDir::of(planned.output());
    let kept = farm.write_plan(&plan, f.replace)?;
    describe(&plan, &farm, kept);
    say!("{}", plan.chunks.len());
    Ok(())
}

/// What a plan is, on stderr.
fn describe(plan: &Plan, farm: &FarmDir, kept: bool) {
    let n = plan.chunks.len();
    let seams = |seam: Seam| plan.chunks.iter().filter(|c| c.seam == seam).count();
    let how = match plan.temporal {
        Temporal::Zoom => {
            "one chunk: a zoom is strictly sequential (each frame is made from the previous dreamed frame)".to_owned()
        }
        Temporal::None => format!("{n} chunks; every seam exact (no frame depends on another)"),
        Temporal::Video => {
            let (exact, faded) = (seams(Seam::SceneCut), seams(Seam::Faded));
            let mut parts = Vec::new();
            if exact > 0 {
                parts.push(format!("{exact} exact at a scene cut (or warmed up from one, or from the start)"));
            }
            if faded > 0 {
                parts.push(format!(
                    "{faded} cross-faded (warm-up {}, fade {} frames: close to one machine, not equal)",
                    plan.warmup, plan.crossfade
                ));
            }
            match parts.is_empty() {
                true => format!("{n} chunks"),
                false => format!("{n} chunks; seams: {}", parts.join(", ")),
            }
        }
    };
    let cuts = plan.frames.iter().filter(|f| f.cut).count();
    let scene = if cuts > 0 { format!(", {cuts} scene cuts") } else { String::new() };
    let again = if kept {
        let done = (0..n).filter(|&i| farm.done(i).is_some()).count();
        format!(" (the same plan was already there; {done} of {n} chunks done)")
    } else {
        String::new()
    };
    tell!(
        "planned {} frames of {}x{}{scene} into {how}{again}; plan in {}",
        plan.frames.len(),
        plan.width,
        plan.height,
        farm.dir.display()
    );
}

/// `deepdream render-chunk OUT I`: renders chunk I of the plan, or nothing if it is done.
pub fn render_chunk(output: &Path, index: usize, device: Option<&str>, cancel: &Cancel) -> Result<()> {
    let farm = FarmDir::of(output);
    let plan = farm.read_plan(output)?;
    let chunk: Chunk = *plan.chunks.get(index).ok_or_else(|| {
        Error::usage(format!(
            "chunk {index}: the plan has {} chunks, 0 to {}",
            plan.chunks.len(),
            plan.chunks.len() - 1
        ))
    })?;
    if farm.done(index).is_some() {
        tell!("chunk {index} of {} is already done", plan.chunks.len());
        return Ok(());
    }
    let planned: Planned = serde_json::from_value(plan.command.clone())
        .map_err(|e| Error::usage(format!("the plan in {} is damaged ({e}); plan again", farm.dir.display())))?;
    let opened = planned.open(device)?;
    if fingerprint(&opened)? != plan.fingerprint {
        return Err(Error::usage(format!(
            "chunk {index}: the job here differs from the plan's (a preset file, the input, a guide or style image, or the model's weights changed since `deepdream plan`, or differ on this machine): plan again with --replace"
        )));
    }
    let size = (plan.width, plan.height);
    let info = opened.source.info();
    if (info.width, info.height) != size {
        return Err(Error::usage(format!(
            "chunk {index}: the input is {}x{} here, {}x{} in the plan",
            info.width, info.height, plan.width, plan.height
        )));
    }
    let mut may_seek = plan.temporal != Temporal::Zoom;
    let mut first = true;
    loop {
        let (from, previous) = farm.resume_point(&chunk, size);
        if first && from > chunk.warm_start {
            tell!("chunk {index}: resuming after frame {from} (frames {}..{} are stored)", chunk.warm_start + 1, from);
        }
        first = false;
        if from >= chunk.end {
            break;
        }
        // From the keyframe before the frame ahead of the first to dream (the flow needs it).
        let seek = (may_seek && from > 0).then(|| SeekTo { index: from - 1, pts: plan.frames[from as usize - 1].pts });
        let source = PlannedSource::new(opened.source.as_ref(), &plan.frames, seek);
        let frames = opened.frames()?;
        let job = ChunkJob {
            net: opened.net.as_ref(),
            backend: &opened.backend,
            source: &source,
            params: frames.params,
            frame_params: frames.frame_params,
            range: from..chunk.end,
            previous,
            animation: frames.animation,
        };
        let px = (plan.height as usize, plan.width as usize);
        let mut bar = FrameBar::new(Some(chunk.end - from), frames.params, frames.frame_params, px, cancel);
        let start = std::time::Instant::now();
        let mut save = |f: pipeline::ChunkFrame| farm.save(&chunk, f.index, f.dreamed, f.raw);
        let done = pipeline::render_chunk(&job, &mut save, &mut bar);
        bar.finish();
        match (done, source.mismatch()) {
            (Ok(done), None) => {
                tell!(
                    "chunk {index}: frames {}..{} dreamed ({:.2} s per frame)",
                    from + 1,
                    chunk.end,
                    start.elapsed().as_secs_f64() / done.max(1) as f64
                );
                break;
            }
            (_, Some(what)) if source.seeks() => {
                tell!("chunk {index}: after a seek {what}; decoding from the start instead");
                may_seek = false;
            }
            (_, Some(what)) => {
                return Err(Error::usage(format!(
                    "chunk {index}: the input decodes differently here than where the plan was made ({what}): another input file, or another ffmpeg; plan on a machine like the workers"
                )));
            }
            (Err(e), None) => return Err(e),
        }
    }
    // The kind of device: frames from cuda:0 and cuda:1 match, from a CPU and a GPU not.
    let kind = match opened.job.device {
        deepdream::device::DeviceSpec::Cpu => "cpu",
        deepdream::device::DeviceSpec::CpuPortable => "cpu-portable",
        deepdream::device::DeviceSpec::Cuda(_) => "cuda",
    };
    farm.mark_done(index, kind)?;
    tell!("chunk {index} of {} done", plan.chunks.len());
    Ok(())
}

/// `deepdream merge OUT`: every chunk done, encoded once into OUT, the farm directory removed.
pub fn merge(output: &Path, keep: bool) -> Result<()> {
    let farm = FarmDir::of(output);
    let plan = farm.read_plan(output)?;
    deepdream::sink::check_output(output)?;
    let missing: Vec<String> =
        plan.chunks.iter().filter(|c| farm.done(c.index).is_none()).map(|c| c.index.to_string()).collect();
    if !missing.is_empty() {
        return Err(Error::usage(format!(
            "{} of {} chunks are not done: {}; render them with `deepdream render-chunk {} I`",
            missing.len(),
            plan.chunks.len(),
            missing.join(", "),
            output.display()
        )));
    }
    let size = (plan.width, plan.height);
    for chunk in &plan.chunks {
        if let Some(path) = farm.first_damaged(chunk, size) {
            farm.undo(chunk.index);
            return Err(farm::damaged(chunk.index, &path, &format!("is missing or not a {}x{} PNG", size.0, size.1)));
        }
    }
    let mut devices: Vec<String> = plan.chunks.iter().filter_map(|c| farm.done(c.index)).collect();
    devices.sort();
    devices.dedup();
    if devices.len() > 1 {
        tell!(
            "warning: the chunks were rendered on different devices ({}); frames match only within a kind of device",
            devices.join(", ")
        );
    }
    let job = pipeline::EncodeJob {
        output,
        format: plan.frame_format(),
        sink: &plan.encoder,
        audio: plan.audio_source(),
        frames: plan.frames.len() as u64,
        loop_frames: plan.loop_frames,
    };
    let start = std::time::Instant::now();
    let make = |i: u64| farm::merged_frame(&farm, &plan, i);
    let written = pipeline::encode(&job, &make, &mut |_| true)?;
    if !keep {
        farm.remove()?;
    }
    let faded = plan.chunks.iter().filter(|c| c.seam == Seam::Faded).count();
    let faded = if faded > 0 { format!(", {faded} seams cross-faded") } else { String::new() };
    tell!(
        "wrote {} ({written} frames at {}x{} from {} chunks{faded}; merged in {:.1} s)",
        output.display(),
        plan.width,
        plan.height,
        plan.chunks.len(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
