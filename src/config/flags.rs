//! The command-line flags that become settings, declared once with their help text. `main`
//! parses them (clap); [`super::job`] resolves them with the preset into a validated job.

use std::path::PathBuf;

/// The dream settings every rendering command shares: a preset and overrides of it.
#[derive(clap::Args, Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct DreamFlags {
    /// Built-in preset name (`deepdream presets` lists them) or a TOML file. Default: classic
    /// for dream, zoom for zoom, video for video.
    #[arg(long, value_name = "NAME|FILE")]
    pub preset: Option<String>,
    /// Where to dream: cpu (default), cuda, cuda:N (builds with the `cuda` feature), or
    /// cpu-portable (the GPU's code path run on the CPU).
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<String>,
    /// The network: efficientnet-lite0 (default, built in), efficientnet-lite1,
    /// efficientnet-lite2, mobilenet-v2, inception-v3-tf2015, inception-v3, googlenet, vgg16,
    /// vgg19, resnet50 (`deepdream models` says which are installed). With no --preset or
    /// --layers, each dreams on its own default layers.
    #[arg(long, value_name = "NAME")]
    pub model: Option<String>,
    /// Layers and weights, e.g. block5=1,block10=1 (a bare name weighs 1); LAYER:N targets
    /// channel N, LAYER:topK the K channels most active on the picture. `deepdream layers --model M` lists a model's layers. Default: the preset's.
    #[arg(long, value_name = "LAYER=W,...")]
    pub layers: Option<String>,
    /// ImageNet classes to grow, by name or index, e.g. banana or 954=1,tabby=0.5 (replaces
    /// the preset's layers).
    #[arg(long = "class", value_name = "CLASS=W,...")]
    pub classes: Option<String>,
    /// Class scores: log-softmax (default) or logits.
    #[arg(long, value_name = "MODE")]
    pub class_mode: Option<String>,
    /// Guide image: the dream's features move toward its features (replaces the preset's
    /// layers; needs --guide-layers).
    #[arg(long, value_name = "IMAGE")]
    pub guide: Option<PathBuf>,
    /// Layers the guide acts on, e.g. block8=1.
    #[arg(long, value_name = "LAYER=W,...")]
    pub guide_layers: Option<String>,
    /// dot (best-match dot product, default) or l2 (feature distance).
    #[arg(long, value_name = "MODE")]
    pub guide_mode: Option<String>,
    /// Weight of the guide term, -10000..10000 (default 1).
    #[arg(long, allow_negative_numbers = true, value_name = "W")]
    pub guide_weight: Option<f32>,
    /// Style image (Gram-matrix style loss; replaces the preset's layers; needs
    /// --style-layers).
    #[arg(long, value_name = "IMAGE")]
    pub style: Option<PathBuf>,
    /// Layers whose Gram matrices are matched, e.g. block1,block3,block5.
    #[arg(long, value_name = "LAYER=W,...")]
    pub style_layers: Option<String>,
    /// Weight of the style term, -10000..10000 (default 1).
    #[arg(long, allow_negative_numbers = true, value_name = "W")]
    pub style_weight: Option<f32>,
    /// Layers whose features keep the input's content, e.g. block10.
    #[arg(long, value_name = "LAYER=W,...")]
    pub content_layers: Option<String>,
    /// Weight of the content term, -10000..10000 (default 1).
    #[arg(long, allow_negative_numbers = true, value_name = "W")]
    pub content_weight: Option<f32>,
    /// Total-variation penalty weight, 0..10000 (smoothness; default: the preset's, else 0).
    #[arg(long, allow_negative_numbers = true, value_name = "W")]
    pub tv: Option<f32>,
    /// Blur the gradient with this sigma, in pixels: 0 (off, the default) or 0.1..20.
    #[arg(long, allow_negative_numbers = true, value_name = "SIGMA")]
    pub grad_blur: Option<f64>,
    /// Blur the image after each step with this sigma, in pixels: 0 (off, the default) or
    /// 0.1..20.
    #[arg(long, allow_negative_numbers = true, value_name = "SIGMA")]
    pub image_blur: Option<f64>,
    /// Decay the image toward grey by this fraction per step, 0..1 (default 0).
    #[arg(long, allow_negative_numbers = true, value_name = "FRACTION")]
    pub decay: Option<f64>,
    /// Laplacian-pyramid gradient normalisation with this many levels, 0..16 (0: off, the
    /// default).
    #[arg(long, allow_negative_numbers = true, value_name = "LEVELS")]
    pub laplacian: Option<usize>,
    /// Transformation robustness: each step the network sees the image scaled by a random
    /// factor within this fraction, 0..1 (0.1: 0.91x to 1.1x; default 0, off), and the
    /// gradient is scaled back. Grows what any network sees, not one network's patterns.
    #[arg(long, allow_negative_numbers = true, value_name = "FRACTION")]
    pub scale_jitter: Option<f64>,
    /// Transformation robustness: a random turn within this many degrees each step, 0..180
    /// (default 0, off).
    #[arg(long, allow_negative_numbers = true, value_name = "DEGREES")]
    pub rotate_jitter: Option<f64>,
    /// Step along the colour axes natural images vary in (mostly brightness; Lucid's
    /// decorrelated colour space) rather than each channel alone, which paints rainbows.
    #[arg(long, conflicts_with = "no_decorrelate")]
    pub decorrelate: bool,
    /// Step each colour channel on its own, even where the preset decorrelates (the
    /// patterns, textures, objects and class-banana presets do).
    #[arg(long)]
    pub no_decorrelate: bool,
    /// Clip to the valid pixel range only at the end, not after every step.
    #[arg(long)]
    pub no_clip: bool,
    /// Octaves, 1..64: the image is dreamed at this many sizes, smallest first. Given here,
    /// exact; from the preset (classic: 3, zoom: 3, video: 2), fitted to the picture: one more
    /// per --octave-scale a picture's longer side is above 640 pixels, fewer where the
    /// smallest would be too small for the network.
    #[arg(long, allow_negative_numbers = true, value_name = "N")]
    pub octaves: Option<usize>,
    /// Size ratio between octaves, 1..16 (preset's; classic 1.4).
    #[arg(long, allow_negative_numbers = true, value_name = "RATIO")]
    pub octave_scale: Option<f64>,
    /// Ascent steps per octave, at least 1 (preset's; classic 20, zoom 10, video 4).
    #[arg(long, allow_negative_numbers = true, value_name = "N")]
    pub steps: Option<usize>,
    /// Step size on the gradient normalised by its mean absolute value, > 0 (preset's;
    /// classic 0.01).
    #[arg(long, allow_negative_numbers = true, value_name = "SIZE")]
    pub step: Option<f64>,
    /// Stop an octave once the loss passes this (preset's; classic 600; dropped when
    /// --layers, --class, --guide or --style replace the preset's objective).
    #[arg(long, allow_negative_numbers = true, value_name = "LOSS")]
    pub max_loss: Option<f64>,
    /// Largest random shift per step, in pixels, 0..4096 (preset's; classic 0, zoom 8).
    #[arg(long, allow_negative_numbers = true, value_name = "PX")]
    pub jitter: Option<usize>,
    /// Seed of the jitter (preset's, else 0): the same seed gives the same picture. Frame k
    /// of a render uses seed + k.
    #[arg(long, allow_negative_numbers = true, value_name = "N")]
    pub seed: Option<u64>,
    /// Shrink the input so its longer side is at most this many pixels (preset's; zoom 480,
    /// video 640; classic: full size).
    #[arg(long, allow_negative_numbers = true, value_name = "PX")]
    pub max_size: Option<u32>,
    /// Keep the input's colours: only the dream's brightness is kept, as Google's and
    /// neural-dream's `original_colors` (preset: `[dream] original_colors = true`).
    #[arg(long)]
    pub original_colors: bool,
    /// Dream images larger than this many pixels a side in overlapping tiles, blended without
    /// seams, to bound memory: 0 (never tile) or at least 256 (default 1024).
    #[arg(long, allow_negative_numbers = true, value_name = "PX")]
    pub tile: Option<usize>,
}

/// Encoder flags shared by `zoom` and `video`.
#[derive(clap::Args, Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct EncodeFlags {
    /// x264/VP9 constant rate factor, 0..63 (lower is better; default 18, the zoom and video
    /// presets 20). MP4, MOV, MKV and WebM only.
    #[arg(long, allow_negative_numbers = true, value_name = "CRF")]
    pub crf: Option<u32>,
    /// x264 preset, ultrafast .. veryslow (default medium). MP4, MOV and MKV only.
    #[arg(long, value_name = "PRESET")]
    pub x264_preset: Option<String>,
    /// Continue an interrupted render where it stopped.
    #[arg(long)]
    pub resume: bool,
    /// Write one JSON line per dreamed frame to FILE: its index and time, and the settings it
    /// was dreamed with (step, steps, jitter, layer and class weights, and a timeline's zoom,
    /// turn, pan, blend or warp).
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
}

/// `zoom`'s own flags.
#[derive(clap::Args, Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct ZoomFlags {
    /// Number of frames, 1..1000000 (preset's; zoom 96; else 48).
    #[arg(long, allow_negative_numbers = true, value_name = "N")]
    pub frames: Option<u64>,
    /// Seconds of output instead of --frames.
    #[arg(long, allow_negative_numbers = true, conflicts_with = "frames", value_name = "SECONDS")]
    pub duration: Option<f64>,
    /// Frames per second: 25, 29.97 or 30000/1001 (preset's; zoom 24; else 25).
    #[arg(long, value_name = "RATE")]
    pub fps: Option<String>,
    /// Magnification per frame, 0.01..100 (preset's; zoom 1.03; else 1.04; below 1 zooms out, the picture mirrored beyond
    /// its edges for the dream to paint over).
    #[arg(long, allow_negative_numbers = true)]
    pub zoom: Option<f64>,
    /// Magnification per second, independent of fps.
    #[arg(long, allow_negative_numbers = true, conflicts_with = "zoom", value_name = "FACTOR")]
    pub zoom_per_second: Option<f64>,
    /// Rotation per frame in degrees, counter-clockwise (negative: clockwise; preset's; zoom
    /// 0.2; else 0).
    #[arg(long, allow_negative_numbers = true)]
    pub rotate: Option<f64>,
    /// Pan per frame in pixels, X,Y: the view moves right by X and down by Y each frame
    /// (default 0,0).
    #[arg(long, allow_hyphen_values = true)]
    pub pan: Option<String>,
    /// Make the zoom a seamless loop: N more frames are rendered and the last N cross-fade
    /// into the first, so the animation flows from its end into its start (--loop alone: 24).
    #[arg(long = "loop", value_name = "N", num_args = 0..=1, default_missing_value = "24")]
    pub loop_frames: Option<u64>,
    /// Ascent steps on each frame after the first (preset's; zoom 2; else 5; 0: zoom without
    /// dreaming).
    #[arg(long, allow_negative_numbers = true, value_name = "N")]
    pub frame_steps: Option<usize>,
    /// Keyframe a setting: SETTING=KEYS, e.g. 'zoom=0: 1.02, 4s: 1.08 ease, 8s: 1.02' (keys at
    /// a frame, 2.5s or 00:01:30; linear, step, ease or smooth to the next key), or
    /// SETTING=audio(min=A, max=B, smooth=S) to follow --audio's loudness. Settings: zoom,
    /// rotate, pan_x, pan_y, step, frame_steps, jitter, layers.NAME, guide_weight,
    /// style_weight; and look='0: patterns, 4s: objects ease' cross-fades presets. Repeat for
    /// more; a preset's [timeline] section does the same.
    #[arg(long, value_name = "SETTING=KEYS")]
    pub animate: Vec<String>,
    /// Print every animated setting's value each second (and at each key; every frame for an
    /// audio curve), then stop.
    #[arg(long)]
    pub dry_run: bool,
    /// A sound track: settings animated with audio(...) follow its loudness, and MP4, MOV, MKV
    /// and WebM outputs carry it.
    #[arg(long, value_name = "FILE")]
    pub audio: Option<PathBuf>,
}

/// `video`'s own flags.
#[derive(clap::Args, Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
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
    /// A frame this different from the previous one (0..100, ffmpeg's scdet score; default
    /// 10; 0: never) starts a new shot: the dream restarts there instead of carrying the
    /// last shot's dream across the cut.
    #[arg(long, allow_negative_numbers = true, value_name = "SCORE")]
    pub scene_cut: Option<f64>,
    /// Start at this many seconds into the video (default 0).
    #[arg(long, allow_negative_numbers = true, value_name = "SECONDS")]
    pub start: Option<f64>,
    /// Seconds to render (default: to the end).
    #[arg(long, allow_negative_numbers = true, value_name = "SECONDS")]
    pub duration: Option<f64>,
    /// Keyframe a setting: SETTING=KEYS (see `zoom --help`), or SETTING=audio(min=A, max=B,
    /// smooth=S) to follow the loudness of the video's sound. Settings: step, frame_steps
    /// (motion flow), jitter, layers.NAME, guide_weight, style_weight, blend (motion blend),
    /// warp (motion flow); and look='0: patterns, 4s: objects ease' cross-fades presets.
    /// Repeat for more; a preset's [timeline] section does the same.
    #[arg(long, value_name = "SETTING=KEYS")]
    pub animate: Vec<String>,
    /// Print every animated setting's value each second (every frame for an audio curve),
    /// then stop.
    #[arg(long)]
    pub dry_run: bool,
}
