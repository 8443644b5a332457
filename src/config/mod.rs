//! Presets (TOML, unknown keys rejected) and the command-line overrides, resolved into one
//! validated [`DreamJob`] before any work starts.

use crate::dream::{DreamParams, LayerObjective, LayerTerm};
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
];

pub const DEFAULT_PRESET: &str = "classic";

/// A preset file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    pub description: Option<String>,
    pub model: Option<String>,
    #[serde(default)]
    pub dream: DreamSection,
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
}

/// A dream fully resolved: which model, the parameters, and the input size cap.
#[derive(Debug, Clone, PartialEq)]
pub struct DreamJob {
    pub model: String,
    pub params: DreamParams,
    pub max_size: Option<u32>,
}

/// The text and display path of a preset given by built-in name or by file path.
pub fn preset_source(name_or_path: &str) -> Result<(PathBuf, String)> {
    if let Some((name, text)) = BUILTIN_PRESETS.iter().find(|(n, _)| *n == name_or_path) {
        return Ok((PathBuf::from(format!("presets/{name}.toml")), text.to_string()));
    }
    let path = Path::new(name_or_path);
    if path.is_file() {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Preset { path: path.to_owned(), reason: e.to_string() })?;
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

/// Parses `block5=1,block10:0.5` (a bare name weighs 1).
pub fn parse_layers(spec: &str) -> Result<Vec<LayerTerm>> {
    let mut terms = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (layer, weight) = match part.split_once(['=', ':']) {
            Some((l, w)) => {
                let weight = w.trim().parse::<f32>().ok().filter(|v| v.is_finite()).ok_or_else(|| {
                    Error::usage(format!("bad layer weight '{}' in '{part}': expected a number", w.trim()))
                })?;
                (l.trim(), weight)
            }
            None => (part, 1.0),
        };
        terms.push(LayerTerm { layer: layer.to_owned(), weight });
    }
    if terms.is_empty() {
        return Err(Error::usage(format!("no layers in '{spec}'; expected e.g. block5=1,block10=1")));
    }
    Ok(terms)
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
        let terms = match (&cli.layers, &d.layers) {
            (Some(spec), _) => parse_layers(spec)?,
            (None, Some(map)) if !map.is_empty() => {
                map.iter().map(|(layer, &weight)| LayerTerm { layer: layer.clone(), weight }).collect()
            }
            _ => return Err(bad("layers", "the preset names no layers and none were given".into())),
        };
        let params = DreamParams {
            objective: LayerObjective { terms, border: 2 },
            octaves: cli.octaves.or(d.octaves).unwrap_or(3),
            octave_scale: cli.octave_scale.or(d.octave_scale).unwrap_or(1.4),
            steps: cli.steps.or(d.steps).unwrap_or(20),
            step: cli.step.or(d.step).unwrap_or(0.01),
            max_loss: cli.max_loss.or(d.max_loss),
            jitter: cli.jitter.or(d.jitter).unwrap_or(0),
            seed: cli.seed.or(d.seed).unwrap_or(0),
        };
        let model = cli.model.clone().or(p.model).unwrap_or_else(|| crate::model::DEFAULT_MODEL.to_owned());
        let job = DreamJob { model, params, max_size: cli.max_size.or(d.max_size) };
        job.check_values()?;
        Ok(job)
    }

    /// Range checks that do not need the network (those that do are in `DreamParams::validate`).
    fn check_values(&self) -> Result<()> {
        let p = &self.params;
        if p.octaves == 0 {
            return Err(Error::usage("--octaves must be at least 1"));
        }
        if !(p.octave_scale.is_finite() && p.octave_scale >= 1.0) {
            return Err(Error::usage(format!("--octave-scale must be at least 1, got {}", p.octave_scale)));
        }
        if !(p.step.is_finite() && p.step > 0.0) {
            return Err(Error::usage(format!("--step must be positive, got {}", p.step)));
        }
        if self.max_size == Some(0) {
            return Err(Error::usage("--max-size must be positive"));
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
            assert!(!job.params.objective.terms.is_empty(), "{name}");
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
        assert_eq!(
            job.params.objective.terms,
            vec![LayerTerm { layer: "block3".into(), weight: 2.0 }, LayerTerm { layer: "block4".into(), weight: 1.0 }]
        );
    }

    #[test]
    fn bad_layer_weight_is_an_error() {
        assert!(parse_layers("block3=abc").is_err());
        assert!(parse_layers(" , ").is_err());
    }
}
