//! `dream`, `zoom` and `video`: resolve the job, load what it needs, check it against the
//! network, then dream (one image here, frames through the pipeline).

use super::Cancel;
use super::progress::{FrameBar, StepBar};
use deepdream::config::{DreamFlags, EncodeFlags, Job, VideoFlags, Work, ZoomFlags};
use deepdream::device::Backend;
use deepdream::dream::{self, DreamParams};
use deepdream::model::{self, FeatureNet};
use deepdream::pipeline::{self, RenderJob};
use deepdream::sink::SinkOptions;
use deepdream::source::{Source, StillLoop};
use deepdream::{Error, Result, io};
use std::path::Path;
use std::time::Instant;

/// The opened device and the loaded model, checked against the job for an `h` x `w` input.
fn prepare(job: &Job, (h, w): (u32, u32)) -> Result<(Backend, Box<dyn FeatureNet>)> {
    let backend = job.device.open()?;
    let net = model::load(&job.model)?;
    let _ops = backend.enter();
    job.check_network(net.as_ref(), (h as usize, w as usize), &backend.device)?;
    Ok((backend, net))
}

pub fn dream(input: &Path, output: &Path, flags: &DreamFlags, cancel: &Cancel) -> Result<()> {
    let job = Job::dream(input, output, flags)?;
    io::check_writable(output)?;
    let img = io::load_rgb(input, job.max_size)?;
    io::check_size(output, img.dimensions())?;
    let (backend, net) = prepare(&job, (img.height(), img.width()))?;
    let params = job.params();
    let _ops = backend.enter();
    let pixels = io::to_tensor(&img, &backend.device)?;
    let mut progress = StepBar::new((params.octaves * params.steps) as u64, cancel);
    let start = Instant::now();
    let out = dream::dream(net.as_ref(), &pixels, params, &mut progress);
    let secs = start.elapsed().as_secs_f64(); // the dream alone, as the PyTorch peers time theirs
    progress.finish();
    let out = out?;
    if out.losses.is_empty() {
        return Err(Error::usage(format!(
            "no ascent step was taken: the loss was past max_loss ({}) from the first step; raise --max-loss",
            params.max_loss.map_or("none".into(), |m| m.to_string())
        )));
    }
    io::save(&io::to_image(&out.pixels)?, output)?;
    let (w, h, steps) = (img.width(), img.height(), out.losses.len());
    let plural = if steps == 1 { "" } else { "s" };
    tell!("wrote {} ({w}x{h}, {steps} step{plural} in {secs:.1} s)", output.display());
    Ok(())
}

pub fn zoom(
    input: &Path,
    output: &Path,
    flags: &DreamFlags,
    z: &ZoomFlags,
    e: &EncodeFlags,
    cancel: &Cancel,
) -> Result<()> {
    let job = Job::zoom(input, output, flags, z, e)?;
    let Work::Zoom(plan) = &job.work else { return Err(Error::internal("a zoom job without a zoom plan")) };
    let image = io::load_rgb(input, job.max_size)?;
    let (backend, net) = prepare(&job, (image.height(), image.width()))?;
    let source = StillLoop::new(image, plan.frames, plan.rate, plan.transform)?;
    let frames = Frames { params: &plan.params, frame_params: &plan.frame_params, encoder: &plan.encoder };
    render(&job, net.as_ref(), &backend, &source, frames, cancel)
}

#[cfg(feature = "video")]
pub fn video(
    input: &Path,
    output: &Path,
    flags: &DreamFlags,
    v: &VideoFlags,
    e: &EncodeFlags,
    cancel: &Cancel,
) -> Result<()> {
    use deepdream::source::video::{VideoOptions, VideoSource};
    let job = Job::video(input, output, flags, v, e)?;
    let Work::Video(plan) = &job.work else { return Err(Error::internal("a video job without a video plan")) };
    let options = VideoOptions { max_size: job.max_size, start: plan.start, duration: plan.duration };
    let source = VideoSource::open(input, options, plan.continuation)?;
    job.check_source(source.info())?;
    let (backend, net) = prepare(&job, (source.info().height, source.info().width))?;
    let frames = Frames { params: &plan.params, frame_params: &plan.frame_params, encoder: &plan.encoder };
    render(&job, net.as_ref(), &backend, &source, frames, cancel)
}

#[cfg(not(feature = "video"))]
pub fn video(_: &Path, _: &Path, _: &DreamFlags, _: &VideoFlags, _: &EncodeFlags, _: &Cancel) -> Result<()> {
    Err(Error::Unsupported("this build has no video support (built without the `video` feature)".into()))
}

/// What a render does with each frame.
struct Frames<'a> {
    params: &'a DreamParams,
    frame_params: &'a DreamParams,
    encoder: &'a SinkOptions,
}

/// Runs a render with Ctrl-C finishing the file, and reports how it went.
fn render(
    job: &Job,
    net: &dyn FeatureNet,
    backend: &Backend,
    source: &dyn Source,
    frames: Frames,
    cancel: &Cancel,
) -> Result<()> {
    let render = RenderJob {
        net,
        backend,
        source,
        output: &job.output,
        sink: frames.encoder,
        params: frames.params,
        frame_params: frames.frame_params,
        fingerprint: job.fingerprint()?,
        resume: job.resume,
    };
    let info = source.info();
    let total = job.frame_count(info.rate.as_f64(), info.frames);
    let mut bar = FrameBar::new(total, cancel);
    let start = Instant::now();
    let summary = pipeline::render(&render, &mut bar);
    bar.finish();
    for note in source.notes() {
        tell!("warning: {note}");
    }
    let s = summary?;
    let fresh = s.frames - s.resumed_from;
    if let Some(k) = s.damaged_from {
        tell!("warning: stored frame {} was damaged; it and the frames after it were rendered again", k + 1);
    }
    let resumed = if s.resumed_from > 0 { format!(", resumed after {}", s.resumed_from) } else { String::new() };
    let per_frame = start.elapsed().as_secs_f64() / fresh.max(1) as f64;
    let stopped = if s.interrupted { "; interrupted: run again with --resume to finish" } else { "" };
    let (out, n, w, h) = (job.output.display(), s.frames, s.width, s.height);
    if s.kept_earlier {
        tell!("interrupted after {n} frames; {out} still holds the earlier render: run again with --resume to finish");
    } else {
        tell!("wrote {out} ({n} frames at {w}x{h}{resumed}; {per_frame:.2} s per frame){stopped}");
    }
    if s.interrupted {
        return Err(Error::Cancelled);
    }
    Ok(())
}
