//! Presets (TOML, unknown keys rejected) and the command-line overrides, resolved into one
//! validated [`DreamJob`] before any work starts.

use crate::dream::{
    ClassMode, DreamParams, Guide, GuideMode, LayerTerm, Objective, Regularize, Style, Tiling, class_index,
};
use crate::{Error, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The presets that ship in `presets/`, compiled in so their names work from anywhere.
pub const BUILTIN_PRESETS: &[(&str, &str)] = &[
    ("classic", include_str!("../../presets/classic.toml")),
    ("patterns", include_str!("../../presets/patterns.toml")),
    ("textures", include_str!("../../presets/textures.toml")),
    ("objects", include_str!("../../presets/objects.toml")),
    ("classic-inceptionv3", include_str!("../../presets/classic-inceptionv3.toml")),
    ("class-banana", include_str!("../../presets/class-banana.toml")),
    ("channel", include_str!("../../presets/channel.toml")),
    ("guide", include_str!("../../presets/guide.toml")),
    ("style", include_str!("../../presets/style.toml")),
    ("smooth", include_str!("../../presets/smooth.toml")),
    ("zoom", include_str!("../../presets/zoom.toml")),
    ("video", include_str!("../../presets/video.toml")),
];

/// Where relative image paths in the built-in presets point: the repository's presets/.
const BUILTIN_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/presets");

pub const DEFAULT_PRESET: &str = "classic";

/// A preset file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    pub description: Option<String>,
    pub model: Option<String>,
    #[serde(default)]
    pub dream: DreamSection,
    #[serde(default)]
    pub objective: ObjectiveSection,
    #[serde(default)]
    pub regularize: RegularizeSection,
    #[serde(default)]
    pub zoom: ZoomSection,
    #[serde(default)]
    pub video: VideoSection,
    #[serde(default)]
    pub output: OutputSection,
}

/// `deepdream zoom` settings.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoomSection {
    pub frames: Option<u64>,
    /// Seconds of output (frames = duration * fps), instead of `frames`.
    pub duration: Option<f64>,
    /// Frames per second: "25", "29.97" or "30000/1001".
    pub fps: Option<String>,
    /// Magnification per frame.
    pub zoom: Option<f64>,
    /// Magnification per second (independent of fps), instead of `zoom`.
    pub zoom_per_second: Option<f64>,
    /// Degrees per frame.
    pub rotate: Option<f64>,
    /// Pixels per frame, [x, y].
    pub pan: Option<[f64; 2]>,
    /// Ascent steps on each frame after the first (which gets the full octave treatment).
    pub frame_steps: Option<usize>,
}

/// `deepdream video` settings.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VideoSection {
    /// Weight of the previous dreamed frame mixed into each input frame (0..1).
    pub blend: Option<f64>,
    pub start: Option<f64>,
    pub duration: Option<f64>,
}

/// Encoder settings.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSection {
    pub crf: Option<u32>,
    /// x264 preset: ultrafast .. veryslow.
    pub preset: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectiveSection {
    /// Class name or index -> weight.
    pub classes: Option<BTreeMap<String, f32>>,
    /// "log_softmax" (default) or "logits".
    pub class_mode: Option<String>,
    pub tv: Option<f32>,
    pub guide: Option<GuideSection>,
    pub style: Option<StyleSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuideSection {
    /// Relative to the preset file.
    pub image: String,
    pub layers: BTreeMap<String, f32>,
    /// "dot" (default) or "l2".
    pub mode: Option<String>,
    pub weight: Option<f32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StyleSection {
    pub image: String,
    pub layers: BTreeMap<String, f32>,
    pub weight: Option<f32>,
    #[serde(default)]
    pub content_layers: BTreeMap<String, f32>,
    pub content_weight: Option<f32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegularizeSection {
    pub grad_blur: Option<f64>,
    pub image_blur: Option<f64>,
    pub decay: Option<f64>,
    pub laplacian: Option<usize>,
    pub clip: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DreamSection {
    pub layers: Option<BTreeMap<String, f32>>,
    pub octaves: Option<usize>,
    pub octave_scale: Option<f64>,
    pub steps: Option<usize>,
    pub step: Option<f64>,
    pub max_loss: Option<f64>,
    pub jitter: Option<usize>,
    pub seed: Option<u64>,
    pub max_size: Option<u32>,
    /// Largest tile side before an image is dreamt in tiles (0: never).
    pub tile: Option<usize>,
}

/// Command-line values that override the preset; `None` keeps the preset's.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub model: Option<String>,
    pub layers: Option<String>,
    pub octaves: Option<usize>,
    pub octave_scale: Option<f64>,
    pub steps: Option<usize>,
    pub step: Option<f64>,
    pub max_loss: Option<f64>,
    pub jitter: Option<usize>,
    pub seed: Option<u64>,
    pub max_size: Option<u32>,
    pub tile: Option<usize>,
    pub classes: Option<String>,
    pub class_mode: Option<String>,
    pub guide: Option<PathBuf>,
    pub guide_layers: Option<String>,
    pub guide_mode: Option<String>,
    pub guide_weight: Option<f32>,
    pub style: Option<PathBuf>,
    pub style_layers: Option<String>,
    pub style_weight: Option<f32>,
    pub content_layers: Option<String>,
    pub content_weight: Option<f32>,
    pub tv: Option<f32>,
    pub grad_blur: Option<f64>,
    pub image_blur: Option<f64>,
    pub decay: Option<f64>,
    pub laplacian: Option<usize>,
    pub no_clip: bool,
}

/// A dream fully resolved: which model, the parameters, and the input size cap.
#[derive(Debug, Clone)]
pub struct DreamJob {
    pub model: String,
    pub params: DreamParams,
    pub max_size: Option<u32>,
    /// The preset's frame settings, for `zoom` and `video` to merge with their flags.
    pub zoom: ZoomSection,
    pub video: VideoSection,
    pub output: OutputSection,
}

/// The text and display path of a preset given by built-in name or by file path.
pub fn preset_source(name_or_path: &str) -> Result<(PathBuf, String)> {
    if let Some((name, text)) = BUILTIN_PRESETS.iter().find(|(n, _)| *n == name_or_path) {
        return Ok((PathBuf::from(format!("presets/{name}.toml")), text.to_string()));
    }
    let path = Path::new(name_or_path);
    if path.is_file() {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Preset { path: path.to_owned(), reason: e.to_string() })?;
        return Ok((path.to_owned(), text));
    }
    let names: Vec<_> = BUILTIN_PRESETS.iter().map(|(n, _)| *n).collect();
    Err(Error::usage(format!("unknown preset '{name_or_path}': not a file, and not one of {}", names.join(", "))))
}

/// 1-based line of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

/// Parses a preset; errors name the file, the key and the line.
pub fn parse_preset(path: &Path, text: &str) -> Result<Preset> {
    toml::from_str::<Preset>(text).map_err(|e| {
        let msg = e.message().trim().to_owned();
        let reason = match e.span() {
            Some(span) => {
                let line = line_of(text, span.start);
                let line_text = text.lines().nth(line - 1).unwrap_or("");
                let key = line_text.split('=').next().unwrap_or("").trim();
                if key.is_empty() || msg.contains(&format!("`{key}`")) || line_text.trim_start().starts_with('[') {
                    format!("line {line}: {msg}")
                } else {
                    format!("line {line}, key `{key}`: {msg}")
                }
            }
            None => msg,
        };
        Error::Preset { path: path.to_owned(), reason }
    })
}

/// A layer name with an optional channel: `block12` or `block12:97`.
pub fn layer_term(name: &str, weight: f32) -> Result<LayerTerm> {
    let (layer, channel) = match name.split_once(':') {
        Some((l, c)) => {
            let c = c
                .trim()
                .parse::<usize>()
                .map_err(|_| Error::usage(format!("bad channel '{c}' in '{name}': expected a number")))?;
            (l.trim(), Some(c))
        }
        None => (name.trim(), None),
    };
    Ok(LayerTerm { layer: layer.to_owned(), channel, weight })
}

/// Parses `NAME=WEIGHT,NAME` (a bare name weighs 1) into (name, weight) pairs.
fn parse_weighted(spec: &str, what: &str) -> Result<Vec<(String, f32)>> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, weight) = match part.split_once('=') {
            Some((n, w)) => {
                let weight = w.trim().parse::<f32>().ok().filter(|v| v.is_finite()).ok_or_else(|| {
                    Error::usage(format!("bad {what} weight '{}' in '{part}': expected a number", w.trim()))
                })?;
                (n.trim(), weight)
            }
            None => (part, 1.0),
        };
        out.push((name.to_owned(), weight));
    }
    if out.is_empty() {
        return Err(Error::usage(format!("no {what}s in '{spec}'")));
    }
    Ok(out)
}

/// Parses `block5=1,block10=0.5,block12:97=2` (a bare name weighs 1; `:N` picks channel N).
pub fn parse_layers(spec: &str) -> Result<Vec<LayerTerm>> {
    parse_weighted(spec, "layer")?.into_iter().map(|(n, w)| layer_term(&n, w)).collect()
}

/// Parses `banana`, `954=1,tabby=0.5` into (class index, weight).
pub fn parse_classes(spec: &str) -> Result<Vec<(usize, f32)>> {
    parse_weighted(spec, "class")?.into_iter().map(|(n, w)| Ok((class_index(&n)?, w))).collect()
}

fn layer_map(map: &BTreeMap<String, f32>) -> Result<Vec<LayerTerm>> {
    map.iter().map(|(k, &w)| layer_term(k, w)).collect()
}

fn class_mode(s: &str) -> Result<ClassMode> {
    match s.replace('-', "_").as_str() {
        "log_softmax" => Ok(ClassMode::LogSoftmax),
        "logits" => Ok(ClassMode::Logits),
        _ => Err(Error::usage(format!("class mode must be log_softmax or logits, got '{s}'"))),
    }
}

fn guide_mode(s: &str) -> Result<GuideMode> {
    match s {
        "dot" => Ok(GuideMode::Dot),
        "l2" => Ok(GuideMode::L2),
        _ => Err(Error::usage(format!("guide mode must be dot or l2, got '{s}'"))),
    }
}

/// An image for a guide or style objective, pixels 0..255, at most 1024 pixels across.
fn load_image(path: &Path) -> Result<candle_core::Tensor> {
    crate::io::to_tensor(&crate::io::load_rgb(path, Some(1024))?, &candle_core::Device::Cpu)
}

impl DreamJob {
    /// Preset (built-in name or file) overlaid with the command line.
    pub fn resolve(preset: Option<&str>, cli: &Overrides) -> Result<DreamJob> {
        let (path, text) = preset_source(preset.unwrap_or(DEFAULT_PRESET))?;
        let p = parse_preset(&path, &text)?;
        let d = p.dream;
        let bad = |key: &str, why: String| {
            let line = text.lines().position(|l| l.trim_start().starts_with(key)).map(|i| i + 1);
            let at = line.map(|l| format!("line {l}, ")).unwrap_or_default();
            Error::Preset { path: path.clone(), reason: format!("{at}key `{key}`: {why}") }
        };
        // Values that parse but cannot work are reported against the preset, before overrides.
        if let Some(s) = d.octave_scale.filter(|s| !(s.is_finite() && *s >= 1.0)) {
            return Err(bad("octave_scale", format!("must be at least 1, got {s}")));
        }
        if let Some(s) = d.step.filter(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(bad("step", format!("must be positive, got {s}")));
        }
        if d.octaves == Some(0) {
            return Err(bad("octaves", "must be at least 1".into()));
        }
        let o = p.objective;
        let r = p.regularize;
        // Image paths in a preset are relative to the preset file.
        let preset_name = preset.unwrap_or(DEFAULT_PRESET);
        let base_dir = match BUILTIN_PRESETS.iter().any(|(n, _)| *n == preset_name) {
            true => PathBuf::from(BUILTIN_DIR),
            false => path.parent().map(Path::to_path_buf).unwrap_or_default(),
        };
        let preset_err = |key: &str, e: Error| bad(key, e.to_string());
        // A new objective on the command line replaces the preset's layer terms.
        let cli_objective = cli.classes.is_some() || cli.guide.is_some() || cli.style.is_some();
        let layers = match (&cli.layers, &d.layers) {
            (Some(spec), _) => parse_layers(spec)?,
            (None, _) if cli_objective => Vec::new(),
            (None, Some(map)) => layer_map(map).map_err(|e| preset_err("layers", e))?,
            (None, None) => Vec::new(),
        };
        let classes = match (&cli.classes, &o.classes) {
            (Some(spec), _) => parse_classes(spec)?,
            (None, Some(map)) => map
                .iter()
                .map(|(k, &w)| Ok((class_index(k)?, w)))
                .collect::<Result<_>>()
                .map_err(|e| preset_err("classes", e))?,
            (None, None) => Vec::new(),
        };
        let class_mode = match (&cli.class_mode, &o.class_mode) {
            (Some(m), _) => class_mode(m)?,
            (None, Some(m)) => class_mode(m).map_err(|e| preset_err("class_mode", e))?,
            (None, None) => ClassMode::LogSoftmax,
        };
        // Guide and style: each setting from the command line if given, else from the preset
        // (whose errors name the preset key). A preset image path is relative to the preset.
        let terms = |spec: &Option<String>,
                     preset: Option<&BTreeMap<String, f32>>,
                     key: &str|
         -> Result<Option<Vec<LayerTerm>>> {
            match (spec, preset) {
                (Some(spec), _) => parse_layers(spec).map(Some),
                (None, Some(map)) => layer_map(map).map(Some).map_err(|e| preset_err(key, e)),
                (None, None) => Ok(None),
            }
        };
        let image = |cli_path: &Option<PathBuf>, preset_path: Option<&String>| -> Result<candle_core::Tensor> {
            match (cli_path, preset_path) {
                (Some(path), _) => load_image(path),
                (None, Some(rel)) => load_image(&base_dir.join(rel)).map_err(|e| preset_err("image", e)),
                (None, None) => unreachable!("called only when a CLI or preset image exists"),
            }
        };
        let guide = match (&cli.guide, &o.guide) {
            (None, None) => None,
            (_, g) => Some(Guide {
                image: image(&cli.guide, g.as_ref().map(|g| &g.image))?,
                layers: terms(&cli.guide_layers, g.as_ref().map(|g| &g.layers), "layers")?
                    .ok_or_else(|| Error::usage("--guide needs --guide-layers, e.g. --guide-layers block8"))?,
                mode: match (&cli.guide_mode, g.as_ref().and_then(|g| g.mode.as_deref())) {
                    (Some(m), _) => guide_mode(m)?,
                    (None, Some(m)) => guide_mode(m).map_err(|e| preset_err("mode", e))?,
                    (None, None) => GuideMode::Dot,
                },
                weight: cli.guide_weight.or(g.as_ref().and_then(|g| g.weight)).unwrap_or(1.0),
            }),
        };
        let style = match (&cli.style, &o.style) {
            (None, None) => None,
            (_, s) => Some(Style {
                image: image(&cli.style, s.as_ref().map(|s| &s.image))?,
                layers: terms(&cli.style_layers, s.as_ref().map(|s| &s.layers), "layers")?.ok_or_else(|| {
                    Error::usage("--style needs --style-layers, e.g. --style-layers block1,block3,block5")
                })?,
                weight: cli.style_weight.or(s.as_ref().and_then(|s| s.weight)).unwrap_or(1.0),
                content_layers: terms(&cli.content_layers, s.as_ref().map(|s| &s.content_layers), "content_layers")?
                    .unwrap_or_default(),
                content_weight: cli.content_weight.or(s.as_ref().and_then(|s| s.content_weight)).unwrap_or(1.0),
            }),
        };
        let objective =
            Objective { layers, border: 2, classes, class_mode, guide, style, tv: cli.tv.or(o.tv).unwrap_or(0.0) };
        if objective.layers.is_empty()
            && objective.classes.is_empty()
            && objective.guide.is_none()
            && objective.style.is_none()
        {
            return Err(bad("layers", "the preset names no layers and none were given".into()));
        }
        let regularize = Regularize {
            grad_blur: cli.grad_blur.or(r.grad_blur).unwrap_or(0.0),
            image_blur: cli.image_blur.or(r.image_blur).unwrap_or(0.0),
            decay: cli.decay.or(r.decay).unwrap_or(0.0),
            laplacian: cli.laplacian.or(r.laplacian).unwrap_or(0),
            clip: !cli.no_clip && r.clip.unwrap_or(true),
        };
        let params = DreamParams {
            objective,
            regularize,
            octaves: cli.octaves.or(d.octaves).unwrap_or(3),
            octave_scale: cli.octave_scale.or(d.octave_scale).unwrap_or(1.4),
            steps: cli.steps.or(d.steps).unwrap_or(20),
            step: cli.step.or(d.step).unwrap_or(0.01),
            max_loss: cli.max_loss.or(d.max_loss),
            jitter: cli.jitter.or(d.jitter).unwrap_or(0),
            seed: cli.seed.or(d.seed).unwrap_or(0),
            tiling: cli.tile.or(d.tile).map_or_else(Tiling::default, Tiling::with_tile),
        };
        let model = cli.model.clone().or(p.model).unwrap_or_else(|| crate::model::DEFAULT_MODEL.to_owned());
        let job = DreamJob {
            model,
            params,
            max_size: cli.max_size.or(d.max_size),
            zoom: p.zoom,
            video: p.video,
            output: p.output,
        };
        job.check_values()?;
        Ok(job)
    }

    /// Range checks that do not need the network (those that do are in `DreamParams::validate`).
    fn check_values(&self) -> Result<()> {
        let p = &self.params;
        p.check_ranges()?;
        if self.max_size == Some(0) {
            return Err(Error::usage("--max-size must be positive"));
        }
        let r = &p.regularize;
        for (name, v) in [("--grad-blur", r.grad_blur), ("--image-blur", r.image_blur)] {
            if !(v.is_finite() && (0.0..=20.0).contains(&v)) {
                return Err(Error::usage(format!("{name} must be a sigma between 0 and 20 pixels, got {v}")));
            }
        }
        if !(r.decay.is_finite() && (0.0..1.0).contains(&r.decay)) {
            return Err(Error::usage(format!("--decay must be in [0, 1), got {}", r.decay)));
        }
        if !(p.objective.tv.is_finite() && p.objective.tv >= 0.0) {
            return Err(Error::usage(format!("--tv must be non-negative, got {}", p.objective.tv)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_preset_parses() {
        for (name, _) in BUILTIN_PRESETS {
            let job = DreamJob::resolve(Some(name), &Overrides::default()).unwrap();
            let o = &job.params.objective;
            assert!(!o.layers.is_empty() || !o.classes.is_empty() || o.guide.is_some() || o.style.is_some(), "{name}");
        }
    }

    #[test]
    fn unknown_key_names_file_key_and_line() {
        let text = "description = \"x\"\n[dream]\noctaves = 3\noctavez = 4\n";
        let err = parse_preset(Path::new("my.toml"), text).unwrap_err().to_string();
        assert!(err.contains("my.toml") && err.contains("octavez") && err.contains("line 4"), "{err}");
    }

    #[test]
    fn bad_value_names_file_key_and_line() {
        let text = "[dream]\nsteps = 10\noctave_scale = \"big\"\n";
        let err = parse_preset(Path::new("p.toml"), text).unwrap_err().to_string();
        assert!(err.contains("p.toml") && err.contains("octave_scale") && err.contains("line 3"), "{err}");
    }

    #[test]
    fn cli_overrides_preset() {
        let cli = Overrides { layers: Some("block3=2, block4".into()), steps: Some(5), ..Default::default() };
        let job = DreamJob::resolve(Some("classic"), &cli).unwrap();
        assert_eq!(job.params.steps, 5);
        assert_eq!(job.params.objective.layers, vec![LayerTerm::new("block3", 2.0), LayerTerm::new("block4", 1.0)]);
    }

    #[test]
    fn channels_and_classes_parse() {
        let t = parse_layers("block12:97=2,block5").unwrap();
        assert_eq!(t[0], LayerTerm { layer: "block12".into(), channel: Some(97), weight: 2.0 });
        assert_eq!(parse_classes("954=1,tabby=0.5").unwrap(), vec![(954, 1.0), (281, 0.5)]);
        let cli = Overrides { classes: Some("banana".into()), ..Default::default() };
        let job = DreamJob::resolve(None, &cli).unwrap();
        assert!(job.params.objective.layers.is_empty(), "--class replaces the preset's layers");
    }

    #[test]
    fn bad_layer_weight_is_an_error() {
        assert!(parse_layers("block3=abc").is_err());
        assert!(parse_layers(" , ").is_err());
    }
}
