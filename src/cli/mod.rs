//! The command line, by concern: the clap types here, progress displays in [`progress`], one
//! module per command family. Each command resolves its flags into a validated job first
//! (`deepdream::config`), then works.

/// `println!` that reports a closed or full standard output as an error instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err(|e| deepdream::Error::Write {
            path: "standard output".into(),
            reason: e.to_string(),
        })?
    }};
}

/// `eprintln!` that never panics: with stderr closed or full there is nobody to tell.
macro_rules! tell {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let line = format!($($arg)*);
        let _ = writeln!(std::io::stderr().lock(), "{}", deepdream::error::printable(&line));
    }};
}

mod farm;
mod inspect;
mod models;
mod progress;
mod render;

use clap::{Parser, Subcommand};
use deepdream::Result;
use deepdream::config::{DreamFlags, EncodeFlags, VideoFlags, ZoomFlags};
use deepdream::model::DEFAULT_MODEL;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Parser)]
#[command(
    name = "deepdream",
    version,
    about = "DeepDream renderer: octave gradient ascent on pretrained ImageNet networks"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the largest command's flags costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Dream a still image. The output keeps the input's colour profile and EXIF (with the
    /// orientation applied to the pixels) where its format can hold them.
    Dream {
        /// The image (PNG, JPEG, BMP, GIF, WebP, TIFF); or none, with --from. Several images
        /// or a directory of them (a batch) dream into the directory -o names, each under its
        /// own name (PNG for a GIF).
        #[arg(required_unless_present = "from", num_args = 1..)]
        input: Vec<PathBuf>,
        /// Dream from nothing instead of a photo: `noise` (grey with seeded noise, --seed),
        /// a flat colour (`grey`, `black`, `white`, `#RRGGBB`).
        #[arg(long, conflicts_with = "input", value_name = "noise|COLOUR")]
        from: Option<String>,
        /// The size of a picture dreamed --from nothing, WxH in pixels (default 640x480).
        #[arg(long, requires = "from", value_name = "WxH")]
        size: Option<String>,
        /// Output image (.png, .jpg, .bmp, .tif, .webp).
        #[arg(short, long)]
        output: PathBuf,
        /// JPEG quality, 1..100 (default 95).
        #[arg(long, allow_negative_numbers = true)]
        quality: Option<u32>,
        #[command(flatten)]
        record: render::Record,
        #[command(flatten)]
        dream: DreamFlags,
    },
    /// Render an infinite fractal zoom from a still image into a GIF, MP4, WebM or PNG frames.
    Zoom {
        /// The image (PNG, JPEG, BMP, GIF, WebP, TIFF).
        input: PathBuf,
        /// Output: .gif, .mp4, .mov, .mkv, .webm, or a directory for PNG frames.
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        zoom: ZoomFlags,
        #[command(flatten)]
        encode: EncodeFlags,
        #[command(flatten)]
        dream: DreamFlags,
    },
    /// Dream every frame of a video (audio kept in MP4, MOV, MKV and WebM output).
    Video {
        /// The video: any container and codec ffmpeg decodes, or an animated GIF.
        input: PathBuf,
        /// Output: .mp4, .mov, .mkv (the audio copied), .webm (the audio as Opus), .gif, or a
        /// directory for PNG frames.
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        video: VideoFlags,
        #[command(flatten)]
        encode: EncodeFlags,
        #[command(flatten)]
        dream: DreamFlags,
    },
    /// Cut a video render (or a zoom) into chunks for a render farm: Slurm job arrays, GNU
    /// parallel, Kubernetes Indexed Jobs. Takes the flags of `video` (or, as `plan zoom`, of
    /// `zoom`), decodes the input once, writes the plan beside the output and prints the
    /// number of chunks. Then `render-chunk OUT I` for I in 0..N anywhere, and `merge OUT`.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Plan {
        #[command(subcommand)]
        zoom: Option<PlanZoom>,
        /// The video: any container and codec ffmpeg decodes, or an animated GIF.
        #[arg(required = true)]
        input: Option<PathBuf>,
        /// The output `merge` will write: .mp4, .mov, .mkv, .webm, .gif, or a directory for
        /// PNG frames. The plan and the chunks go in a directory beside it.
        #[arg(short, long, required = true)]
        output: Option<PathBuf>,
        #[command(flatten)]
        farm: farm::FarmFlags,
        #[command(flatten)]
        video: VideoFlags,
        #[command(flatten)]
        encode: EncodeFlags,
        #[command(flatten)]
        dream: DreamFlags,
    },
    /// Render chunk I of a plan (idempotent: a done chunk does nothing; resumes after a kill).
    RenderChunk {
        /// The output named to `plan`.
        output: PathBuf,
        /// The chunk, 0 to N-1 (e.g. $SLURM_ARRAY_TASK_ID, $JOB_COMPLETION_INDEX, GNU
        /// parallel's {}).
        index: usize,
        /// Where to dream, overriding the plan's: e.g. cuda:1 for the second GPU.
        #[arg(long, value_name = "DEVICE")]
        device: Option<String>,
    },
    /// Encode the chunks of a plan, all done, into the output (audio kept), then remove them.
    Merge {
        /// The output named to `plan`.
        output: PathBuf,
        /// Keep the plan and the chunks after the merge.
        #[arg(long)]
        keep_chunks: bool,
    },
    /// Print the ImageNet classes a model sees in an image. By default the image is prepared
    /// as the model was evaluated (torchvision's and timm's transform): the shorter side
    /// resized to the model's input side / 0.875, then the centre square of that side (224
    /// pixels; 240 and 260 for EfficientNet-Lite1/2, 299 for InceptionV3).
    Classify {
        /// The image (PNG, JPEG, BMP, GIF, WebP, TIFF).
        input: PathBuf,
        /// How many classes to print.
        #[arg(long, default_value_t = 5)]
        top: usize,
        /// The model (`deepdream models` lists them).
        #[arg(long, default_value = DEFAULT_MODEL)]
        model: String,
        /// Classify the whole image, shrunk so its longer side is at most this many pixels,
        /// instead of the centre crop.
        #[arg(long, value_name = "PX")]
        max_size: Option<u32>,
    },
    /// List the layers a model can dream on, with their shapes.
    Layers {
        /// The model (`deepdream models` lists them).
        #[arg(long, default_value = DEFAULT_MODEL)]
        model: String,
        /// Input size for the shapes, WxH in pixels.
        #[arg(long, default_value = "224x224", value_name = "WxH")]
        size: String,
    },
    /// List the model zoo, or import weights.
    Models {
        #[command(subcommand)]
        action: Option<models::ModelsAction>,
    },
    /// List the built-in presets.
    Presets,
    /// Time dream steps (forward + input gradient) on a random image.
    Bench(inspect::BenchArgs),
    /// Compare the fused kernels on a device with their CPU versions (for a GPU machine).
    #[command(hide = true)]
    CheckKernels {
        /// cuda, cuda:N or cpu-portable.
        #[arg(long, default_value = "cuda")]
        device: String,
    },
}

#[derive(Subcommand)]
enum PlanZoom {
    /// Plan a zoom (one chunk: a zoom is strictly sequential).
    Zoom {
        /// The image (PNG, JPEG, BMP, GIF, WebP, TIFF).
        input: PathBuf,
        /// Output: .gif, .mp4, .mov, .mkv, .webm, or a directory for PNG frames.
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        farm: farm::FarmFlags,
        #[command(flatten)]
        zoom: ZoomFlags,
        #[command(flatten)]
        encode: EncodeFlags,
        #[command(flatten)]
        dream: DreamFlags,
    },
}

/// Raised by Ctrl-C or SIGTERM; the progress displays read it and answer "stop". Armed once
/// a progress display exists (the dream or render has begun and will look at it); before
/// that (loading, a FIFO that never opens, a huge decode) a signal ends the process at once.
#[derive(Clone, Default)]
pub struct Cancel {
    raised: Arc<AtomicBool>,
    armed: Arc<AtomicBool>,
}

impl Cancel {
    pub fn raise(&self) {
        self.raised.store(true, Ordering::Relaxed);
    }

    pub fn raised(&self) -> bool {
        self.raised.load(Ordering::Relaxed)
    }

    /// Someone now reads [`Cancel::raised`] and stops cleanly.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::Relaxed);
    }

    pub fn armed(&self) -> bool {
        self.armed.load(Ordering::Relaxed)
    }
}

pub fn run(cli: Cli, cancel: &Cancel) -> Result<()> {
    match cli.command {
        Command::Dream { input, from, size, output, quality, record, dream } => match (input.as_slice(), from) {
            ([path], _) if !path.is_dir() => {
                render::dream(&render::Input::File(path.clone()), &output, quality, &record, &dream, cancel)
            }
            ([], from) => {
                let input = render::Input::Generated { from: from.unwrap_or_default(), size };
                render::dream(&input, &output, quality, &record, &dream, cancel)
            }
            (_, _) if record.record.is_some() => {
                Err(deepdream::Error::usage("--record: records one dream, not a batch"))
            }
            (paths, _) => render::dream_batch(paths, &output, quality, &dream, cancel),
        },
        Command::Zoom { input, output, zoom, encode, dream } => {
            render::zoom(&input, &output, &dream, &zoom, &encode, cancel)
        }
        Command::Video { input, output, video, encode, dream } => {
            render::video(&input, &output, &dream, &video, &encode, cancel)
        }
        Command::Plan { zoom: Some(PlanZoom::Zoom { input, output, farm: f, zoom, encode, dream }), .. } => {
            farm::plan(farm::Planned::Zoom { input, output, dream, zoom, encode }, &f)
        }
        Command::Plan { zoom: None, input, output, farm: f, video, encode, dream } => {
            let (Some(input), Some(output)) = (input, output) else {
                return Err(deepdream::Error::usage("plan: give the input and -o OUTPUT"));
            };
            farm::plan(farm::Planned::Video { input, output, dream, video, encode }, &f)
        }
        Command::RenderChunk { output, index, device } => farm::render_chunk(&output, index, device.as_deref(), cancel),
        Command::Merge { output, keep_chunks } => farm::merge(&output, keep_chunks),
        Command::Classify { input, top, model, max_size } => inspect::classify(&input, top, &model, max_size),
        Command::Layers { model, size } => inspect::layers(&model, &size),
        Command::Models { action } => models::run(action),
        Command::Presets => models::presets(),
        Command::Bench(args) => inspect::bench(&args),
        Command::CheckKernels { device } => inspect::check_kernels(&device),
    }
}
