//! The octave dream: gradient ascent on the input image, from the smallest octave up, with the
//! detail lost by shrinking re-injected after each upscale.

pub mod animation;
pub mod objective;
pub mod tile;
pub mod timeline;
pub mod zoom;

pub use objective::{ClassMode, Guide, GuideMode, LayerTerm, Objective, Prepared, Style, class_index};
pub use tile::{Tiler, Tiling};
pub use zoom::ZoomTransform;

use crate::model::FeatureNet;
use crate::ops::{gaussian_blur, laplacian_normalize, resize_bilinear};
use crate::{Error, Result};
use candle_core::Tensor;
use rand::{Rng, SeedableRng, rngs::StdRng};

/// Smoothing applied around each ascent step.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Regularize {
    /// Gaussian blur of the gradient, sigma in pixels (0: off).
    pub grad_blur: f64,
    /// Gaussian blur of the image after each step, sigma in pixels (0: off).
    pub image_blur: f64,
    /// Shrinks the image toward mid-grey by this fraction each step (L2 decay).
    pub decay: f64,
    /// Laplacian-pyramid normalisation of the gradient with this many levels (0: off).
    pub laplacian: usize,
    /// Clip to the valid pixel range after every step (else only at the end).
    pub clip: bool,
    /// Transformation robustness: each step the network sees the image scaled by a random
    /// factor within this fraction (0.1: 0.91 to 1.1) and turned by a random angle within
    /// `rotate_jitter` degrees, and the gradient is turned back. What survives every view is
    /// what the network sees at any scale and angle: objects, not the one network's
    /// high-frequency patterns, so a second network sees them too (0: off).
    pub scale_jitter: f64,
    pub rotate_jitter: f64,
    /// Precondition the gradient with the colour covariance of natural images (Lucid's
    /// decorrelated colour space): steps move along the colour directions photos vary in
    /// (mostly brightness) instead of each channel on its own, which paints rainbows.
    pub decorrelate: bool,
}

impl Default for Regularize {
    fn default() -> Self {
        Regularize {
            grad_blur: 0.0,
            image_blur: 0.0,
            decay: 0.0,
            laplacian: 0,
            clip: true,
            scale_jitter: 0.0,
            rotate_jitter: 0.0,
            decorrelate: false,
        }
    }
}

/// Everything one dream needs besides the network and the image. Its values are checked
/// once, with their origins, by [`crate::config`]; the dream trusts them.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DreamParams {
    pub objective: Objective,
    pub regularize: Regularize,
    pub octaves: usize,
    /// Size ratio between neighbouring octaves (> 1).
    pub octave_scale: f64,
    pub steps: usize,
    /// Step size, applied to the gradient normalised by its mean absolute value.
    pub step: f64,
    /// Stop an octave once the loss passes this value.
    pub max_loss: Option<f64>,
    /// Largest random shift in pixels, each step (0: none).
    pub jitter: usize,
    pub seed: u64,
    /// Large images are dreamt in overlapping tiles to bound memory.
    pub tiling: Tiling,
    /// Keep the input's colours: only the dream's brightness is kept (Google's and
    /// neural-dream's `original_colors`).
    pub original_colors: bool,
}

/// Octave sizes, smallest first: `floor(dim / scale^i)` for i = octaves-1 .. 0.
pub fn octave_shapes(h: usize, w: usize, octaves: usize, scale: f64) -> Vec<(usize, usize)> {
    (0..octaves)
        .rev()
        .map(|i| {
            let f = scale.powf(i as f64);
            (((h as f64 / f) as usize).max(1), ((w as f64 / f) as usize).max(1))
        })
        .collect()
}

impl DreamParams {
    /// The work of one dream of an `h` x `w` image, in pixel-steps (each octave's pixels times
    /// its steps): a step costs about its pixel count, so this weighs progress and estimates.
    pub fn pixel_steps(&self, (h, w): (usize, usize)) -> f64 {
        octave_shapes(h, w, self.octaves, self.octave_scale).iter().map(|&(h, w)| (h * w * self.steps) as f64).sum()
    }

    /// The checks that need the network (layer names, channels, classifier), run once after
    /// the model loads; see also [`check_smallest_octave`].
    pub fn check_network(&self, net: &dyn FeatureNet) -> Result<()> {
        self.objective.check(net)
    }
}

/// Serialises a tensor as the sha256 of its values (a guide or style image in a job's
/// fingerprint: its content, not its path).
pub(crate) fn pixels_hash<S: serde::Serializer>(t: &Tensor, s: S) -> std::result::Result<S::Ok, S::Error> {
    use sha2::Digest;
    let values = t.flatten_all().and_then(|v| v.to_vec1::<f32>()).map_err(serde::ser::Error::custom)?;
    let mut h = sha2::Sha256::new();
    h.update(format!("{:?}", t.dims()));
    for v in values {
        h.update(v.to_le_bytes());
    }
    s.serialize_str(&format!("sha256:{}", crate::io::hex(&h.finalize())))
}

/// Where a dream is, reported after every ascent step.
#[derive(Clone, Debug)]
pub struct StepInfo {
    pub octave: usize,
    pub octaves: usize,
    pub step: usize,
    pub steps: usize,
    /// The loss before this step, when it was read back (every step on the CPU, with max_loss,
    /// or every [`Progress::loss_every`] steps).
    pub loss: Option<f32>,
    pub height: usize,
    pub width: usize,
}

/// Receives progress; returning `false` cancels the dream.
pub trait Progress: Send {
    fn step(&mut self, info: &StepInfo) -> bool;
    /// Every how many steps the loss should be read back for display where reading stalls the
    /// device (0: never; it is read at the end of the dream).
    fn loss_every(&self) -> usize {
        0
    }
    /// Every how many steps [`Progress::picture`] wants the picture (0: never).
    fn pictures_every(&self) -> usize {
        0
    }
    /// The picture as it stands (0..255 pixels at the input's full size, `[1, 3, h, w]`).
    fn picture(&mut self, _pixels: &Tensor) -> Result<()> {
        Ok(())
    }
}

/// A progress sink that reports nothing and never cancels.
pub struct Quiet;

impl Progress for Quiet {
    fn step(&mut self, _: &StepInfo) -> bool {
        true
    }
}

/// The dreamed image (0..255 pixels, not rounded) and the loss before each applied step.
pub struct DreamOutput {
    pub pixels: Tensor,
    pub losses: Vec<f32>,
}

/// The loss and its gradient with respect to the network input `x`, the loss read back to the
/// host (the dream itself leaves it on the device: [`Objective::loss_and_grad`]).
pub fn loss_and_grad(
    net: &dyn FeatureNet,
    objective: &Objective,
    x: &Tensor,
    prepared: &Prepared,
) -> Result<(f32, Tensor)> {
    let (loss, grad) = objective.loss_and_grad(net, x, prepared)?;
    Ok((crate::ops::host::read_scalar(&loss)?, grad))
}

/// Dreams `pixels` (`[1, 3, h, w]`, 0..255).
pub fn dream(
    net: &dyn FeatureNet,
    pixels: &Tensor,
    params: &DreamParams,
    progress: &mut dyn Progress,
) -> Result<DreamOutput> {
    if params.octaves == 0 || !(params.step.is_finite() && params.octave_scale >= 1.0) {
        // The CLI's settings are checked with their origins in `config`; a library caller that
        // skips that gets this instead of a panic or a black image.
        let (o, s, k) = (params.octaves, params.step, params.octave_scale);
        return Err(Error::internal(format!("unchecked dream settings: {o} octaves, step {s}, octave scale {k}")));
    }
    let norm = net.normalization();
    let (lo, hi) = norm.valid_range(pixels.device())?;
    let base = norm.apply(pixels)?;
    let (_, _, h, w) = base.dims4()?;
    let shapes = octave_shapes(h, w, params.octaves, params.octave_scale);
    let mut rng = StdRng::seed_from_u64(params.seed);
    let mut x = resize_bilinear(&base, shapes[0].0, shapes[0].1)?;
    let mut shrunk = x.clone();
    // The losses stay on the device until the end of the dream (one read for them all), unless
    // max_loss needs each one at once, or the progress display asks for one now and then; on
    // the CPU reading costs nothing, so every step reads it.
    let stalls = crate::ops::host::reads_stall(pixels.device());
    let read_every = match (params.max_loss, stalls) {
        (Some(_), _) | (_, false) => 1,
        (None, true) => progress.loss_every(),
    };
    let mut losses: Vec<f32> = Vec::new();
    // Values read back later: losses and gradient scales, each with its octave and step.
    let mut pending = Pending::default();
    let mut last_loss = None;
    for (k, &(oh, ow)) in shapes.iter().enumerate() {
        if k > 0 {
            // Upscale the dream and add back the detail that the small octave could not hold.
            let base_here = resize_bilinear(&base, oh, ow)?;
            x = (resize_bilinear(&x, oh, ow)? + (&base_here - resize_bilinear(&shrunk, oh, ow)?)?)?;
            shrunk = base_here;
        }
        let tiler = Tiler::new(&params.objective, net, &shrunk, params.tiling)?;
        let r = &params.regularize;
        for s in 0..params.steps {
            let (dy, dx) = match params.jitter {
                0 => (0, 0),
                j => (rng.random_range(-(j as i32)..=j as i32), rng.random_range(-(j as i32)..=j as i32)),
            };
            let shifted = roll2(&x, dy, dx)?;
            let view = (r.scale_jitter > 0.0 || r.rotate_jitter > 0.0).then(|| {
                let range = (1.0 + r.scale_jitter).ln();
                let scale = if range > 0.0 { rng.random_range(-range..=range).exp() } else { 1.0 };
                let angle =
                    if r.rotate_jitter > 0.0 { rng.random_range(-r.rotate_jitter..=r.rotate_jitter) } else { 0.0 };
                (scale, angle)
            });
            let (loss, mut grad) = match view {
                None => tiler.loss_and_grad(net, &params.objective, &shifted, (dy, dx))?,
                Some((scale, angle)) => {
                    let seen = crate::ops::affine_sample(&shifted, crate::ops::affine(scale, angle))?;
                    let (loss, grad) = tiler.loss_and_grad(net, &params.objective, &seen, (dy, dx))?;
                    (loss, crate::ops::affine_sample(&grad, crate::ops::affine(1.0 / scale, -angle))?)
                }
            };
            // Detached: a pending loss must not keep its step's graph (the activations) alive.
            pending.losses.push((loss.detach(), k, s));
            let read = read_every > 0 && (s % read_every == 0 || s + 1 == params.steps);
            if read {
                pending.settle(&mut losses)?;
                let loss = *losses.last().expect("just settled");
                if params.max_loss.is_some_and(|m| loss as f64 > m) {
                    losses.pop(); // the step is not taken
                    break;
                }
                last_loss = Some(loss);
            }
            if r.grad_blur > 0.0 {
                grad = gaussian_blur(&grad, r.grad_blur)?;
            }
            if r.laplacian > 0 {
                grad = laplacian_normalize(&grad, r.laplacian)?;
            }
            if r.decorrelate {
                grad = decorrelate_colours(&grad)?;
            }
            // Normalised by the mean absolute gradient on the device: step / max(mean, 1e-7).
            let mean = grad.abs()?.mean_all()?;
            // A gradient that is not finite is a diverged dream: checked when read back (the
            // clamp below would hide a NaN on a GPU, whose max ignores it).
            pending.scales.push((mean.detach(), k, s));
            let scale = mean.clamp(1e-7f32, f32::MAX)?;
            let moved = (shifted + grad.broadcast_div(&scale)?.affine(params.step, 0.0)?)?;
            x = roll2(&moved, -dy, -dx)?;
            if r.decay > 0.0 {
                x = (x * (1.0 - r.decay))?;
            }
            if r.image_blur > 0.0 {
                x = gaussian_blur(&x, r.image_blur)?;
            }
            if r.clip {
                x = x.broadcast_maximum(&lo)?.broadcast_minimum(&hi)?;
            }
            let info = StepInfo {
                octave: k,
                octaves: shapes.len(),
                step: s,
                steps: params.steps,
                loss: if read { last_loss } else { None },
                height: oh,
                width: ow,
            };
            if !progress.step(&info) {
                return Err(Error::Cancelled);
            }
            let every = progress.pictures_every();
            let taken = losses.len() + pending.losses.len();
            if every > 0 && taken.is_multiple_of(every) {
                pending.settle(&mut losses)?; // no picture of a diverged dream
                // The octave's picture at the input's size, as the dream would end now.
                let full = resize_bilinear(&x, h, w)?;
                let full = (&full + (&base - resize_bilinear(&shrunk, h, w)?)?)?;
                let full = full.broadcast_maximum(&lo)?.broadcast_minimum(&hi)?;
                progress.picture(&norm.invert(&full)?)?;
            }
        }
    }
    // The losses and gradient scales left on the device, in one read.
    pending.settle(&mut losses)?;
    let x = x.broadcast_maximum(&lo)?.broadcast_minimum(&hi)?;
    let dreamed = norm.invert(&x)?;
    let pixels = match params.original_colors {
        true => original_colors(pixels, &dreamed)?,
        false => dreamed,
    };
    Ok(DreamOutput { pixels, losses })
}

/// Values of a dream's steps still on the device: losses, and the gradients' mean absolute
/// values (only checked for being finite), each with its (octave, step).
#[derive(Default)]
struct Pending {
    losses: Vec<(Tensor, usize, usize)>,
    scales: Vec<(Tensor, usize, usize)>,
}

impl Pending {
    /// Reads everything pending in one transfer: the losses go to `losses`; a value that is not
    /// finite is a diverged dream, named by the step it came from.
    fn settle(&mut self, losses: &mut Vec<f32>) -> Result<()> {
        if self.losses.is_empty() && self.scales.is_empty() {
            return Ok(());
        }
        let all: Vec<&(Tensor, usize, usize)> = self.losses.iter().chain(&self.scales).collect();
        let parts: Vec<Tensor> = all.iter().map(|(t, _, _)| t.reshape(1)).collect::<candle_core::Result<_>>()?;
        let values = crate::ops::host::read_vec(&Tensor::cat(&parts, 0)?)?;
        // The first bad value in step order.
        let bad = all.iter().zip(&values).filter(|(_, v)| !v.is_finite()).min_by_key(|((_, k, s), _)| (*k, *s));
        if let Some(((_, k, s), &v)) = bad {
            return Err(diverged(v, *k, *s));
        }
        losses.extend(&values[..self.losses.len()]);
        self.losses.clear();
        self.scales.clear();
        Ok(())
    }
}

/// The input's colours with the dream's brightness: each pixel of `input` moved by the
/// change in luma (BT.601) the dream made, equally in R, G and B, which leaves the colour
/// differences (`B - Y`, `R - Y`) of the input as they were. Clamped to 0..255.
fn original_colors(input: &Tensor, dreamed: &Tensor) -> Result<Tensor> {
    let luma = |t: &Tensor| -> Result<Tensor> {
        let w = Tensor::from_vec(vec![0.299f32, 0.587, 0.114], (1, 3, 1, 1), t.device())?;
        Ok(t.broadcast_mul(&w)?.sum_keepdim(1)?)
    };
    let change = (luma(dreamed)? - luma(input)?)?;
    Ok(input.broadcast_add(&change)?.clamp(0f32, 255f32)?)
}

/// Seconds a dream step of these settings takes per pixel on `device`, measured on a small
/// grey image with two untimed warm-up steps: for the estimate printed before a long render.
pub fn seconds_per_pixel_step(net: &dyn FeatureNet, params: &DreamParams, device: &candle_core::Device) -> Result<f64> {
    struct Clock(Vec<std::time::Instant>);
    impl Progress for Clock {
        fn step(&mut self, _: &StepInfo) -> bool {
            self.0.push(std::time::Instant::now());
            true
        }
        // A read each step waits for the device: the clock then times the work, not its launch.
        fn loss_every(&self) -> usize {
            1
        }
    }
    let side = 256;
    let p = DreamParams { octaves: 1, steps: 4, max_loss: None, jitter: 0, ..params.clone() };
    let grey = Tensor::rand(100f32, 150f32, (1, 3, side, side), device)?;
    let mut clock = Clock(Vec::new());
    dream(net, &grey, &p, &mut clock)?;
    let t = &clock.0;
    Ok(t[3].duration_since(t[1]).as_secs_f64() / (2 * side * side) as f64)
}

/// The square root of ImageNet's colour covariance, as Lucid estimated it (its
/// `color_correlation_svd_sqrt`): column k is the k-th colour axis of natural images scaled by
/// its spread (brightness first, then two colour-opponent axes).
const COLOUR_SQRT: [[f32; 3]; 3] = [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]];

/// A `[n, 3, h, w]` gradient as a step in Lucid's decorrelated colour space: the gradient of
/// the decorrelated image `y` (`x = M y`) is `M^T g`; each of its three components is scaled
/// to unit RMS (as Lucid's Adam steps are), and the step mapped back through `M`. Colour
/// changes then come at about a third of the brightness changes' size, as in photos.
fn decorrelate_colours(grad: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = grad.dims4()?;
    if c != 3 {
        return Ok(grad.clone());
    }
    let batch = |name: &str, v: fn() -> Vec<f32>| -> Result<Tensor> {
        let m = crate::ops::host::constant(name, &[1, 3, 3], grad.device(), v)?;
        Ok(m.broadcast_as((n, 3, 3))?.contiguous()?)
    };
    let m = || COLOUR_SQRT.iter().flatten().copied().collect();
    let mt = || (0..9).map(|i| COLOUR_SQRT[i % 3][i / 3]).collect();
    let gy = batch("colour sqrt transposed", mt)?.matmul(&grad.reshape((n, 3, h * w))?)?;
    // A colour axis the gradient hardly moves (a grey photo's) is not blown up to full size:
    // no axis is scaled by more than a hundred times the strongest one's scale.
    let rms = gy.sqr()?.mean_keepdim(2)?.sqrt()?;
    let floor = (rms.max_keepdim(1)? * 0.01)?.clamp(1e-12, f32::MAX)?;
    let rms = rms.broadcast_maximum(&floor)?;
    let gy = gy.broadcast_div(&rms)?;
    Ok(batch("colour sqrt", m)?.matmul(&gy)?.reshape((n, c, h, w))?)
}

/// The error for a loss or gradient that is no longer a number: never written out as black.
fn diverged(value: f32, octave: usize, step: usize) -> Error {
    Error::usage(format!(
        "the dream diverged ({value} at octave {}, step {}): lower the objective weights or the step size",
        octave + 1,
        step + 1
    ))
}

/// Fails early, with advice, when the smallest octave of an `h` x `w` image is too small for
/// the network to reach the objective's layers (a network without "SAME" padding shrinks its
/// input at every stage), or names a channel the layer lacks. One forward pass: run it once
/// per job and size, not per frame. Other failures (out of memory, a device error) pass
/// through as they are.
pub fn check_smallest_octave(
    net: &dyn FeatureNet,
    params: &DreamParams,
    (h, w): (usize, usize),
    device: &candle_core::Device,
) -> Result<()> {
    let objective = &params.objective;
    let (h, w) = octave_shapes(h, w, params.octaves, params.octave_scale)[0];
    let (taps, logits) = (objective.taps(), !objective.classes.is_empty());
    let Some(features) = crate::model::probe(net, &taps, logits, (h, w), device)? else {
        let e = crate::model::too_small(net, &taps, logits, (h, w), "the smallest octave", device);
        return Err(match e {
            Error::Usage(m) => {
                Error::Usage(format!("{m}; use fewer octaves, a smaller octave scale or a larger image"))
            }
            e => e,
        });
    };
    for term in &objective.layers {
        let channels = features.taps[&term.layer].dim(1)?;
        if let Some(c) = term.channel.filter(|&c| c >= channels) {
            return Err(Error::usage(format!(
                "layer {} has {channels} channels; channel {c} does not exist",
                term.layer
            )));
        }
    }
    Ok(())
}

/// The image shrunk by one octave step of `scale` (what the octave below works on).
pub fn resize_for_octave(x: &Tensor, scale: f64) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let (sh, sw) = octave_shapes(h, w, 2, scale)[0];
    Ok(resize_bilinear(x, sh, sw)?)
}

/// Rolls the image by `dy` rows and `dx` columns, wrapping around.
pub(crate) fn roll2(x: &Tensor, dy: i32, dx: i32) -> Result<Tensor> {
    let mut x = x.clone();
    if dy != 0 {
        x = x.roll(dy, 2)?;
    }
    if dx != 0 {
        x = x.roll(dx, 3)?;
    }
    Ok(x)
}

/// ImageNet class probabilities, best first: `(class index, probability)`.
pub fn classify(net: &dyn FeatureNet, pixels: &Tensor, top: usize) -> Result<Vec<(usize, f32)>> {
    if !net.has_classifier() {
        return Err(Error::usage(format!("{} has no classifier", net.name())));
    }
    let x = net.normalization().apply(pixels)?;
    let logits = net.forward(&x, &[], true)?.logits.expect("asked for logits");
    let probs = candle_nn::ops::softmax_last_dim(&logits.squeeze(0)?)?.to_vec1::<f32>()?;
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    Ok(order.into_iter().take(top).map(|i| (i, probs[i])).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octave_shapes_follow_the_reference_rule() {
        // dream_lite0_chelsea_short.json: 300x451, 3 octaves at 1.4.
        assert_eq!(octave_shapes(300, 451, 3, 1.4), vec![(153, 230), (214, 322), (300, 451)]);
    }
}
