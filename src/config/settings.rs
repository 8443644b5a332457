//! The dream settings of one command: flags over preset over defaults, each value checked
//! where it was written ([`Rule`]). [`super::job`] builds the plans on top of them.

use super::flags::{DreamFlags, EncodeFlags};
use super::job::{Job, Work};
use super::origin::{Origin, Rule, Sourced};
use super::parse::{class_mode, guide_mode, layer_term, parse_classes, parse_layers};
use super::preset::{PresetFile, PresetImage, Weights};
use crate::device::DeviceSpec;
use crate::dream::{DreamParams, Guide, GuideMode, LayerTerm, Objective, Regularize, Style, Tiling, class_index};
use crate::sink::{SinkOptions, X264_PRESETS};
use crate::{Error, Result};
use std::path::{Path, PathBuf};
use toml::Spanned;

/// Ascent steps: at least one per octave (zero would return the input unchanged).
const STEPS: Rule = Rule::Between(1.0, 100_000.0);

/// A flag's value with its origin.
pub fn flag<T: Clone>(name: &'static str, v: &Option<T>) -> Option<Sourced<T>> {
    v.as_ref().map(|v| Sourced::flag(name, v.clone()))
}

/// The flag's value, else the preset's, else `default`; each value given is checked.
pub(super) fn pick<T: super::origin::Number>(
    flag: Option<Sourced<T>>,
    preset: Option<Sourced<T>>,
    default: T,
    rule: Rule,
) -> Result<T> {
    Ok(optional(flag, preset, rule)?.unwrap_or(default))
}

/// Like [`pick`], without a default.
pub(super) fn optional<T: super::origin::Number>(
    flag: Option<Sourced<T>>,
    preset: Option<Sourced<T>>,
    rule: Rule,
) -> Result<Option<T>> {
    let preset = preset.map(|p| p.check(rule)).transpose()?;
    let flag = flag.map(|f| f.check(rule)).transpose()?;
    Ok(flag.or(preset))
}

/// The flag's value, else the preset's, each interpreted by `parse` with errors at its origin.
pub(super) fn pick_with<T, U>(
    flag: Option<Sourced<T>>,
    preset: Option<Sourced<T>>,
    parse: impl Fn(&T) -> std::result::Result<U, String>,
) -> Result<Option<U>> {
    let preset = preset.map(|p| p.parse(&parse)).transpose()?;
    let flag = flag.map(|f| f.parse(&parse)).transpose()?;
    Ok(flag.or(preset))
}

/// The preset and the flags of one command, before they become a job.
pub(super) struct Settings<'a> {
    flags: &'a DreamFlags,
    pub(super) file: PresetFile,
    /// The zoo model: --model, else the preset's, else the default.
    model: String,
    /// Where each layer an objective names came from, for the checks against the network.
    layers: std::cell::RefCell<Vec<(String, Origin)>>,
}

impl<'a> Settings<'a> {
    /// The flags with their preset: --preset, else the command's own `default_preset`.
    pub(super) fn load(flags: &'a DreamFlags, default_preset: &str) -> Result<Settings<'a>> {
        let file = PresetFile::load(flags.preset.as_deref().unwrap_or(default_preset))?;
        let model = match (flag("--model", &flags.model), file.get("model", &file.preset.model)) {
            (Some(m), _) | (None, Some(m)) => {
                m.parse(|name| crate::model::info(name).map(|_| name.clone()).map_err(|e| e.to_string()))?
            }
            (None, None) => crate::model::DEFAULT_MODEL.to_owned(),
        };
        Ok(Settings { flags, file, model, layers: Default::default() })
    }

    /// The model the preset is written for, when it names one other than the job's.
    fn foreign_preset(&self) -> Option<&str> {
        self.file.preset.model.as_ref().map(|m| m.get_ref().as_str()).filter(|m| *m != self.model)
    }

    /// No --preset and a --model other than the default preset's: the model dreams on its own
    /// default layers ([`crate::model::default_layers`]) with the default recipe.
    fn own_default_layers(&self) -> bool {
        self.flags.preset.is_none() && self.foreign_preset().is_some()
    }

    pub(super) fn job(&self, input: &Path, output: &Path, work: Work) -> Result<Job> {
        for source in self.sources(input) {
            if crate::io::would_destroy(&source, output) {
                return Err(Error::usage(format!(
                    "-o: {} would overwrite the input {}; choose another output",
                    output.display(),
                    source.display()
                )));
            }
        }
        let f = self.flags;
        let d = &self.file.preset.dream;
        let model = self.model.clone();
        let device = f.device.as_deref().map_or(Ok(DeviceSpec::Cpu), DeviceSpec::parse)?;
        let max_size =
            optional(flag("--max-size", &f.max_size), self.file.get("dream.max_size", &d.max_size), MAX_SIZE)?;
        let layers = self.layers.borrow().clone();
        let mut job = Job {
            model,
            device,
            input: input.to_owned(),
            output: output.to_owned(),
            max_size,
            work,
            resume: false,
            layers,
            octaves_given: f.octaves.is_some(),
            warnings: Vec::new(),
        };
        job.warnings = self.idle_flags(job.params());
        Ok(job)
    }

    /// Flags given that change nothing in this job, for warnings: a seed with nothing random,
    /// a class mode with no class.
    fn idle_flags(&self, p: &crate::dream::DreamParams) -> Vec<String> {
        let f = self.flags;
        let r = &p.regularize;
        let mut idle = Vec::new();
        if f.seed.is_some() && p.jitter == 0 && r.scale_jitter == 0.0 && r.rotate_jitter == 0.0 {
            idle.push("--seed does nothing without --jitter, --scale-jitter or --rotate-jitter".to_owned());
        }
        if f.class_mode.is_some() && p.objective.classes.is_empty() {
            idle.push("--class-mode does nothing without --class (or a preset with classes)".to_owned());
        }
        idle
    }

    /// Every file the job reads: the input, the preset file, guide and style images.
    fn sources(&self, input: &Path) -> Vec<PathBuf> {
        let (f, file) = (self.flags, &self.file);
        let o = &file.preset.objective;
        let in_preset = [o.guide.as_ref().map(|g| &g.image), o.style.as_ref().map(|s| &s.image)];
        let mut sources = vec![input.to_owned()];
        sources.extend(file.paths().map(Path::to_path_buf));
        sources.extend(f.guide.iter().chain(&f.style).cloned());
        sources.extend(in_preset.into_iter().flatten().filter_map(|rel| match file.image(rel) {
            PresetImage::File(path) => Some(path),
            PresetImage::BuiltIn(..) => None,
        }));
        sources
    }

    pub(super) fn encoder(&self, e: &EncodeFlags) -> Result<SinkOptions> {
        let (o, default) = (&self.file.preset.output, SinkOptions::default());
        let crf =
            pick(flag("--crf", &e.crf), self.file.get("output.crf", &o.crf), default.crf, Rule::Between(0.0, 63.0))?;
        let preset =
            pick_with(flag("--x264-preset", &e.x264_preset), self.file.get("output.preset", &o.preset), |p| {
                match X264_PRESETS.contains(&p.as_str()) {
                    true => Ok(p.clone()),
                    false => Err(format!("unknown x264 preset '{p}': expected one of {}", X264_PRESETS.join(", "))),
                }
            })?
            .unwrap_or(default.preset);
        Ok(SinkOptions { crf, preset })
    }

    /// The dream settings.
    pub(super) fn params(&self) -> Result<DreamParams> {
        let (f, file) = (self.flags, &self.file);
        let d = &file.preset.dream;
        let r = &file.preset.regularize;
        let tile_rule = |t: Sourced<usize>| match t.value {
            1..256 => Err(t.origin.error(format!("must be 0 (off) or at least 256 pixels, got {}", t.value))),
            v => Ok(v),
        };
        let tile_preset = file.get("dream.tile", &d.tile).map(tile_rule).transpose()?;
        let tile = flag("--tile", &f.tile).map(tile_rule).transpose()?.or(tile_preset);
        let regularize = Regularize {
            grad_blur: pick(
                flag("--grad-blur", &f.grad_blur),
                file.get("regularize.grad_blur", &r.grad_blur),
                0.0,
                SIGMA,
            )?,
            image_blur: pick(
                flag("--image-blur", &f.image_blur),
                file.get("regularize.image_blur", &r.image_blur),
                0.0,
                SIGMA,
            )?,
            decay: pick(flag("--decay", &f.decay), file.get("regularize.decay", &r.decay), 0.0, Rule::From(0.0, 1.0))?,
            laplacian: pick(
                flag("--laplacian", &f.laplacian),
                file.get("regularize.laplacian", &r.laplacian),
                0,
                LEVELS,
            )?,
            clip: !f.no_clip && r.clip.as_ref().is_none_or(|c| *c.get_ref()),
            scale_jitter: pick(
                flag("--scale-jitter", &f.scale_jitter),
                file.get("regularize.scale_jitter", &r.scale_jitter),
                0.0,
                Rule::Between(0.0, 1.0),
            )?,
            decorrelate: !f.no_decorrelate && (f.decorrelate || r.decorrelate.as_ref().is_some_and(|d| *d.get_ref())),
            rotate_jitter: pick(
                flag("--rotate-jitter", &f.rotate_jitter),
                file.get("regularize.rotate_jitter", &r.rotate_jitter),
                0.0,
                Rule::Between(0.0, 180.0),
            )?,
        };
        Ok(DreamParams {
            objective: self.objective()?,
            regularize,
            octaves: pick(
                flag("--octaves", &f.octaves),
                file.get("dream.octaves", &d.octaves),
                3,
                Rule::Between(1.0, 64.0),
            )?,
            octave_scale: pick(
                flag("--octave-scale", &f.octave_scale),
                file.get("dream.octave_scale", &d.octave_scale),
                1.4,
                Rule::Between(1.0, 16.0),
            )?,
            steps: pick(flag("--steps", &f.steps), file.get("dream.steps", &d.steps), 20, STEPS)?,
            step: pick(flag("--step", &f.step), file.get("dream.step", &d.step), 0.01, Rule::Positive)?,
            // A preset's max_loss is tuned to its own objective: one given on the command line
            // (--layers, --class, --guide, --style) drops it, unless --max-loss is given.
            max_loss: {
                let max_loss = optional(flag("--max-loss", &f.max_loss), None, Rule::Finite)?;
                let preset = optional(None, file.get("dream.max_loss", &d.max_loss), Rule::Finite)?;
                let replaced = f.layers.is_some()
                    || f.classes.is_some()
                    || f.guide.is_some()
                    || f.style.is_some()
                    || self.own_default_layers();
                max_loss.or(preset.filter(|_| !replaced))
            },
            jitter: pick(
                flag("--jitter", &f.jitter),
                file.get("dream.jitter", &d.jitter),
                0,
                Rule::Between(0.0, 4096.0),
            )?,
            seed: flag("--seed", &f.seed).or(file.get("dream.seed", &d.seed)).map_or(0, |s| s.value),
            tiling: tile.map_or_else(Tiling::default, Tiling::with_tile),
            original_colors: f.original_colors || d.original_colors.as_ref().is_some_and(|o| *o.get_ref()),
        })
    }

    fn objective(&self) -> Result<Objective> {
        let (f, file) = (self.flags, &self.file);
        let o = &file.preset.objective;
        // A new objective on the command line replaces the preset's layer terms.
        let cli_objective = f.classes.is_some() || f.guide.is_some() || f.style.is_some();
        let layers = match (flag("--layers", &f.layers), &file.preset.dream.layers) {
            (Some(spec), _) => self.flag_terms(&spec)?,
            (None, _) if cli_objective => Vec::new(),
            (None, Some(_)) if self.own_default_layers() => {
                let origin = Origin::Default("layers");
                let defaults = crate::model::default_layers(&self.model);
                self.layers.borrow_mut().extend(defaults.iter().map(|(l, _)| (l.to_string(), origin.clone())));
                defaults.iter().map(|(l, w)| LayerTerm::new(l, *w)).collect()
            }
            (None, Some(map)) => self.layer_terms("dream.layers", map)?,
            (None, None) => Vec::new(),
        };
        let classes = match (flag("--class", &f.classes), &o.classes) {
            (Some(spec), _) => spec.parse(|s| parse_classes(s).map_err(|e| e.to_string()))?,
            (None, Some(map)) => self
                .weights("objective.classes", map)?
                .into_iter()
                .map(|(name, w)| Ok((name.parse(|n| class_index(n).map_err(|e| e.to_string()))?, w)))
                .collect::<Result<_>>()?,
            (None, None) => Vec::new(),
        };
        let class_mode = pick_with(
            flag("--class-mode", &f.class_mode),
            file.get("objective.class_mode", &o.class_mode),
            class_mode,
        )?
        .unwrap_or(crate::dream::ClassMode::LogSoftmax);
        let objective = Objective {
            layers,
            border: 2,
            classes,
            class_mode,
            guides: self.guide()?.into_iter().collect(),
            style: self.style()?,
            tv: pick(flag("--tv", &f.tv), file.get("objective.tv", &o.tv), 0.0, Rule::Between(0.0, 10_000.0))?,
        };
        if objective.layers.is_empty()
            && objective.classes.is_empty()
            && objective.guides.is_empty()
            && objective.style.is_none()
        {
            return Err(Error::usage(format!(
                "nothing to dream on: {} names no layers, classes, guide or style, and no --layers was given",
                file.path.display()
            )));
        }
        Ok(objective)
    }

    /// A `name = weight` table's entries, each weight checked where it is written.
    fn weights(&self, key: &str, map: &Spanned<Weights>) -> Result<Vec<(Sourced<String>, f32)>> {
        map.get_ref()
            .iter()
            .map(|(name, w)| {
                let origin = self.file.origin(&format!("{key}.{name}"), w.span());
                let weight = Sourced { value: *w.get_ref(), origin: origin.clone() }.check(WEIGHT)?;
                Ok((Sourced { value: name.clone(), origin }, weight))
            })
            .collect()
    }

    fn layer_terms(&self, key: &str, map: &Spanned<Weights>) -> Result<Vec<LayerTerm>> {
        let terms: Vec<LayerTerm> = self
            .weights(key, map)?
            .into_iter()
            .map(|(name, w)| {
                let mut term = name.parse(|n| layer_term(n, w).map_err(|e| e.to_string()))?;
                if let Some(from) = self.foreign_preset() {
                    // A preset written for another model: its layers mapped where the networks
                    // share a plan, else a clear refusal.
                    let to = &self.model;
                    term.layer = crate::model::map_layer(from, to, &term.layer, term.channel).ok_or_else(|| {
                        name.origin.error(format!(
                            "the preset is written for {from}, and layer '{}' has no counterpart in {to}; give \
                             --layers (`deepdream layers --model {to}` lists them) or a preset written for {to}",
                            name.value
                        ))
                    })?;
                }
                self.layers.borrow_mut().push((term.layer.clone(), name.origin));
                Ok(term)
            })
            .collect::<Result<_>>()?;
        if terms.is_empty() {
            return Err(self.file.origin(key, map.span()).error("names no layers"));
        }
        Ok(terms)
    }

    /// Layer terms from a flag's `block5=1,block8` list, remembered as coming from the flag.
    fn flag_terms(&self, spec: &Sourced<String>) -> Result<Vec<LayerTerm>> {
        let terms = spec.parse(|s| parse_layers(s).map_err(|e| e.to_string()))?;
        self.layers.borrow_mut().extend(terms.iter().map(|t| (t.layer.clone(), spec.origin.clone())));
        Ok(terms)
    }

    /// Layer terms from a flag, else from the preset table at `key`.
    fn terms(
        &self,
        flag_name: &'static str,
        spec: &Option<String>,
        key: &str,
        map: Option<&Spanned<Weights>>,
    ) -> Result<Option<Vec<LayerTerm>>> {
        match (flag(flag_name, spec), map) {
            (Some(spec), _) => self.flag_terms(&spec).map(Some),
            (None, Some(map)) => self.layer_terms(key, map).map(Some),
            (None, None) => Ok(None),
        }
    }

    /// The layers an image objective (`guide`, `style`) acts on: from its flag, else from its
    /// preset section (given as its image and layers); one of the two is required.
    fn image_layers(
        &self,
        kind: &str,
        flag_name: &'static str,
        spec: &Option<String>,
        section: Option<(&Spanned<String>, Option<&Spanned<Weights>>)>,
        example: &str,
    ) -> Result<Vec<LayerTerm>> {
        let key = format!("objective.{kind}");
        let layers = self.terms(flag_name, spec, &format!("{key}.layers"), section.and_then(|(_, l)| l))?;
        layers.ok_or_else(|| match section {
            Some((image, _)) => {
                self.file.origin(&key, image.span()).error(format!("needs `layers`, e.g. layers = {{ {example} = 1 }}"))
            }
            None => Error::usage(format!("--{kind} needs {flag_name}, e.g. {flag_name} {example}")),
        })
    }

    /// A guide or style image: the flag's path, else the preset's (relative to the preset).
    fn image(
        &self,
        flag_name: &'static str,
        flag_path: &Option<PathBuf>,
        key: &str,
        preset: Option<&Spanned<String>>,
    ) -> Result<candle_core::Tensor> {
        let load =
            |path: &Path| crate::io::to_tensor(&crate::io::load_rgb(path, Some(1024))?, &candle_core::Device::Cpu);
        match (flag_path, preset) {
            (Some(path), _) => load(path).map_err(|e| Origin::Flag(flag_name).blame(e)),
            (None, Some(rel)) => match self.file.image(rel) {
                PresetImage::File(path) => load(&path),
                PresetImage::BuiltIn(name, bytes) => crate::io::decode_rgb(bytes.to_vec(), Path::new(name), Some(1024))
                    .and_then(|img| crate::io::to_tensor(&img, &candle_core::Device::Cpu)),
            }
            .map_err(|e| self.file.origin(key, rel.span()).blame(e)),
            (None, None) => Err(Error::internal("an image was asked for where none is given")),
        }
    }

    /// A weight from a flag or the preset, default 1.
    fn weight(&self, name: &'static str, f: &Option<f32>, key: &str, preset: &Option<Spanned<f32>>) -> Result<f32> {
        pick(flag(name, f), self.file.get(key, preset), 1.0, WEIGHT)
    }

    fn guide(&self) -> Result<Option<Guide>> {
        let f = self.flags;
        let g = self.file.preset.objective.guide.as_ref();
        if f.guide.is_none() && g.is_none() {
            let given = [("--guide-layers", f.guide_layers.is_some()), ("--guide-mode", f.guide_mode.is_some())];
            return unused(&given, ("--guide-weight", f.guide_weight.is_some()), "--guide", "[objective.guide]");
        }
        let layers = self.image_layers(
            "guide",
            "--guide-layers",
            &f.guide_layers,
            g.map(|g| (&g.image, g.layers.as_ref())),
            "block8",
        )?;
        let mode = pick_with(
            flag("--guide-mode", &f.guide_mode),
            g.and_then(|g| self.file.get("objective.guide.mode", &g.mode)),
            guide_mode,
        )?;
        let none = None;
        Ok(Some(Guide {
            image: self.image("--guide", &f.guide, "objective.guide.image", g.map(|g| &g.image))?,
            layers,
            mode: mode.unwrap_or(GuideMode::Dot),
            weight: self.weight(
                "--guide-weight",
                &f.guide_weight,
                "objective.guide.weight",
                g.map_or(&none, |g| &g.weight),
            )?,
        }))
    }

    fn style(&self) -> Result<Option<Style>> {
        let f = self.flags;
        let s = self.file.preset.objective.style.as_ref();
        if f.style.is_none() && s.is_none() {
            let given =
                [("--style-layers", f.style_layers.is_some()), ("--content-layers", f.content_layers.is_some())];
            let weights = f.style_weight.is_some() || f.content_weight.is_some();
            return unused(&given, ("--style-weight or --content-weight", weights), "--style", "[objective.style]");
        }
        let layers = self.image_layers(
            "style",
            "--style-layers",
            &f.style_layers,
            s.map(|s| (&s.image, s.layers.as_ref())),
            "block1",
        )?;
        let content_layers = self.terms(
            "--content-layers",
            &f.content_layers,
            "objective.style.content_layers",
            s.and_then(|s| s.content_layers.as_ref()),
        )?;
        let none = None;
        Ok(Some(Style {
            image: self.image("--style", &f.style, "objective.style.image", s.map(|s| &s.image))?,
            layers,
            weight: self.weight(
                "--style-weight",
                &f.style_weight,
                "objective.style.weight",
                s.map_or(&none, |s| &s.weight),
            )?,
            content_layers: content_layers.unwrap_or_default(),
            content_weight: self.weight(
                "--content-weight",
                &f.content_weight,
                "objective.style.content_weight",
                s.map_or(&none, |s| &s.content_weight),
            )?,
        }))
    }
}

/// `Ok(None)` when none of an absent objective's own flags is given, else the error naming
/// the first: they would be silently ignored.
fn unused<T>(given: &[(&str, bool)], weight: (&str, bool), needs: &str, section: &str) -> Result<Option<T>> {
    match given.iter().chain([&weight]).find(|(_, on)| *on) {
        Some((name, _)) => Err(Error::usage(format!("{name}: needs {needs} (or a preset with {section})"))),
        None => Ok(None),
    }
}

/// The weight of an objective term: finite, and small enough that the loss stays finite.
pub const WEIGHT: Rule = Rule::Between(-10_000.0, 10_000.0);

/// Blur sigmas, in pixels (below a tenth of a pixel a blur does nothing but divide by ~0).
const SIGMA: Rule = Rule::OffOrBetween(0.1, 20.0);
/// Laplacian pyramid levels.
const LEVELS: Rule = Rule::Between(0.0, 16.0);
/// The input's longest side.
const MAX_SIZE: Rule = Rule::Between(1.0, 65_536.0);
