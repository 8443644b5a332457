//! Preset files: TOML, unknown keys rejected, every value kept with its position so that a
//! bad value is reported on its own line.

use super::origin::{Origin, Sourced};
use crate::{Error, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toml::Spanned;

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

/// The images the built-in presets name (relative to presets/), compiled in as well: the
/// installed binary runs every built-in preset from any directory.
const BUILTIN_IMAGES: &[(&str, &[u8])] = &[
    ("../examples/coffee.jpg", include_bytes!("../../examples/coffee.jpg")),
    ("../examples/hubble.jpg", include_bytes!("../../examples/hubble.jpg")),
];

/// Each command's preset when none is given: `dream` the classic recipe, `zoom` and `video`
/// their own (light continuation dreams at a size that renders in minutes, not hours).
pub const DEFAULT_PRESET: &str = "classic";
pub const ZOOM_PRESET: &str = "zoom";
pub const VIDEO_PRESET: &str = "video";

/// A value as written, with its byte span in the file.
type V<T> = Option<Spanned<T>>;
/// A `name = weight` table (layers, classes).
pub type Weights = BTreeMap<String, Spanned<f32>>;

/// A preset file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    pub description: Option<String>,
    pub model: V<String>,
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DreamSection {
    pub layers: V<Weights>,
    pub octaves: V<usize>,
    pub octave_scale: V<f64>,
    pub steps: V<usize>,
    pub step: V<f64>,
    pub max_loss: V<f64>,
    pub jitter: V<usize>,
    pub seed: V<u64>,
    pub max_size: V<u32>,
    /// Largest tile side before an image is dreamt in tiles (0: never).
    pub tile: V<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectiveSection {
    /// Class name or index -> weight.
    pub classes: V<Weights>,
    /// "log_softmax" (default) or "logits".
    pub class_mode: V<String>,
    pub tv: V<f32>,
    pub guide: Option<GuideSection>,
    pub style: Option<StyleSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuideSection {
    /// Relative to the preset file.
    pub image: Spanned<String>,
    pub layers: V<Weights>,
    /// "dot" (default) or "l2".
    pub mode: V<String>,
    pub weight: V<f32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StyleSection {
    pub image: Spanned<String>,
    pub layers: V<Weights>,
    pub weight: V<f32>,
    pub content_layers: V<Weights>,
    pub content_weight: V<f32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegularizeSection {
    pub grad_blur: V<f64>,
    pub image_blur: V<f64>,
    pub decay: V<f64>,
    pub laplacian: V<usize>,
    pub clip: V<bool>,
}

/// `deepdream zoom` settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoomSection {
    pub frames: V<u64>,
    /// Seconds of output (frames = duration * fps), instead of `frames`.
    pub duration: V<f64>,
    /// Frames per second: 25, "29.97" or "30000/1001".
    pub fps: V<Rate>,
    /// Magnification per frame.
    pub zoom: V<f64>,
    /// Magnification per second (independent of fps), instead of `zoom`.
    pub zoom_per_second: V<f64>,
    /// Degrees per frame.
    pub rotate: V<f64>,
    /// Pixels per frame, [x, y].
    pub pan: V<Vec<f64>>,
    /// Ascent steps on each frame after the first (which gets the full octave treatment).
    pub frame_steps: V<usize>,
}

/// A frame rate as written: a number or a string such as "30000/1001".
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Rate {
    Number(f64),
    Text(String),
}

impl Rate {
    pub fn text(&self) -> String {
        match self {
            Rate::Number(n) => n.to_string(),
            Rate::Text(t) => t.clone(),
        }
    }
}

/// `deepdream video` settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VideoSection {
    /// `flow` or `blend`: how a frame continues the previous dreamed one.
    pub motion: V<String>,
    /// Flow: weight of the dream carried along the flow (0..1).
    pub warp: V<f64>,
    /// Flow: the fraction of followed pixels under which a frame starts a new shot (0..1).
    pub cut: V<f64>,
    /// Flow: octaves, steps and step size of the light dream on continuing frames.
    pub frame_octaves: V<usize>,
    pub frame_steps: V<usize>,
    pub frame_step: V<f64>,
    /// Blend: weight of the previous dreamed frame mixed into each input frame (0..1).
    pub blend: V<f64>,
    pub start: V<f64>,
    pub duration: V<f64>,
}

/// Encoder settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSection {
    pub crf: V<u32>,
    /// x264 preset: ultrafast .. veryslow.
    pub preset: V<String>,
}

/// A parsed preset and what its values' origins need: its display path and text.
pub struct PresetFile {
    pub path: PathBuf,
    text: String,
    /// Where the preset's relative image paths point; `None` for a built-in preset, whose
    /// images are built in too ([`PresetFile::image`]).
    pub base_dir: Option<PathBuf>,
    pub preset: Preset,
}

impl PresetFile {
    /// A preset given by built-in name or by file path.
    pub fn load(name_or_path: &str) -> Result<PresetFile> {
        let (path, text, base_dir) = match BUILTIN_PRESETS.iter().find(|(n, _)| *n == name_or_path) {
            Some((name, text)) => (PathBuf::from(format!("presets/{name}.toml")), text.to_string(), None),
            None => {
                let path = Path::new(name_or_path);
                if !path.is_file() {
                    let names: Vec<_> = BUILTIN_PRESETS.iter().map(|(n, _)| *n).collect();
                    return Err(Error::usage(format!(
                        "--preset: unknown preset '{name_or_path}': not a file, and not one of {}",
                        names.join(", ")
                    )));
                }
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::Preset { path: path.to_owned(), reason: e.to_string() })?;
                (path.to_owned(), text, Some(path.parent().map(Path::to_path_buf).unwrap_or_default()))
            }
        };
        let preset = parse_preset(&path, &text)?;
        Ok(PresetFile { path, text, base_dir, preset })
    }

    /// An image the preset names by a path relative to itself: a file for a preset file, the
    /// built-in bytes for a built-in preset.
    pub fn image(&self, rel: &str) -> PresetImage {
        match &self.base_dir {
            Some(dir) => PresetImage::File(dir.join(rel)),
            None => match BUILTIN_IMAGES.iter().find(|(name, _)| *name == rel) {
                Some((name, bytes)) => PresetImage::BuiltIn(name, bytes),
                None => PresetImage::File(PathBuf::from(rel)),
            },
        }
    }

    /// The origin of the value at `span` under the dotted `key`.
    pub fn origin(&self, key: &str, span: std::ops::Range<usize>) -> Origin {
        Origin::Preset { path: self.path.clone(), line: line_of(&self.text, span.start), key: key.to_owned() }
    }

    /// A preset value with its origin.
    pub fn get<T: Clone>(&self, key: &str, v: &V<T>) -> Option<Sourced<T>> {
        v.as_ref().map(|s| Sourced { value: s.get_ref().clone(), origin: self.origin(key, s.span()) })
    }
}

/// An image named by a preset.
pub enum PresetImage {
    File(PathBuf),
    BuiltIn(&'static str, &'static [u8]),
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
                let header = line_text.trim_start().starts_with('[');
                // The table the line belongs to: the nearest `[header]` at or above it.
                let table = text
                    .lines()
                    .take(line)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .map(str::trim)
                    .find(|l| l.starts_with('['))
                    .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
                let full_key = match (&table, header) {
                    (Some(t), true) => t.clone(),
                    (Some(t), false) if !key.is_empty() => format!("{t}.{key}"),
                    _ => key.to_owned(),
                };
                if header && msg == "duplicate key" {
                    // A table given twice: `[dream]` ... `[dream]`.
                    let table = line_text.trim().trim_matches(|c| c == '[' || c == ']').trim();
                    format!("line {line}: table [{table}] appears twice (merge its keys into one [{table}])")
                } else if full_key.is_empty() || msg.contains(&format!("`{key}`")) {
                    format!("line {line}: {msg}")
                } else {
                    format!("line {line}, key `{full_key}`: {msg}")
                }
            }
            None => msg,
        };
        Error::Preset { path: path.to_owned(), reason }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_names_file_key_and_line() {
        let text = "description = \"x\"\n[dream]\noctaves = 3\noctavez = 4\n";
        let err = parse_preset(Path::new("my.toml"), text).unwrap_err().to_string();
        assert!(err.contains("my.toml") && err.contains("octavez") && err.contains("line 4"), "{err}");
    }

    #[test]
    fn bad_type_names_file_key_and_line() {
        let text = "[dream]\nsteps = 10\noctave_scale = \"big\"\n";
        let err = parse_preset(Path::new("p.toml"), text).unwrap_err().to_string();
        assert!(err.contains("p.toml: line 3, key `dream.octave_scale`"), "{err}");
        let err = parse_preset(Path::new("p.toml"), "[dream.layers.block5]\nx = 1\n").unwrap_err().to_string();
        assert!(err.contains("line 1, key `dream.layers.block5`: invalid type: map"), "{err}");
    }

    #[test]
    fn a_table_given_twice_is_named() {
        let text = "[dream]\nsteps = 3\n\n[dream]\nsteps = 4\n";
        let err = parse_preset(Path::new("p.toml"), text).unwrap_err().to_string();
        assert!(err.contains("p.toml: line 4: table [dream] appears twice"), "{err}");
        let text = "[dream]\nsteps = 3\nsteps = 4\n";
        let err = parse_preset(Path::new("p.toml"), text).unwrap_err().to_string();
        assert!(err.contains("line 3, key `dream.steps`: duplicate key"), "{err}");
    }

    #[test]
    fn rates_may_be_numbers_or_text() {
        let p = parse_preset(Path::new("p.toml"), "[zoom]\nfps = 25\n").unwrap();
        assert_eq!(p.zoom.fps.unwrap().into_inner().text(), "25");
        let p = parse_preset(Path::new("p.toml"), "[zoom]\nfps = \"30000/1001\"\n").unwrap();
        assert_eq!(p.zoom.fps.unwrap().into_inner().text(), "30000/1001");
    }
}
