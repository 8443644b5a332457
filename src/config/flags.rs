//! The command-line flags that become settings, declared once with their help text. `main`
//! parses them (clap); [`super::job`] resolves them with the preset into a validated job.

use std::path::PathBuf;

/// The dream settings every rendering command shares: a preset and overrides of it.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct DreamFlags {
    /// Built-in preset name (`deepdream presets` lists them) or a TOML file. Default: classic
    /// for dream, zoom for zoom, video for video.
    #[arg(long, value_name = "NAME|FILE")]
    pub preset: Option<String>,
    /// Where to dream: cpu (default), cuda, cuda:N (builds with the `cuda` feature), or
    /// cpu-portable (the GPU's code path run on the CPU).
    #[arg(long)]
    pub device: Option<String>,
    #[arg(long)]
    pub model: Option<String>,
    /// Layers and weights, e.g. block5=1,block10=1; LAYER:N targets channel N.
    #[arg(long)]
    pub layers: Option<String>,
    /// ImageNet classes to grow, by name or index, e.g. banana or 954=1,tabby=0.5.
    #[arg(long = "class")]
    pub classes: Option<String>,
    /// Class scores: log-softmax (default) or logits.
    #[arg(long)]
    pub class_mode: Option<String>,
    /// Guide image: the dream's features move toward its features.
    #[arg(long)]
    pub guide: Option<PathBuf>,
    /// Layers the guide acts on, e.g. block8=1.
    #[arg(long)]
    pub guide_layers: Option<String>,
    /// dot (best-match dot product, default) or l2 (feature distance).
    #[arg(long)]
    pub guide_mode: Option<String>,
    #[arg(long, allow_negative_numbers = true)]
    pub guide_weight: Option<f32>,
    /// Style image (Gram-matrix style loss).
    #[arg(long)]
    pub style: Option<PathBuf>,
    /// Layers whose Gram matrices are matched, e.g. block1,block3,block5.
    #[arg(long)]
    pub style_layers: Option<String>,
    #[arg(long, allow_negative_numbers = true)]
    pub style_weight: Option<f32>,
    /// Layers whose features keep the input's content, e.g. block10.
    #[arg(long)]
    pub content_layers: Option<String>,
    #[arg(long, allow_negative_numbers = true)]
    pub content_weight: Option<f32>,
    /// Total-variation penalty weight (smoothness).
    #[arg(long, allow_negative_numbers = true)]
    pub tv: Option<f32>,
    /// Blur the gradient with this sigma (pixels).
    #[arg(long, allow_negative_numbers = true)]
    pub grad_blur: Option<f64>,
    /// Blur the image after each step with this sigma (pixels).
    #[arg(long, allow_negative_numbers = true)]
    pub image_blur: Option<f64>,
    /// Decay the image toward grey by this fraction per step.
    #[arg(long, allow_negative_numbers = true)]
    pub decay: Option<f64>,
    /// Laplacian-pyramid gradient normalisation with this many levels.
    #[arg(long, allow_negative_numbers = true)]
    pub laplacian: Option<usize>,
    /// Clip to the valid pixel range only at the end, not after every step.
    #[arg(long)]
    pub no_clip: bool,
    #[arg(long, allow_negative_numbers = true)]
    pub octaves: Option<usize>,
    #[arg(long, allow_negative_numbers = true)]
    pub octave_scale: Option<f64>,
    /// Ascent steps per octave.
    #[arg(long, allow_negative_numbers = true)]
    pub steps: Option<usize>,
    /// Step size on the gradient normalised by its mean absolute value.
    #[arg(long, allow_negative_numbers = true)]
    pub step: Option<f64>,
    /// Stop an octave once the loss passes this.
    #[arg(long, allow_negative_numbers = true)]
    pub max_loss: Option<f64>,
    /// Largest random shift per step, in pixels.
    #[arg(long, allow_negative_numbers = true)]
    pub jitter: Option<usize>,
    #[arg(long, allow_negative_numbers = true)]
    pub seed: Option<u64>,
    /// Shrink the input so its longer side is at most this many pixels.
    #[arg(long, allow_negative_numbers = true)]
    pub max_size: Option<u32>,
    /// Dream images larger than this many pixels a side in overlapping tiles, blended without
    /// seams, to bound memory (default 1024; 0: never tile).
    #[arg(long, allow_negative_numbers = true)]
    pub tile: Option<usize>,
}

/// Encoder flags shared by `zoom` and `video`.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct EncodeFlags {
    /// x264/VP9 constant rate factor, 0..63 (lower is better; default 18).
    #[arg(long, allow_negative_numbers = true)]
    pub crf: Option<u32>,
    /// x264 preset (ultrafast .. veryslow; default medium).
    #[arg(long)]
    pub x264_preset: Option<String>,
    /// Continue an interrupted render where it stopped.
    #[arg(long)]
    pub resume: bool,
}

/// `zoom`'s own flags.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct ZoomFlags {
    /// Number of frames (default 48).
    #[arg(long, allow_negative_numbers = true)]
    pub frames: Option<u64>,
    /// Seconds of output instead of --frames.
    #[arg(long, allow_negative_numbers = true, conflicts_with = "frames")]
    pub duration: Option<f64>,
    /// Frames per second: 25, 29.97 or 30000/1001 (default 25).
    #[arg(long)]
    pub fps: Option<String>,
    /// Magnification per frame (default 1.04; below 1 zooms out, the picture mirrored beyond
    /// its edges for the dream to paint over).
    #[arg(long, allow_negative_numbers = true)]
    pub zoom: Option<f64>,
    /// Magnification per second, independent of fps.
    #[arg(long, allow_negative_numbers = true, conflicts_with = "zoom")]
    pub zoom_per_second: Option<f64>,
    /// Rotation per frame in degrees, counter-clockwise (negative: clockwise; default 0).
    #[arg(long, allow_negative_numbers = true)]
    pub rotate: Option<f64>,
    /// Pan per frame in pixels, X,Y: the view moves right by X and down by Y each frame
    /// (default 0,0).
    #[arg(long, allow_hyphen_values = true)]
    pub pan: Option<String>,
    /// Ascent steps on each frame after the first (default 5; 0: zoom without dreaming).
    #[arg(long, allow_negative_numbers = true)]
    pub frame_steps: Option<usize>,
}

/// `video`'s own flags.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct VideoFlags {
    /// How each frame continues the previous dreamed one: `flow` (carry the dream along the
    /// optical flow, so it moves with the scene, then dream lightly) or `blend` (mix the
    /// previous dream in, then dream fully: the dream stays on the screen). Default: flow.
    #[arg(long)]
    pub motion: Option<String>,
    /// With --motion flow: weight of the carried dream on pixels the flow can follow (0..1;
    /// default 0.99). Lower lets more of the new frame through, and the dream fades.
    #[arg(long, allow_negative_numbers = true)]
    pub warp: Option<f64>,
    /// With --motion flow: a frame where the flow can follow fewer than this fraction of the
    /// pixels (0..1; default 0.2) is a scene cut and gets the full dream afresh.
    #[arg(long, allow_negative_numbers = true)]
    pub cut: Option<f64>,
    /// With --motion flow: octaves of the light dream on continuing frames (default: 2, or
    /// --octaves if fewer).
    #[arg(long, allow_negative_numbers = true)]
    pub frame_octaves: Option<usize>,
    /// With --motion flow: ascent steps per octave on continuing frames (default 2; 0: carry
    /// the dream without dreaming further).
    #[arg(long, allow_negative_numbers = true)]
    pub frame_steps: Option<usize>,
    /// With --motion flow: step size on continuing frames (default: a third of --step).
    #[arg(long, allow_negative_numbers = true)]
    pub frame_step: Option<f64>,
    /// With --motion blend: mix this much of the previous dreamed frame into each frame (0..1;
    /// default 0). Given without --motion, it chooses blend.
    #[arg(long, allow_negative_numbers = true)]
    pub blend: Option<f64>,
    /// Start at this many seconds.
    #[arg(long, allow_negative_numbers = true)]
    pub start: Option<f64>,
    /// Seconds to render.
    #[arg(long, allow_negative_numbers = true)]
    pub duration: Option<f64>,
}
