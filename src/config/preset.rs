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
    /// Another preset this one builds on (a built-in name, or a file relative to this one):
    /// its settings hold wherever this file gives none.
    pub base: V<String>,
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
    /// Keyframed settings: setting name -> keys (`"0: 1.02, 4s: 1.06 ease"`) or an audio
    /// curve (`{ audio = "rms", min = 0.005, max = 0.03, smooth = 0.2 }`).
    #[serde(default)]
    pub timeline: BTreeMap<String, Spanned<TimelineEntry>>,
}

/// One `[timeline]` value as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum TimelineEntry {
    Keys(String),
    Audio(AudioEntry),
}

/// `{ audio = "rms", min = A, max = B, smooth = S }`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudioEntry {
    pub audio: String,
    pub min: f64,
    pub max: f64,
    pub smooth: Option<f64>,
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
    /// Keep the input's colours, the dream's brightness only.
    pub original_colors: V<bool>,
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
    /// Transformation robustness: random scale within this fraction, and random turn within
    /// `rotate_jitter` degrees, each step.
    pub scale_jitter: V<f64>,
    pub rotate_jitter: V<f64>,
    /// Steps along natural images' colour axes.
    pub decorrelate: V<bool>,
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
    /// A seamless loop fading over this many frames.
    #[serde(rename = "loop")]
    pub loop_frames: V<u64>,
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
    /// The scene-cut threshold (0..100; 0: none): the temporal history restarts at a cut.
    pub scene_cut: V<f64>,
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

/// Settings a preset file gives override its base's, field by field; a table of weights
/// (`[dream.layers]`) or an image section replaces the base's whole.
trait Merge {
    fn merge(&mut self, base: Self);
}

macro_rules! merge_fields {
    ($t:ty: $($field:ident),* ; sections $($section:ident),*) => {
        impl Merge for $t {
            fn merge(&mut self, base: Self) {
                $(if self.$field.is_none() { self.$field = base.$field; })*
                $(Merge::merge(&mut self.$section, base.$section);)*
            }
        }
    };
}

merge_fields!(Preset: description, model; sections dream, objective, regularize, zoom, video, output, timeline);

/// A timeline a file gives replaces its base's for that setting; the base's others stay.
impl Merge for BTreeMap<String, Spanned<TimelineEntry>> {
    fn merge(&mut self, base: Self) {
        for (key, value) in base {
            self.entry(key).or_insert(value);
        }
    }
}
merge_fields!(DreamSection: layers, octaves, octave_scale, steps, step, max_loss, jitter, seed, max_size, tile, original_colors; sections);
merge_fields!(ObjectiveSection: classes, class_mode, tv, guide, style; sections);
merge_fields!(RegularizeSection: grad_blur, image_blur, decay, laplacian, clip, scale_jitter, rotate_jitter, decorrelate; sections);
merge_fields!(ZoomSection: frames, duration, fps, zoom, zoom_per_second, rotate, pan, frame_steps, loop_frames; sections);
merge_fields!(VideoSection: motion, warp, cut, frame_octaves, frame_steps, frame_step, blend, scene_cut, start, duration; sections);
merge_fields!(OutputSection: crf, preset; sections);

/// How deep `base` chains may go.
const MAX_BASES: usize = 8;

/// One file of a preset and its bases: where its text starts in the spans (each file is
/// parsed after as many spaces as the texts before it hold, so a span says which file it is
/// in), its display path, its text and where its relative images point.
struct Part {
    start: usize,
    path: PathBuf,
    text: String,
    base_dir: Option<PathBuf>,
}

/// A parsed preset (merged with its bases) and what its values' origins need: each file's
/// display path and text.
pub struct PresetFile {
    /// The preset named (not its bases).
    pub path: PathBuf,
    /// It and its bases, in the order read.
    parts: Vec<Part>,
    pub preset: Preset,
}

impl PresetFile {
    /// A preset given by built-in name or by file path, merged with its bases.
    pub fn load(name_or_path: &str) -> Result<PresetFile> {
        let mut parts: Vec<Part> = Vec::new();
        let mut preset = Self::read(name_or_path, None, &mut parts)?;
        let mut base = preset.base.take();
        while let Some(name) = base {
            let at = parts.len() - 1;
            let origin = Origin::Preset {
                path: parts[at].path.clone(),
                line: line_of(&parts[at].text, name.span().start - parts[at].start),
                key: "base".into(),
            };
            if parts.len() > MAX_BASES {
                return Err(origin.error(format!("more than {MAX_BASES} presets build on each other")));
            }
            let mut parent = Self::read(name.get_ref(), Some((&origin, parts[at].base_dir.clone())), &mut parts)?;
            let (last, earlier) = parts.split_last().expect("just read");
            let path = &last.path;
            // Built-in presets (no directory of their own) are compared by name, files by
            // what they are on disk: a user's ./presets/zoom.toml may build on the built-in zoom.
            let same = |p: &Part| match (&p.base_dir, &last.base_dir) {
                (None, None) => p.path == last.path,
                (Some(_), Some(_)) => same_file(&p.path, path),
                _ => false,
            };
            if earlier.iter().any(same) {
                return Err(origin.error(format!("{} builds on itself", path.display())));
            }
            base = parent.base.take();
            preset.merge(parent);
        }
        Ok(PresetFile { path: parts[0].path.clone(), parts, preset })
    }

    /// Reads one preset file (or built-in) into `parts`, its spans counted after the texts
    /// before it. A base's name is blamed on the `base` key that gave it.
    fn read(name_or_path: &str, from: Option<(&Origin, Option<PathBuf>)>, parts: &mut Vec<Part>) -> Result<Preset> {
        let builtin = BUILTIN_PRESETS.iter().find(|(n, _)| *n == name_or_path);
        let (path, text, base_dir) = match builtin {
            Some((name, text)) => (PathBuf::from(format!("presets/{name}.toml")), text.to_string(), None),
            None => {
                // A base file is relative to the preset that names it.
                let path = match &from {
                    Some((_, Some(dir))) => dir.join(name_or_path),
                    _ => PathBuf::from(name_or_path),
                };
                if !path.is_file() {
                    let names: Vec<_> = BUILTIN_PRESETS.iter().map(|(n, _)| *n).collect();
                    let problem =
                        format!("unknown preset '{name_or_path}': not a file, and not one of {}", names.join(", "));
                    return Err(match from {
                        Some((origin, _)) => origin.error(problem),
                        None => Error::usage(format!("--preset: {problem}")),
                    });
                }
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| Error::Preset { path: path.clone(), reason: e.to_string() })?;
                let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
                (path, text, Some(dir))
            }
        };
        let start = parts.last().map_or(0, |p| p.start + p.text.len() + 1);
        let padded = format!("{}{text}", " ".repeat(start));
        let preset = parse_preset_at(&path, &padded, start)?;
        parts.push(Part { start, path, text, base_dir });
        Ok(preset)
    }

    /// The file a span falls in.
    fn part(&self, at: usize) -> &Part {
        self.parts.iter().rev().find(|p| p.start <= at).unwrap_or(&self.parts[0])
    }

    /// An image the preset names by a path relative to itself: a file for a preset file, the
    /// built-in bytes for a built-in preset.
    pub fn image(&self, rel: &Spanned<String>) -> PresetImage {
        let rel_text = rel.get_ref().as_str();
        match &self.part(rel.span().start).base_dir {
            Some(dir) => PresetImage::File(dir.join(rel_text)),
            None => match BUILTIN_IMAGES.iter().find(|(name, _)| *name == rel_text) {
                Some((name, bytes)) => PresetImage::BuiltIn(name, bytes),
                None => PresetImage::File(PathBuf::from(rel_text)),
            },
        }
    }

    /// The origin of the value at `span` under the dotted `key`.
    pub fn origin(&self, key: &str, span: std::ops::Range<usize>) -> Origin {
        let part = self.part(span.start);
        Origin::Preset {
            path: part.path.clone(),
            line: line_of(&part.text, span.start - part.start),
            key: key.to_owned(),
        }
    }

    /// The files read: the preset and its bases.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.parts.iter().map(|p| p.path.as_path())
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

/// Whether two paths name one file.
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Parses a preset; errors name the file, the key and the line.
pub fn parse_preset(path: &Path, text: &str) -> Result<Preset> {
    parse_preset_at(path, text, 0)
}

/// [`parse_preset`] of a text whose first `start` bytes are padding (a base's place).
fn parse_preset_at(path: &Path, padded: &str, start: usize) -> Result<Preset> {
    let text = &padded[start..];
    toml::from_str::<Preset>(padded).map_err(|e| {
        let msg = e.message().trim().to_owned();
        let reason = match e.span() {
            Some(span) => {
                let line = line_of(text, span.start.saturating_sub(start));
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
                } else if msg.starts_with("invalid type: map") && key.contains('.') && !key.starts_with(['"', '\'']) {
                    // `features.12 = 1.0` is a table `features` holding a key `12` in TOML.
                    format!("line {line}, key `{full_key}`: {msg}; a name with a dot must be quoted: \"{key}\" = ...")
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
    fn an_unquoted_dotted_layer_says_to_quote_it() {
        let text = "[dream.layers]\nfeatures.12 = 1.0\n";
        let err = parse_preset(Path::new("p.toml"), text).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("must be quoted: \"features.12\" = ..."), "{err}");
        assert!(parse_preset(Path::new("p.toml"), "[dream.layers]\n\"features.12\" = 1.0\n").is_ok());
    }

    #[test]
    fn rates_may_be_numbers_or_text() {
        let p = parse_preset(Path::new("p.toml"), "[zoom]\nfps = 25\n").unwrap();
        assert_eq!(p.zoom.fps.unwrap().into_inner().text(), "25");
        let p = parse_preset(Path::new("p.toml"), "[zoom]\nfps = \"30000/1001\"\n").unwrap();
        assert_eq!(p.zoom.fps.unwrap().into_inner().text(), "30000/1001");
    }
}
