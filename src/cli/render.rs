//! `dream`, `zoom` and `video`: resolve the job, load what it needs, check it against the
//! network, then dream (one image here, frames through the pipeline).

use super::Cancel;
use super::progress::{FrameBar, StepBar};
use deepdream::config::{DreamFlags, EncodeFlags, Job, Rule, Sourced, VideoFlags, Work, ZoomFlags};
use deepdream::device::Backend;
use deepdream::dream::animation::Animation;
use deepdream::dream::{self, DreamParams};
use deepdream::media::AudioSource;
use deepdream::model::{self, FeatureNet};
use deepdream::pipeline::{self, RenderJob};
use deepdream::sink::SinkOptions;
use deepdream::source::{Source, StillLoop};
use deepdream::{Error, Result, io};
use std::path::Path;
use std::time::Instant;

/// The opened device and the loaded model, the octave count fitted to an `h` x `w` input
/// (said when it changes), `LAYER:topK` channels picked on `picture` (the photo or a video's
/// first frame, when the job has such a term) and the job checked against the network.
/// The device and model of the last job, kept for the next image of a batch: each image then
/// reuses the loaded weights, and on a GPU the same device with its weights and constants
/// already there (opening it again would start a new CUDA context and upload them anew).
type Loaded = (deepdream::device::DeviceSpec, String, Backend, std::sync::Arc<dyn FeatureNet>);
static LOADED: std::sync::Mutex<Option<Loaded>> = std::sync::Mutex::new(None);

/// The job's device, opened, and its model, loaded: the last job's when they are the same.
fn open(job: &Job) -> Result<(Backend, std::sync::Arc<dyn FeatureNet>)> {
    let mut loaded = LOADED.lock().expect("loaded model lock");
    if let Some((spec, name, backend, net)) = loaded.as_ref()
        && *spec == job.device
        && *name == job.model
    {
        return Ok((backend.clone(), net.clone()));
    }
    *loaded = None; // the old model's memory goes before the new one loads
    let backend = job.device.open()?;
    let net: std::sync::Arc<dyn FeatureNet> = std::sync::Arc::from(model::load(&job.model)?);
    *loaded = Some((job.device, job.model.clone(), backend.clone(), net.clone()));
    Ok((backend, net))
}

fn prepare(
    job: &mut Job,
    (h, w): (u32, u32),
    picture: Option<&image::RgbImage>,
) -> Result<(Backend, std::sync::Arc<dyn FeatureNet>)> {
    let (backend, net) = open(job)?;
    let _ops = backend.enter();
    let size = (h as usize, w as usize);
    if let Some(picture) = picture {
        // Unknown layers are check_network's to report, with their origin.
        if job.unknown_layer(net.as_ref()).is_none() {
            for (term, channels) in job.pick_top_channels(net.as_ref(), picture, &backend.device)? {
                let list: Vec<String> = channels.iter().map(|c| c.to_string()).collect();
                tell!("{term}: channels {} (the most active on this picture)", list.join(", "));
            }
        }
    }
    if let Some((before, after)) = job.fit_octaves(net.as_ref(), size, &backend.device)? {
        let why = match after > before {
            true => "so the dream's features grow as large as on a smaller photo",
            false => "the smallest octave would be too small for the network",
        };
        let octaves = count(after, "octave");
        tell!("{w}x{h}: {octaves} instead of the recipe's {before}, {why} (--octaves N sets them exactly)");
    }
    job.check_network(net.as_ref(), size, &backend.device)?;
    Ok((backend, net))
}

/// Work above this many pixel-steps (about 3 s of the default model on a desktop CPU) is
/// announced with an estimate of its time before it starts.
const LONG_WORK: f64 = 2.5e6;

/// "1 step", "20 steps".
fn count(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// "3 octaves x 20 steps".
fn recipe(p: &DreamParams) -> String {
    format!("{} x {}", count(p.octaves, "octave"), count(p.steps, "step"))
}

/// The image files a batch names: files as given, a directory's images (by extension) in
/// name order.
fn batch_files(inputs: &[std::path::PathBuf]) -> Result<Vec<std::path::PathBuf>> {
    const IMAGES: &[&str] = &["png", "jpg", "jpeg", "bmp", "gif", "webp", "tif", "tiff"];
    let mut files = Vec::new();
    for input in inputs {
        if !input.is_dir() {
            files.push(input.clone());
            continue;
        }
        let entries = std::fs::read_dir(input)
            .map_err(|e| Error::Image { path: input.clone(), reason: format!("cannot list: {e}") })?;
        let mut found: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .filter(|p| {
                p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| IMAGES.contains(&e.to_ascii_lowercase().as_str()))
            })
            .collect();
        if found.is_empty() {
            return Err(Error::Image { path: input.clone(), reason: "a directory with no images in it".into() });
        }
        found.sort();
        files.extend(found);
    }
    Ok(files)
}

/// `dream` over a batch: every image into the directory `out_dir`, each under its own name
/// (PNG for a GIF), with the batch's progress and ETA (by pixels) before each. All outputs
/// are checked before the first dream: two inputs that would write one file, or an output
/// that is an input, stop the batch at once.
pub fn dream_batch(
    inputs: &[std::path::PathBuf],
    out_dir: &Path,
    quality: Option<u32>,
    flags: &DreamFlags,
    cancel: &Cancel,
) -> Result<()> {
    let files = batch_files(inputs)?;
    if out_dir.exists() && !out_dir.is_dir() {
        return Err(Error::Output {
            path: out_dir.to_owned(),
            reason: "a batch writes into a directory, and this is a file".into(),
        });
    }
    let mut jobs: Vec<(std::path::PathBuf, std::path::PathBuf, f64)> = Vec::new();
    for file in &files {
        let ext = file.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        let ext = match ext.as_deref() {
            Some(e @ ("png" | "jpg" | "jpeg" | "bmp" | "webp" | "tif" | "tiff")) => e.to_owned(),
            _ => "png".to_owned(),
        };
        let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let out = out_dir.join(format!("{stem}.{ext}"));
        if let Some((earlier, _, _)) = jobs.iter().find(|(_, o, _)| *o == out) {
            return Err(Error::usage(format!(
                "{} and {} would both be written to {}; dream them into separate directories",
                earlier.display(),
                file.display(),
                out.display()
            )));
        }
        if files.iter().any(|f| io::would_destroy(f, &out)) {
            return Err(Error::usage(format!("-o: {} would overwrite an input", out.display())));
        }
        let pixels = image::image_dimensions(file).map(|(w, h)| (w as f64) * (h as f64)).unwrap_or(1.0);
        jobs.push((file.clone(), out, pixels));
    }
    std::fs::create_dir_all(out_dir).map_err(|e| Error::Output { path: out_dir.to_owned(), reason: e.to_string() })?;
    let total: f64 = jobs.iter().map(|(_, _, p)| p).sum();
    let (start, mut done) = (Instant::now(), 0.0);
    for (k, (file, out, pixels)) in jobs.iter().enumerate() {
        let eta = match done > 0.0 {
            true => format!(", ETA {}", super::progress::human(start.elapsed().as_secs_f64() / done * (total - done))),
            false => String::new(),
        };
        tell!("image {}/{}: {} -> {}{eta}", k + 1, jobs.len(), file.display(), out.display());
        dream(&Input::File(file.clone()), out, quality, &Record::default(), flags, cancel)?;
        done += pixels;
    }
    tell!("dreamed {} images into {}", jobs.len(), out_dir.display());
    Ok(())
}

/// Says what a render or a long dream is about to do, with an estimate of the dream's time
/// from two timed steps on a small image (skipped for a short dream, which just runs).
fn announce(
    job: &Job,
    net: &dyn FeatureNet,
    backend: &Backend,
    (h, w): (usize, usize),
    frames: Option<u64>,
) -> Result<()> {
    let (first, rest) = match &job.work {
        Work::Still { params } => (params.as_ref(), None),
        Work::Zoom(z) => (&z.params, Some(&z.frame_params)),
        Work::Video(v) => (&v.params, Some(&v.frame_params)),
    };
    let later = frames.unwrap_or(1).saturating_sub(1) as f64;
    let work = first.pixel_steps((h, w)) + rest.map_or(0.0, |r| r.pixel_steps((h, w)) * later);
    if rest.is_none() && work < LONG_WORK {
        return Ok(());
    }
    let estimate = match work >= LONG_WORK {
        true => {
            let _ops = backend.enter();
            let per = dream::seconds_per_pixel_step(net, first, &backend.device)?;
            let dreaming = if rest.is_some() { " of dreaming" } else { "" };
            // An octave stopped by max_loss ends early: the estimate is then a bound.
            let about = if first.max_loss.is_some() { "at most about" } else { "about" };
            format!("; {about} {}{dreaming}", super::progress::human(per * work))
        }
        false => String::new(),
    };
    let model = net.name();
    match (&job.work, rest) {
        (Work::Still { .. }, _) | (_, None) => tell!("dreaming {w}x{h} on {model}: {}{estimate}", recipe(first)),
        (Work::Zoom(_), Some(rest)) => tell!(
            "zoom: {} frames of {w}x{h} on {model}: the first {}, then {} a frame{estimate}",
            frames.unwrap_or(1),
            recipe(first),
            recipe(rest)
        ),
        (Work::Video(_), Some(rest)) => {
            let n = frames.map_or_else(|| "the frames".to_owned(), |n| format!("{n} frames"));
            tell!(
                "video: {n} of {w}x{h} on {model}: {} on a shot's first frame, {} on the others{estimate}",
                recipe(first),
                recipe(rest)
            )
        }
    }
    Ok(())
}

/// What `dream` starts from: a photo, or a picture made from nothing.
pub enum Input {
    File(std::path::PathBuf),
    Generated { from: String, size: Option<String> },
}

impl Input {
    /// The path the job records (none for a generated picture).
    fn path(&self) -> &Path {
        match self {
            Input::File(path) => path,
            Input::Generated { .. } => Path::new(""),
        }
    }

    /// The picture and its metadata: the file's, or made from `noise` (seeded) or a colour.
    fn load(&self, max_size: Option<u32>, seed: u64) -> Result<(image::RgbImage, io::Metadata)> {
        let (from, size) = match self {
            Input::File(path) => return io::load_rgb_with_metadata(path, max_size),
            Input::Generated { from, size } => (from, size),
        };
        let (w, h) = match size {
            Some(s) => Sourced::flag("--size", s.clone()).parse(deepdream::config::parse_size)?,
            None => (640, 480),
        };
        let flat = |rgb: [u8; 3]| image::RgbImage::from_pixel(w as u32, h as u32, image::Rgb(rgb));
        let img = match from.to_ascii_lowercase().as_str() {
            "noise" => {
                use rand::{Rng, SeedableRng};
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                image::RgbImage::from_fn(w as u32, h as u32, |_, _| {
                    image::Rgb([0; 3].map(|_: u8| rng.random_range(108u8..=148)))
                })
            }
            "grey" | "gray" => flat([128; 3]),
            "black" => flat([0; 3]),
            "white" => flat([255; 3]),
            hex if hex.len() == 7 && hex.starts_with('#') && hex[1..].chars().all(|c| c.is_ascii_hexdigit()) => {
                let byte = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex digits");
                flat([byte(1), byte(3), byte(5)])
            }
            other => {
                return Err(Error::usage(format!(
                    "--from: '{other}' is neither noise nor a colour (grey, black, white, #RRGGBB)"
                )));
            }
        };
        Ok((img, io::Metadata::default()))
    }
}

/// `dream --record N`: the dream as it grows, every N steps, as an animation.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct Record {
    /// Record the picture every N steps (as the dream would end there), and the result, as an
    /// animation at 10 frames/s: OUTPUT's name with `-steps.gif` (a directory `-steps` of PNG
    /// frames in a build without video).
    #[arg(long, value_name = "N")]
    pub record: Option<usize>,
    /// Where --record writes: .gif, .mp4, .webm or a directory of PNG frames.
    #[arg(long, requires = "record", value_name = "PATH")]
    pub record_to: Option<std::path::PathBuf>,
}

impl Record {
    /// Every how many steps, and where, checked before any work.
    fn plan(&self, output: &Path, input: &Path) -> Result<Option<(usize, std::path::PathBuf)>> {
        let Some(every) = self.record else { return Ok(None) };
        let every = Sourced::flag("--record", every).check(Rule::Between(1.0, 1_000_000.0))?;
        let path = self.record_to.clone().unwrap_or_else(|| {
            let stem = output.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let name = if cfg!(feature = "video") { format!("{stem}-steps.gif") } else { format!("{stem}-steps") };
            output.with_file_name(name)
        });
        deepdream::sink::check_output(&path).map_err(|e| deepdream::config::Origin::Flag("--record-to").blame(e))?;
        if io::would_destroy(input, &path) || path == output {
            return Err(Error::usage(format!(
                "--record-to: {} would overwrite the input or the output",
                path.display()
            )));
        }
        Ok(Some((every, path)))
    }
}

/// A dream's progress that also keeps the picture every N steps.
struct Recording<'a> {
    bar: StepBar<'a>,
    every: usize,
    frames: Vec<image::RgbImage>,
}

impl dream::Progress for Recording<'_> {
    fn step(&mut self, info: &dream::StepInfo) -> bool {
        self.bar.step(info)
    }

    fn loss_every(&self) -> usize {
        self.bar.loss_every()
    }

    fn pictures_every(&self) -> usize {
        self.every
    }

    fn picture(&mut self, pixels: &candle_core::Tensor) -> Result<()> {
        self.frames.push(io::to_image(pixels)?);
        Ok(())
    }
}

/// Writes recorded pictures and the result, which is held for a second, at 10 frames/s.
fn write_recording(path: &Path, frames: &[image::RgbImage], result: &image::RgbImage) -> Result<()> {
    use deepdream::media::{FrameFormat, Rational};
    let format = FrameFormat {
        width: result.width(),
        height: result.height(),
        rate: Rational::new(10, 1),
        time_base: Rational::new(1, 10),
    };
    let mut sink = deepdream::sink::open(path, &format, &SinkOptions::default(), None)?;
    for (pts, frame) in frames.iter().chain([result; 10]).enumerate() {
        sink.write(frame, pts as i64)?;
    }
    sink.finish()
}

pub fn dream(
    input: &Input,
    output: &Path,
    quality: Option<u32>,
    record: &Record,
    flags: &DreamFlags,
    cancel: &Cancel,
) -> Result<()> {
    let mut job = Job::dream(input.path(), output, flags)?;
    let recording = record.plan(output, input.path())?;
    warn(&job);
    let quality =
        quality.map(|q| Sourced::flag("--quality", q).check(Rule::Between(1.0, 100.0)).map(|q| q as u8)).transpose()?;
    io::check_writable(output)?;
    if let Some(q) = quality.filter(|_| io::output_format(output).ok() != Some(image::ImageFormat::Jpeg)) {
        tell!("warning: --quality {q} applies to JPEG output only; {} is written losslessly", output.display());
    }
    let quality = quality.unwrap_or(io::DEFAULT_QUALITY);
    let (img, metadata) = input.load(job.max_size, job.params().seed)?;
    io::check_size(output, img.dimensions())?;
    let size = (img.height() as usize, img.width() as usize);
    let (backend, net) = prepare(&mut job, (img.height(), img.width()), Some(&img))?;
    announce(&job, net.as_ref(), &backend, size, None)?;
    let params = job.params();
    let _ops = backend.enter();
    let pixels = io::to_tensor(&img, &backend.device)?;
    let bar = StepBar::new(params, size, cancel);
    let every = recording.as_ref().map_or(0, |(every, _)| *every);
    let mut progress = Recording { bar, every, frames: Vec::new() };
    let start = Instant::now();
    let out = dream::dream(net.as_ref(), &pixels, params, &mut progress);
    let secs = start.elapsed().as_secs_f64(); // the dream alone, as the PyTorch peers time theirs
    progress.bar.finish();
    let out = out?;
    if out.losses.is_empty() {
        return Err(Error::usage(format!(
            "no ascent step was taken: the loss was past max_loss ({}) from the first step; raise --max-loss",
            params.max_loss.map_or("none".into(), |m| m.to_string())
        )));
    }
    let result = io::to_image(&out.pixels)?;
    io::save_still(&result, output, &io::StillOptions { quality, metadata })?;
    let (w, h, steps) = (img.width(), img.height(), count(out.losses.len(), "step"));
    tell!("wrote {} ({w}x{h}, {steps} in {secs:.1} s)", output.display());
    if let Some((_, path)) = &recording {
        write_recording(path, &progress.frames, &result)?;
        tell!("recorded {} pictures of the dream into {}", progress.frames.len() + 1, path.display());
    }
    Ok(())
}

/// A zoom or video job made ready to render: the job checked against its source and the
/// network, the source opened, the model loaded. `farm` shares it with `zoom` and `video`.
pub(super) struct Opened {
    pub job: Job,
    pub source: Box<dyn Source>,
    pub backend: Backend,
    pub net: std::sync::Arc<dyn FeatureNet>,
}

impl Opened {
    /// The settings of a shot's first frame and of the frames that continue it, the encoder,
    /// and a zoom loop's fade.
    pub fn frames(&self) -> Result<Frames<'_>> {
        match &self.job.work {
            Work::Zoom(plan) => Ok(Frames {
                params: &plan.params,
                frame_params: &plan.frame_params,
                encoder: &plan.encoder,
                loop_frames: plan.loop_frames,
                animation: Some(&plan.animation),
            }),
            Work::Video(plan) => Ok(Frames {
                params: &plan.params,
                frame_params: &plan.frame_params,
                encoder: &plan.encoder,
                loop_frames: 0,
                animation: Some(&plan.animation),
            }),
            Work::Still { .. } => Err(Error::internal("a still job has no frames")),
        }
    }
}

/// The zoom job its flags ask for, warned about, its timelines read.
fn zoom_job(input: &Path, output: &Path, flags: &DreamFlags, z: &ZoomFlags, e: &EncodeFlags) -> Result<Job> {
    let mut job = Job::zoom(input, output, flags, z, e)?;
    warn(&job);
    warn_ignored(output, e);
    animate_zoom(&mut job)?;
    Ok(job)
}

pub(super) fn open_zoom(
    input: &Path,
    output: &Path,
    flags: &DreamFlags,
    z: &ZoomFlags,
    e: &EncodeFlags,
) -> Result<Opened> {
    let mut job = zoom_job(input, output, flags, z, e)?;
    let image = io::load_rgb(input, job.max_size)?;
    let (backend, net) = prepare(&mut job, (image.height(), image.width()), Some(&image))?;
    let Work::Zoom(plan) = &job.work else { return Err(Error::internal("a zoom job without a zoom plan")) };
    // A loop renders its fade's frames beyond the output's.
    let sound = plan.audio.clone().map(|path| AudioSource {
        path,
        start: 0.0,
        duration: Some(plan.frames as f64 / plan.rate.as_f64()),
    });
    let source = Box::new(
        StillLoop::new(image, plan.rendered_frames(), plan.rate, plan.transform)?
            .with_animation(plan.animation.clone())
            .with_audio(sound),
    );
    Ok(Opened { job, source, backend, net })
}

pub fn zoom(
    input: &Path,
    output: &Path,
    flags: &DreamFlags,
    z: &ZoomFlags,
    e: &EncodeFlags,
    cancel: &Cancel,
) -> Result<()> {
    if z.dry_run {
        let job = zoom_job(input, output, flags, z, e)?;
        let Work::Zoom(plan) = &job.work else { return Err(Error::internal("a zoom job without a zoom plan")) };
        return print_timeline(&plan.animation, plan.rendered_frames(), plan.rate.as_f64());
    }
    let o = open_zoom(input, output, flags, z, e)?;
    render(&o.job, o.net.as_ref(), &o.backend, o.source.as_ref(), o.frames()?, e.log.as_deref(), cancel)
}

/// Reads a zoom's timelines at its frame rate, an audio curve from its `--audio`.
fn animate_zoom(job: &mut Job) -> Result<()> {
    let Work::Zoom(plan) = &job.work else { return Err(Error::internal("a zoom job without a zoom plan")) };
    let (rate, frames, audio) = (plan.rate.as_f64(), plan.rendered_frames(), plan.audio.clone());
    job.animate(rate, frames, &mut |n| match &audio {
        Some(path) => loudness(path, 0.0, rate, n),
        None => Err(Error::internal("an audio curve without --audio")),
    })
}

#[cfg(feature = "video")]
fn loudness(path: &Path, start: f64, fps: f64, frames: u64) -> Result<Vec<f64>> {
    deepdream::source::audio::loudness(path, start, fps, frames)
}

#[cfg(not(feature = "video"))]
fn loudness(_: &Path, _: f64, _: f64, _: u64) -> Result<Vec<f64>> {
    Err(Error::Unsupported("following a sound track needs ffmpeg (built without the `video` feature)".into()))
}

/// `--dry-run`: every animated setting's value each second and at each of its keys (each
/// frame, where a curve follows a sound track).
fn print_timeline(animation: &Animation, frames: u64, rate: f64) -> Result<()> {
    let tracks = &animation.tracks;
    say!("{} frames at {} fps; {} animated settings", frames, deepdream::error::number(rate), tracks.len());
    if tracks.is_empty() {
        return Ok(());
    }
    let mut rows: Vec<u64> = match tracks.iter().any(|(_, t)| t.is_dense()) {
        true => (0..frames).collect(),
        false => (0..).map(|s: u64| (s as f64 * rate).round() as u64).take_while(|&f| f < frames).collect(),
    };
    for (_, timeline) in tracks {
        if !timeline.is_dense() {
            rows.extend(timeline.keys().iter().map(|k| k.frame.round() as u64).filter(|&f| f < frames));
        }
    }
    rows.sort_unstable();
    rows.dedup();
    let names: Vec<String> = tracks.iter().map(|(t, _)| t.name()).collect();
    let widths: Vec<usize> = names.iter().map(|n| n.len().max(10)).collect();
    let head: Vec<String> = names.iter().zip(&widths).map(|(n, w)| format!("{n:>w$}")).collect();
    say!("{:>9} {:>7}  {}", "time", "frame", head.join("  "));
    for frame in rows {
        let values: Vec<String> =
            tracks.iter().zip(&widths).map(|((_, t), w)| format!("{:>w$.4}", t.at(frame as f64))).collect();
        say!("{:>8.2}s {:>7}  {}", frame as f64 / rate, frame, values.join("  "));
    }
    Ok(())
}

#[cfg(feature = "video")]
/// The video job its flags ask for, warned about, checked against the opened video, its
/// timelines read at the video's rate; the video opened with the options it decodes with.
#[cfg(feature = "video")]
fn video_job(
    input: &Path,
    output: &Path,
    flags: &DreamFlags,
    v: &VideoFlags,
    e: &EncodeFlags,
) -> Result<(Job, deepdream::source::video::VideoSource, deepdream::source::video::VideoOptions)> {
    use deepdream::source::video::{VideoOptions, VideoSource};
    let mut job = Job::video(input, output, flags, v, e)?;
    warn(&job);
    warn_ignored(output, e);
    let Work::Video(plan) = &job.work else { return Err(Error::internal("a video job without a video plan")) };
    let options = VideoOptions {
        max_size: job.max_size,
        start: plan.start,
        duration: plan.duration,
        scene_cut: plan.scene_cut,
        seek: None,
    };
    let source = VideoSource::open(input, options.clone(), plan.continuation)?;
    job.check_source(source.info())?;
    animate_video(&mut job, input, source.info())?;
    let Work::Video(plan) = &job.work else { return Err(Error::internal("a video job without a video plan")) };
    let source = source.with_animation(plan.animation.clone());
    Ok((job, source, options))
}

#[cfg(feature = "video")]
pub(super) fn open_video(
    input: &Path,
    output: &Path,
    flags: &DreamFlags,
    v: &VideoFlags,
    e: &EncodeFlags,
) -> Result<Opened> {
    let (mut job, source, options) = video_job(input, output, flags, v, e)?;
    // A `LAYER:topK` term picks its channels on the first frame.
    let first = match job.wants_top_channels() {
        true => {
            let mut first = None;
            deepdream::source::video::decode(input, &options, &mut |f| {
                first = Some(f.image);
                false
            })?;
            first
        }
        false => None,
    };
    let (backend, net) = prepare(&mut job, (source.info().height, source.info().width), first.as_ref())?;
    Ok(Opened { job, source: Box::new(source), backend, net })
}

/// Reads a video's timelines at its frame rate, an audio curve from its own sound.
#[cfg(feature = "video")]
fn animate_video(job: &mut Job, input: &Path, info: &deepdream::source::SourceInfo) -> Result<()> {
    let Work::Video(plan) = &job.work else { return Err(Error::internal("a video job without a video plan")) };
    let (rate, start) = (info.rate.as_f64(), plan.start.unwrap_or(0.0));
    let frames =
        job.frame_count(rate, info.frames).unwrap_or_else(|| (info.seconds.unwrap_or(0.0) * rate).ceil() as u64);
    job.animate(rate, frames, &mut |n| loudness(input, start, rate, n))
}

#[cfg(feature = "video")]
fn video_dry_run(input: &Path, output: &Path, flags: &DreamFlags, v: &VideoFlags, e: &EncodeFlags) -> Result<()> {
    let (job, source, _) = video_job(input, output, flags, v, e)?;
    let info = source.info();
    let frames = job.frame_count(info.rate.as_f64(), info.frames).unwrap_or(0);
    let Work::Video(plan) = &job.work else { return Err(Error::internal("a video job without a video plan")) };
    print_timeline(&plan.animation, frames, info.rate.as_f64())
}

#[cfg(not(feature = "video"))]
fn video_dry_run(_: &Path, _: &Path, _: &DreamFlags, _: &VideoFlags, _: &EncodeFlags) -> Result<()> {
    Err(Error::Unsupported("this build has no video support (built without the `video` feature)".into()))
}

#[cfg(not(feature = "video"))]
pub(super) fn open_video(_: &Path, _: &Path, _: &DreamFlags, _: &VideoFlags, _: &EncodeFlags) -> Result<Opened> {
    Err(Error::Unsupported("this build has no video support (built without the `video` feature)".into()))
}

pub fn video(
    input: &Path,
    output: &Path,
    flags: &DreamFlags,
    v: &VideoFlags,
    e: &EncodeFlags,
    cancel: &Cancel,
) -> Result<()> {
    if v.dry_run {
        return video_dry_run(input, output, flags, v, e);
    }
    let o = open_video(input, output, flags, v, e)?;
    render(&o.job, o.net.as_ref(), &o.backend, o.source.as_ref(), o.frames()?, e.log.as_deref(), cancel)
}

/// `--log FILE`: the render's progress, and one JSON line per dreamed frame with the settings
/// it was dreamed with: those of the dream as the pipeline passes them, and a timeline's zoom
/// transform, blend or warp as the source applies them (the same timelines, at that frame).
struct SettingsLog<'a> {
    bar: FrameBar<'a>,
    file: Option<(std::io::BufWriter<std::fs::File>, std::path::PathBuf)>,
    failed: Option<String>,
    rate: f64,
    animation: Animation,
    /// A zoom's constant transform (the timelines move it).
    transform: Option<deepdream::dream::ZoomTransform>,
}

impl<'a> SettingsLog<'a> {
    fn open(path: Option<&Path>, job: &Job, rate: f64, bar: FrameBar<'a>) -> Result<SettingsLog<'a>> {
        let file = match path {
            Some(p) => {
                // A resumed render adds the frames it dreams to the log of the interrupted one.
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .append(job.resume)
                    .truncate(!job.resume)
                    .open(p)
                    .map_err(|e| Error::Output { path: p.to_owned(), reason: format!("--log: {e}") })?;
                Some((std::io::BufWriter::new(f), p.to_owned()))
            }
            None => None,
        };
        let (animation, transform) = match &job.work {
            Work::Zoom(z) => (z.animation.clone(), Some(z.transform)),
            Work::Video(v) => (v.animation.clone(), None),
            Work::Still { .. } => (Animation::default(), None),
        };
        Ok(SettingsLog { bar, file, failed: None, rate, animation, transform })
    }

    /// The progress display back; a log that could not be written is said now.
    fn close(mut self) -> FrameBar<'a> {
        use std::io::Write as _;
        if let Some((mut f, path)) = self.file.take()
            && let Err(e) = f.flush()
        {
            self.failed.get_or_insert(format!("{}: {e}", path.display()));
        }
        if let Some(why) = &self.failed {
            tell!("warning: the settings log is incomplete: {why}");
        }
        self.bar
    }
}

impl deepdream::pipeline::FrameProgress for SettingsLog<'_> {
    fn step(&mut self, info: &dream::StepInfo) -> bool {
        self.bar.step(info)
    }

    fn frame(&mut self, done: u64, total: Option<u64>) -> bool {
        self.bar.frame(done, total)
    }

    fn resumed(&mut self, frames: u64) {
        self.bar.resumed(frames)
    }

    fn finishing(&mut self) {
        self.bar.finishing()
    }

    fn dreaming(&mut self, index: u64, p: &DreamParams) {
        use deepdream::dream::animation::Target;
        use std::io::Write as _;
        let Some((f, path)) = &mut self.file else { return };
        let layers: serde_json::Map<String, serde_json::Value> = p
            .objective
            .layers
            .iter()
            .map(|t| {
                let name = t.channel.map_or(t.layer.clone(), |c| format!("{}:{c}", t.layer));
                (name, serde_json::json!(t.weight))
            })
            .collect();
        let mut line = serde_json::json!({
            "frame": index,
            "step": p.step,
            "steps": p.steps,
            "jitter": p.jitter,
            "layers": layers,
            "classes": p.objective.classes,
        });
        if self.rate > 0.0 {
            line["time"] = serde_json::json!(index as f64 / self.rate);
        }
        if let Some(base) = self.transform {
            let t = self.animation.transform(index, base);
            line["zoom"] = serde_json::json!(t.zoom);
            line["rotate"] = serde_json::json!(t.rotate_deg);
            line["pan"] = serde_json::json!([t.pan.0, t.pan.1]);
        }
        for (target, key) in [(Target::Blend, "blend"), (Target::Warp, "warp")] {
            if let Some(v) = self.animation.value(&target, index) {
                line[key] = serde_json::json!(v);
            }
        }
        if let Err(e) = writeln!(f, "{line}") {
            self.failed.get_or_insert(format!("{}: {e}", path.display()));
        }
    }
}

/// Warns of flags the job ignores.
fn warn(job: &Job) {
    for w in &job.warnings {
        tell!("warning: {w}");
    }
}

/// Warns of encoder flags the output ignores.
fn warn_ignored(output: &Path, e: &EncodeFlags) {
    if let Ok(kind) = deepdream::sink::SinkKind::from_path(output) {
        for w in deepdream::sink::ignored_flags(kind, e.crf.is_some(), e.x264_preset.is_some()) {
            tell!("warning: {w}");
        }
    }
}

/// What a render does with each frame.
pub(super) struct Frames<'a> {
    pub params: &'a DreamParams,
    pub frame_params: &'a DreamParams,
    pub encoder: &'a SinkOptions,
    /// A seamless loop over this many frames (zoom --loop; 0: none).
    pub loop_frames: u64,
    /// A zoom's keyframed settings.
    pub animation: Option<&'a deepdream::dream::animation::Animation>,
}

/// Runs a render with Ctrl-C finishing the file, and reports how it went.
fn render(
    job: &Job,
    net: &dyn FeatureNet,
    backend: &Backend,
    source: &dyn Source,
    frames: Frames,
    log: Option<&Path>,
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
        loop_frames: frames.loop_frames,
        animation: frames.animation,
    };
    let info = source.info();
    let total = job.frame_count(info.rate.as_f64(), info.frames);
    let size = (info.height as usize, info.width as usize);
    announce(job, net, backend, size, total)?;
    let bar = FrameBar::new(total, frames.params, frames.frame_params, size, cancel);
    let mut logged = SettingsLog::open(log, job, info.rate.as_f64(), bar)?;
    let start = Instant::now();
    let summary = pipeline::render(&render, &mut logged);
    let bar = logged.close();
    bar.finish();
    let later = bar.later_frames();
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
        let later = later.map(|s| format!(", {s:.2} s per frame after the first")).unwrap_or_default();
        tell!("wrote {out} ({n} frames at {w}x{h}{resumed}; {per_frame:.2} s per frame{later}){stopped}");
    }
    if s.interrupted {
        return Err(Error::Cancelled);
    }
    Ok(())
}
