//! What the ascent maximises: a weighted sum of terms that can be mixed in one preset.
//!
//! - layers: `sum(a^2 over non-border pixels) / numel(a)` (the classic DeepDream loss), or the
//!   mean activation of one channel (`mixed4:97`);
//! - classes: ImageNet logits or log-softmax probabilities;
//! - guide: make features resemble a guide image's (best-match dot product, or L2);
//! - style: match Gram matrices of a style image, keep the content of the input;
//! - total variation, subtracted to keep the image smooth.

use crate::model::{FeatureNet, Features, Loss, labels};
use crate::ops::resize_bilinear;
use crate::{Error, Result};
use candle_core::{D, DType, Tensor};
use std::collections::HashMap;
use std::ops::Range;

/// One layer of the layer objective, optionally one channel of it, and its weight.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LayerTerm {
    pub layer: String,
    pub channel: Option<usize>,
    pub weight: f32,
    /// `LAYER:topK`: the K channels most active on the input, chosen once the network and the
    /// picture are known ([`pick_top_channels`]); never left in a dream's objective.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top: Option<usize>,
}

impl LayerTerm {
    pub fn new(layer: &str, weight: f32) -> Self {
        LayerTerm { layer: layer.to_owned(), channel: None, weight, top: None }
    }
}

/// Replaces each `LAYER:topK` term by the K channels of the layer with the highest mean
/// activation on `input` (normalised network input, `[1, 3, h, w]`), each with the term's
/// weight over K. Returns, per replaced term, its spelling and the channels chosen.
pub fn pick_top_channels(
    terms: &mut Vec<LayerTerm>,
    net: &dyn FeatureNet,
    input: &Tensor,
) -> crate::Result<Vec<(String, Vec<usize>)>> {
    let wanted: Vec<String> = terms.iter().filter(|t| t.top.is_some()).map(|t| t.layer.clone()).collect();
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let features = net.forward(input, &wanted, false)?;
    let mut picked = Vec::new();
    let mut out = Vec::with_capacity(terms.len());
    for term in terms.drain(..) {
        let Some(k) = term.top else {
            out.push(term);
            continue;
        };
        let means: Vec<f32> = features.taps[&term.layer].mean((2, 3))?.flatten_all()?.to_vec1()?;
        let mut order: Vec<usize> = (0..means.len()).collect();
        order.sort_by(|&a, &b| means[b].total_cmp(&means[a]));
        let chosen: Vec<usize> = order.into_iter().take(k).collect();
        let weight = term.weight / chosen.len().max(1) as f32;
        for &c in &chosen {
            out.push(LayerTerm { layer: term.layer.clone(), channel: Some(c), weight, top: None });
        }
        picked.push((format!("{}:top{k}", term.layer), chosen));
    }
    *terms = out;
    Ok(picked)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum ClassMode {
    /// Raw logits: the class grows without pushing the others down.
    Logits,
    /// Log-probabilities: the class grows at the expense of the others.
    LogSoftmax,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum GuideMode {
    /// Each position moves toward the guide feature it already matches best (Mordvintsev).
    Dot,
    /// Features pulled toward the guide's at the same place (guide resized to the dream).
    L2,
}

/// A guide image (pixels 0..255, `[1, 3, h, w]`) and the layers it guides.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Guide {
    /// Fingerprinted as a hash of its pixels.
    #[serde(serialize_with = "super::pixels_hash")]
    pub image: Tensor,
    pub layers: Vec<LayerTerm>,
    pub mode: GuideMode,
    pub weight: f32,
}

/// Gram-matrix style of `image` at `layers`, plus the content of the input at `content_layers`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Style {
    #[serde(serialize_with = "super::pixels_hash")]
    pub image: Tensor,
    pub layers: Vec<LayerTerm>,
    pub weight: f32,
    pub content_layers: Vec<LayerTerm>,
    pub content_weight: f32,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Objective {
    pub layers: Vec<LayerTerm>,
    /// Pixels of each activation's border left out of the layer sum (the recipe's 2).
    pub border: usize,
    /// (class index, weight)
    pub classes: Vec<(usize, f32)>,
    pub class_mode: ClassMode,
    /// Guide images (one given by --guide or a preset; several where looks fade from one to
    /// another).
    pub guides: Vec<Guide>,
    pub style: Option<Style>,
    /// Weight of the total-variation penalty on the image.
    pub tv: f32,
}

/// Targets that depend on the octave's size: guide features, style Gram matrices, content.
#[derive(Clone, Default)]
pub struct Prepared {
    /// Per guide (in the objective's order): its features by layer.
    guide: Vec<HashMap<String, Tensor>>,
    grams: HashMap<String, Tensor>,
    content: HashMap<String, Tensor>,
    /// Images whose features are compared position by position (an L2 guide resized to the
    /// octave, the style's content image): kept so a tile can take its own window of them.
    l2_guide_image: Vec<Option<Tensor>>,
    content_image: Option<Tensor>,
    /// Sides (top, bottom, left, right) that are cuts inside a larger image, not its edges:
    /// the layer loss keeps their border (only the image's own edges lose it).
    inner_sides: [bool; 4],
}

impl Prepared {
    /// Marks which sides of a window (top, bottom, left, right) are cuts inside the image.
    pub fn set_inner_sides(&mut self, sides: [bool; 4]) {
        self.inner_sides = sides;
    }

    /// Whether some targets are compared position by position (and so must move with the
    /// jitter roll).
    pub fn is_positional(&self) -> bool {
        self.l2_guide_image.iter().any(Option::is_some) || self.content_image.is_some()
    }

    /// The targets for the image rolled by `(dy, dx)` pixels, as the jitter rolls it: the
    /// positional images roll with it (their features are computed by [`Prepared::window`]).
    pub fn rolled(&self, dy: i32, dx: i32) -> Result<Prepared> {
        let mut p = self.clone();
        let roll = |img: &Option<Tensor>| img.as_ref().map(|i| super::roll2(i, dy, dx)).transpose();
        p.l2_guide_image = self.l2_guide_image.iter().map(roll).collect::<Result<_>>()?;
        p.content_image = roll(&self.content_image)?;
        Ok(p)
    }

    /// The targets for the window `rows x cols` of the octave image.
    pub fn window(
        &self,
        objective: &Objective,
        net: &dyn FeatureNet,
        rows: Range<usize>,
        cols: Range<usize>,
    ) -> Result<Prepared> {
        let mut p = self.clone();
        let crop = |img: &Tensor| -> Result<Tensor> {
            Ok(img.narrow(2, rows.start, rows.len())?.narrow(3, cols.start, cols.len())?)
        };
        for (i, g) in objective.guides.iter().enumerate() {
            if let Some(img) = self.l2_guide_image.get(i).and_then(Option::as_ref) {
                p.guide[i] = detached_taps(net, &crop(img)?, &g.layers)?;
            }
        }
        if let (Some(img), Some(s)) = (&self.content_image, &objective.style) {
            p.content = detached_taps(net, &crop(img)?, &s.content_layers)?;
        }
        Ok(p)
    }
}

/// Resolves a class given by index or name; a misspelt name gets the closest suggestions.
pub fn class_index(name: &str) -> Result<usize> {
    let labels = labels::imagenet();
    if let Ok(i) = name.parse::<usize>() {
        return if i < labels.len() {
            Ok(i)
        } else {
            Err(Error::usage(format!("class index {i} is out of range 0..{}", labels.len())))
        };
    }
    // `go-kart`, `go_kart` and `Go Kart` are one name, on both sides.
    let norm = |s: &str| s.trim().to_lowercase().replace(['_', '-'], " ");
    let wanted = norm(name);
    if let Some(i) = labels.iter().position(|l| norm(l) == wanted) {
        return Ok(i);
    }
    let mut scored: Vec<(f64, &str)> =
        labels.iter().map(|l| (strsim::normalized_damerau_levenshtein(&wanted, &l.to_lowercase()), *l)).collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    let close: Vec<_> = scored.iter().take(3).map(|(_, l)| format!("'{l}'")).collect();
    Err(Error::usage(format!("unknown ImageNet class '{name}'; did you mean {}?", close.join(", "))))
}

fn names(terms: &[LayerTerm]) -> impl Iterator<Item = &String> {
    terms.iter().map(|t| &t.layer)
}

/// The rows and columns of `a[:, :, b:-b, b:-b]`, or of the whole map when it is too small to
/// lose its border; sides marked `inner` (top, bottom, left, right: cuts inside a larger image)
/// keep theirs.
fn border_window(a: &Tensor, b: usize, inner: [bool; 4]) -> Result<(std::ops::Range<usize>, std::ops::Range<usize>)> {
    let (_, _, h, w) = a.dims4()?;
    let cut = |side: usize| if inner[side] { 0 } else { b };
    let rows = if h > 2 * b { cut(0)..h - cut(1) } else { 0..h };
    let cols = if w > 2 * b { cut(2)..w - cut(3) } else { 0..w };
    Ok((rows, cols))
}

/// `[1, c, h, w]` -> `[c, h*w]`.
/// The features of network input `x` at the terms' layers, cut from the graph (targets).
fn detached_taps(net: &dyn FeatureNet, x: &Tensor, terms: &[LayerTerm]) -> Result<HashMap<String, Tensor>> {
    let layers: Vec<String> = names(terms).cloned().collect();
    Ok(net.forward(x, &layers, false)?.taps.into_iter().map(|(k, v)| (k, v.detach())).collect())
}

fn flat(a: &Tensor) -> Result<Tensor> {
    let (_, c, h, w) = a.dims4()?;
    Ok(a.reshape((c, h * w))?)
}

fn gram(a: &Tensor) -> Result<Tensor> {
    let f = flat(a)?;
    let (c, n) = f.dims2()?;
    Ok((f.matmul(&f.t()?)? / (c * n) as f64)?)
}

fn add(total: Option<Tensor>, term: Tensor) -> Result<Option<Tensor>> {
    Ok(Some(match total {
        Some(t) => (t + term)?,
        None => term,
    }))
}

/// Resizes `img` so its area matches `h * w`, keeping its own aspect ratio.
fn resize_to_area(img: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (_, _, ih, iw) = img.dims4()?;
    let scale = ((h * w) as f64 / (ih * iw) as f64).sqrt();
    Ok(resize_bilinear(
        img,
        ((ih as f64 * scale).round() as usize).max(1),
        ((iw as f64 * scale).round() as usize).max(1),
    )?)
}

impl Objective {
    /// The classic objective on some layers.
    pub fn layers(terms: Vec<LayerTerm>) -> Self {
        Objective {
            layers: terms,
            border: 2,
            classes: Vec::new(),
            class_mode: ClassMode::LogSoftmax,
            guides: Vec::new(),
            style: None,
            tv: 0.0,
        }
    }

    /// Every layer any term reads.
    pub fn taps(&self) -> Vec<String> {
        let mut taps: Vec<String> = names(&self.layers).cloned().collect();
        for g in &self.guides {
            taps.extend(names(&g.layers).cloned());
        }
        if let Some(s) = &self.style {
            taps.extend(names(&s.layers).cloned());
            taps.extend(names(&s.content_layers).cloned());
        }
        taps.sort();
        taps.dedup();
        taps
    }

    /// Checks every term against the network before any work starts.
    pub fn check(&self, net: &dyn FeatureNet) -> Result<()> {
        if self.layers.is_empty() && self.classes.is_empty() && self.guides.is_empty() && self.style.is_none() {
            return Err(Error::usage("the objective is empty: give layers, classes, a guide or a style"));
        }
        net.check_layers(&self.taps())?;
        if !self.classes.is_empty() && !net.has_classifier() {
            return Err(Error::usage(format!(
                "{} has no classifier, so a class objective cannot run on it; use a model with one (e.g. efficientnet-lite0)",
                net.name()
            )));
        }
        if let Some(s) = &self.style
            && s.layers.is_empty()
        {
            return Err(Error::usage("the style objective names no style layers"));
        }
        if self.guides.iter().any(|g| g.layers.is_empty()) {
            return Err(Error::usage("the guide objective names no layers"));
        }
        Ok(())
    }

    /// Computes the octave's targets. `base` is the input at the octave's size (network input).
    pub fn prepare(&self, net: &dyn FeatureNet, base: &Tensor) -> Result<Prepared> {
        let (_, _, h, w) = base.dims4()?;
        self.prepare_shared(net, base)?.window(self, net, 0..h, 0..w)
    }

    /// The targets every window shares (a dot-product guide's features, the style's Gram
    /// matrices); the positional ones are left for [`Prepared::window`].
    pub fn prepare_shared(&self, net: &dyn FeatureNet, base: &Tensor) -> Result<Prepared> {
        let mut p = Prepared::default();
        let (_, _, h, w) = base.dims4()?;
        let norm = net.normalization();
        for g in &self.guides {
            match g.mode {
                GuideMode::Dot => {
                    let img = norm.apply(&resize_to_area(&g.image.to_device(base.device())?, h, w)?)?;
                    p.guide.push(detached_taps(net, &img, &g.layers)?);
                    p.l2_guide_image.push(None);
                }
                GuideMode::L2 => {
                    p.guide.push(HashMap::new());
                    let img = resize_bilinear(&g.image.to_device(base.device())?, h, w)?;
                    p.l2_guide_image.push(Some(norm.apply(&img)?));
                }
            }
        }
        if let Some(s) = &self.style {
            let img = resize_to_area(&s.image.to_device(base.device())?, h, w)?;
            let layers: Vec<String> = names(&s.layers).cloned().collect();
            for (k, v) in net.forward(&norm.apply(&img)?, &layers, false)?.taps {
                p.grams.insert(k, gram(&v)?.detach());
            }
            if !s.content_layers.is_empty() {
                p.content_image = Some(base.detach());
            }
        }
        Ok(p)
    }

    /// The scalar to maximise for network input `x`: a value only (the classic layer terms are
    /// summed outside any graph, in f64 on the CPU; use `loss_and_grad` for the gradient).
    pub fn loss(&self, net: &dyn FeatureNet, x: &Tensor, prepared: &Prepared) -> Result<Tensor> {
        let features: Features = net.forward(x, &self.taps(), !self.classes.is_empty())?;
        Ok(self.loss_of(&features, x, prepared, false)?.value)
    }

    /// The loss (a one-element tensor on `x`'s device) and its gradient with respect to the
    /// network input `x`.
    pub fn loss_and_grad(&self, net: &dyn FeatureNet, x: &Tensor, prepared: &Prepared) -> Result<(Tensor, Tensor)> {
        net.loss_and_grad(x, &self.taps(), !self.classes.is_empty(), &|features, x| {
            self.loss_of(features, x, prepared, true)
        })
    }

    /// The scalar to maximise, from the network's features for input `x` (and `x` itself). With
    /// `grads`, the classic layer terms come with their gradients (`Loss::direct`) and stay out
    /// of the graph; without, they are values only.
    pub fn loss_of(&self, features: &Features, x: &Tensor, prepared: &Prepared, grads: bool) -> Result<Loss> {
        let tap =
            |name: &str| features.taps.get(name).ok_or_else(|| Error::usage(format!("layer {name} was not computed")));
        let mut total: Option<Tensor> = None;
        let mut direct: Vec<(String, Tensor)> = Vec::new();
        for term in &self.layers {
            let a = tap(&term.layer)?;
            let value = match term.channel {
                None => {
                    // sum(a^2 in the window) / n: its gradient 2 a g in the window, with g the
                    // scalar candle's graph of `(sum / n) * weight` would have handed the sum.
                    let (rows, cols) = border_window(a, self.border, prepared.inner_sides)?;
                    let n = a.elem_count() as f64;
                    // A term weighted 0 hands no gradient (as candle's graph gave none: when
                    // every term is 0, there is nothing to dream).
                    if grads && term.weight != 0.0 {
                        let g = term.weight * ((1.0 / n) as f32);
                        let d = crate::ops::loss::window_square_sum_grad(a, rows.clone(), cols.clone(), g)?;
                        match direct.iter_mut().find(|(t, _)| *t == term.layer) {
                            Some((_, sum)) => *sum = (&*sum + d)?,
                            None => direct.push((term.layer.clone(), d)),
                        }
                    }
                    (crate::ops::loss::window_square_sum(a, rows, cols)? / n)?
                }
                Some(c) => {
                    let channels = a.dim(1)?;
                    if c >= channels {
                        return Err(Error::usage(format!(
                            "layer {} has {channels} channels; channel {c} does not exist",
                            term.layer
                        )));
                    }
                    a.narrow(1, c, 1)?.mean_all()?
                }
            };
            total = add(total, (value * term.weight as f64)?)?;
        }
        if let Some(logits) = &features.logits {
            let scores = match self.class_mode {
                ClassMode::Logits => logits.clone(),
                ClassMode::LogSoftmax => candle_nn::ops::log_softmax(logits, D::Minus1)?,
            };
            for &(class, weight) in &self.classes {
                total = add(total, (scores.narrow(1, class, 1)?.sum_all()? * weight as f64)?)?;
            }
        }
        for (i, g) in self.guides.iter().enumerate() {
            for term in &g.layers {
                let (a, target) = (tap(&term.layer)?, &prepared.guide[i][&term.layer]);
                let value = match g.mode {
                    GuideMode::Dot => {
                        let (xf, yf) = (flat(a)?, flat(target)?);
                        // For each dream position, the guide feature with the largest dot product.
                        let best = xf.detach().t()?.matmul(&yf)?.argmax(D::Minus1)?.to_dtype(DType::U32)?;
                        let matched = yf.index_select(&best, 1)?;
                        ((xf * matched)?.sum_all()? / a.elem_count() as f64)?
                    }
                    GuideMode::L2 => (a - target)?.sqr()?.mean_all()?.neg()?,
                };
                total = add(total, (value * (term.weight * g.weight) as f64)?)?;
            }
        }
        if let Some(s) = &self.style {
            for term in &s.layers {
                let d = (gram(tap(&term.layer)?)? - &prepared.grams[&term.layer])?.sqr()?.sum_all()?;
                total = add(total, (d.neg()? * (term.weight * s.weight) as f64)?)?;
            }
            for term in &s.content_layers {
                let d = (tap(&term.layer)? - &prepared.content[&term.layer])?.sqr()?.mean_all()?;
                total = add(total, (d.neg()? * (term.weight * s.content_weight) as f64)?)?;
            }
        }
        if self.tv > 0.0 {
            let (_, _, h, w) = x.dims4()?;
            let dy = (x.narrow(2, 1, h - 1)? - x.narrow(2, 0, h - 1)?)?.sqr()?.mean_all()?;
            let dx = (x.narrow(3, 1, w - 1)? - x.narrow(3, 0, w - 1)?)?.sqr()?.mean_all()?;
            total = add(total, ((dy + dx)? * -(self.tv as f64))?)?;
        }
        let value = total.ok_or_else(|| Error::usage("the objective is empty"))?;
        Ok(Loss { value, direct })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_by_name_or_index() {
        assert_eq!(class_index("banana").unwrap(), 954);
        assert_eq!(class_index("Egyptian_cat").unwrap(), 285);
        assert_eq!(class_index("281").unwrap(), 281);
        assert!(class_index("1000").is_err());
        // Names with hyphens, however spelt.
        let kart = class_index("go-kart").unwrap();
        assert_eq!(crate::model::labels::imagenet()[kart], "go-kart");
        assert_eq!((class_index("go_kart").unwrap(), class_index("Go Kart").unwrap()), (kart, kart));
        assert!(class_index("jack-o'-lantern").is_ok() && class_index("three-toed sloth").is_ok());
    }

    #[test]
    fn misspelt_class_gets_suggestions() {
        let err = class_index("bananna").unwrap_err().to_string();
        assert!(err.contains("did you mean") && err.contains("'banana'"), "{err}");
    }
}
