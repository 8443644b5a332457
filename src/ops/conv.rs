//! 2-D convolution with bias and activation fused in, and an input-only backward pass.
//!
//! Candle's own conv2d backward also computes the weight gradient (which a dream never needs),
//! breaks on stride > 1 with H and W of different parity, and runs grouped convolutions as one
//! conv per channel plus a `cat`. This op fixes all three: the forward is im2col + gemm (plain
//! gemm for 1x1), depthwise is a direct per-channel loop, and the backward returns the input
//! gradient alone.

use super::gemm::{Trans, sgemm, sgemm_ld};
use super::{cpu_slice, portable, tf_same_padding};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;
use std::sync::Arc;

/// Where the zero padding goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding {
    /// Fixed padding on each side.
    Explicit { top: usize, bottom: usize, left: usize, right: usize },
    /// TensorFlow "SAME": output = ceil(input / stride), the extra row or column at the bottom
    /// or right, computed from the actual input size.
    Same,
}

impl Padding {
    /// PyTorch-style symmetric padding.
    pub fn symmetric(ph: usize, pw: usize) -> Self {
        Padding::Explicit { top: ph, bottom: ph, left: pw, right: pw }
    }
}

/// The activation fused after the bias.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Identity,
    Relu,
    Relu6,
}

impl Activation {
    pub(super) fn apply(self, v: f32) -> f32 {
        match self {
            Activation::Identity => v,
            Activation::Relu => v.max(0.0),
            Activation::Relu6 => v.clamp(0.0, 6.0),
        }
    }

    /// d(activation)/d(pre-activation), read off the activation's output. Matches PyTorch:
    /// ReLU passes where the input was > 0, ReLU6 (hardtanh) where it was strictly inside (0, 6).
    fn passes(self, out: f32) -> bool {
        match self {
            Activation::Identity => true,
            Activation::Relu => out > 0.0,
            Activation::Relu6 => out > 0.0 && out < 6.0,
        }
    }
}

/// Stride, padding, groups and activation of a convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvSpec {
    pub stride: (usize, usize),
    pub padding: Padding,
    pub groups: usize,
    pub activation: Activation,
}

impl Default for ConvSpec {
    fn default() -> Self {
        ConvSpec { stride: (1, 1), padding: Padding::symmetric(0, 0), groups: 1, activation: Activation::Identity }
    }
}

/// A convolution layer with its weights: `weight` is `[co, ci / groups, kh, kw]`, `bias` is `[co]`.
#[derive(Clone)]
pub struct Conv2d {
    inner: Arc<ConvInner>,
}

struct ConvInner {
    weight: Vec<f32>,
    bias: Vec<f32>,
    /// `[co, ci / groups, kh, kw]`
    wshape: [usize; 4],
    spec: ConvSpec,
    /// The weights flipped and transposed, `[groups][ci / groups, (co / groups) * kh * kw]`,
    /// made on the first stride-1 backward pass (see `conv_backward_into`).
    flipped: std::sync::OnceLock<Vec<f32>>,
    /// The weights and the flipped weights packed for the implicit-product kernel.
    packed: std::sync::OnceLock<super::igemm::Packed>,
    packed_flipped: std::sync::OnceLock<super::igemm::Packed>,
    /// The weights and the flipped weights transformed for Winograd's route (stride 1: the
    /// forward of 3x3 kernels, and of 5x5, 1x7 and 7x1 ones on AVX2, in the tile
    /// `winograd::Tile::for_forward` picks, the input
    /// gradients in the one `winograd::Tile::for_gradients` picks).
    winograd: std::sync::OnceLock<super::winograd::Transformed>,
    winograd_flipped: std::sync::OnceLock<super::winograd::Transformed>,
    /// A strided convolution's input gradient as one stride-1 convolution per phase (see
    /// [`GradPhase`]), made on its first backward pass.
    grad_phases: std::sync::OnceLock<Vec<GradPhase>>,
    /// The weights as tensors on the (non-CPU) devices the portable path has run on.
    on_device: crate::ops::PerDevice<Arc<DeviceWeights>>,
}

/// Weight `[co, ci/g, kh, kw]`, bias `[1, co, 1, 1]`, and the flipped, transposed weight
/// `[ci, co/g, kh, kw]` that the input gradient convolves with.
struct DeviceWeights {
    weight: Tensor,
    bias: Tensor,
    flipped: Tensor,
    /// For a depthwise conv (one input and one output channel per group): each kernel tap's
    /// weights as `[1, c, 1, 1]`, in the order `(ky, kx)`, for the weight and the flipped weight.
    taps: Option<(Vec<Tensor>, Vec<Tensor>)>,
}

/// `[c, 1, kh, kw]` as `kh * kw` tensors `[1, c, 1, 1]`, one per tap.
fn depthwise_taps(w: &Tensor) -> Result<Vec<Tensor>> {
    let (c, _, kh, kw) = w.dims4()?;
    let by_tap = w.reshape((c, kh * kw))?.t()?.contiguous()?;
    (0..kh * kw).map(|k| by_tap.narrow(0, k, 1)?.reshape((1, c, 1, 1))).collect()
}

impl ConvInner {
    fn on(&self, device: &candle_core::Device) -> Result<Arc<DeviceWeights>> {
        self.on_device.get_or_make(device, || {
            let [co, cig, kh, kw] = self.wshape;
            let ci = cig * self.spec.groups;
            let weight = Tensor::from_slice(&self.weight, (co, cig, kh, kw), device)?;
            let flipped = Tensor::from_slice(self.flipped(), (ci, co / self.spec.groups, kh, kw), device)?;
            let taps = if cig == 1 && co == self.spec.groups {
                Some((depthwise_taps(&weight)?, depthwise_taps(&flipped)?))
            } else {
                None
            };
            Ok(Arc::new(DeviceWeights {
                weight,
                bias: Tensor::from_slice(&self.bias, (1, co, 1, 1), device)?,
                flipped,
                taps,
            }))
        })
    }

    /// `flipped[g][c][(o * kh + ky) * kw + kx] = weight[g * cog + o][c][kh - 1 - ky][kw - 1 - kx]`.
    fn flipped(&self) -> &[f32] {
        self.flipped.get_or_init(|| {
            let [co, cig, kh, kw] = self.wshape;
            let groups = self.spec.groups;
            let cog = co / groups;
            let mut f = vec![0.0f32; self.weight.len()];
            for g in 0..groups {
                for o in 0..cog {
                    for c in 0..cig {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let src = (((g * cog + o) * cig + c) * kh + kh - 1 - ky) * kw + kw - 1 - kx;
                                let dst = g * cig * cog * kh * kw + c * cog * kh * kw + (o * kh + ky) * kw + kx;
                                f[dst] = self.weight[src];
                            }
                        }
                    }
                }
            }
            f
        })
    }
}

impl Conv2d {
    pub fn new(weight: &Tensor, bias: Option<&Tensor>, spec: ConvSpec) -> Result<Self> {
        let (co, cig, kh, kw) = weight.dims4()?;
        if spec.groups == 0 || co % spec.groups != 0 {
            bail!("conv: {co} output channels do not split into {} groups", spec.groups);
        }
        let weight = weight.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
        let bias = match bias {
            Some(b) => b.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?,
            None => vec![0.0; co],
        };
        if bias.len() != co {
            bail!("conv: bias has {} values for {co} output channels", bias.len());
        }
        Ok(Conv2d {
            inner: Arc::new(ConvInner {
                weight,
                bias,
                wshape: [co, cig, kh, kw],
                spec,
                flipped: Default::default(),
                packed: Default::default(),
                packed_flipped: Default::default(),
                winograd: Default::default(),
                winograd_flipped: Default::default(),
                grad_phases: Default::default(),
                on_device: Default::default(),
            }),
        })
    }

    /// One convolution computing `convs` at once, their outputs stacked along the channels in
    /// order: they must share input channels, kernel size and spec (sibling 1x1 convs of an
    /// Inception block, run as one product).
    pub fn stack(convs: &[&Conv2d]) -> Result<Self> {
        let Some(first) = convs.first() else { bail!("conv: nothing to stack") };
        let [_, cig, kh, kw] = first.inner.wshape;
        let spec = first.inner.spec;
        let (mut weight, mut bias) = (Vec::new(), Vec::new());
        for c in convs {
            let [_, ci2, kh2, kw2] = c.inner.wshape;
            if (ci2, kh2, kw2) != (cig, kh, kw) || c.inner.spec != spec || spec.groups != 1 {
                bail!("conv: only ungrouped convolutions of one shape and spec stack");
            }
            weight.extend_from_slice(&c.inner.weight);
            bias.extend_from_slice(&c.inner.bias);
        }
        let co = bias.len();
        let inner = ConvInner {
            weight,
            bias,
            wshape: [co, cig, kh, kw],
            spec,
            flipped: Default::default(),
            packed: Default::default(),
            packed_flipped: Default::default(),
            winograd: Default::default(),
            winograd_flipped: Default::default(),
            grad_phases: Default::default(),
            on_device: Default::default(),
        };
        Ok(Conv2d { inner: Arc::new(inner) })
    }

    pub fn spec(&self) -> ConvSpec {
        self.inner.spec
    }

    pub fn out_channels(&self) -> usize {
        self.inner.wshape[0]
    }

    /// The input gradient for output gradient `gy`, given the forward output `y` (the activation's
    /// mask is read off it) and the input's shape: what the backward pass of `forward` computes.
    pub fn input_grad(&self, gy: &Tensor, y: &Tensor, in_dims: &[usize]) -> Result<Tensor> {
        if portable::wanted(gy) {
            return self.input_grad_portable(gy, y, in_dims);
        }
        gy.contiguous()?
            .apply_op2_no_bwd(&y.contiguous()?, &ConvInputGrad { inner: self.inner.clone(), in_dims: in_dims.to_vec() })
    }

    /// Runs the convolution on an `[n, ci, h, w]` tensor; differentiable with respect to `x`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if portable::wanted(x) {
            return self.forward_portable(x);
        }
        x.contiguous()?.apply_op1(ConvOp(self.inner.clone()))
    }

    /// The forward from candle's ops (any device): pad, conv2d, bias, activation.
    fn forward_portable(&self, x: &Tensor) -> Result<Tensor> {
        let g = Geometry::new(&self.inner, x.dims())?;
        if g.sh != g.sw {
            bail!("conv: the portable path needs equal strides, got {}x{}", g.sh, g.sw);
        }
        let dw = self.inner.on(x.device())?;
        super::flops::add(g.flops());
        let (t, b, l, r) = portable::exact_padding((g.h, g.w), (g.oh, g.ow), (g.kh, g.kw), (g.sh, g.sw), (g.pt, g.pl));
        let act = self.inner.spec.activation;
        if super::fused::enabled() {
            return match &dw.taps {
                Some(_) => super::fused::depthwise_fwd(
                    x,
                    &dw.weight.reshape((g.co, g.kh * g.kw))?,
                    &dw.bias,
                    g.depthwise(t, l, act),
                ),
                None => {
                    let xp = portable::pad2(x, t, b, l, r, 0.0)?;
                    super::fused::bias_act(&xp.conv2d(&dw.weight, 0, g.sh, 1, g.groups)?, &dw.bias, act)
                }
            };
        }
        let xp = portable::pad2(x, t, b, l, r, 0.0)?;
        let y = match &dw.taps {
            Some((taps, _)) => portable::depthwise(&xp, taps, (g.kh, g.kw), g.sh, (g.oh, g.ow))?,
            None => xp.conv2d(&dw.weight, 0, g.sh, 1, g.groups)?,
        };
        let y = y.broadcast_add(&dw.bias)?;
        match self.inner.spec.activation {
            Activation::Identity => Ok(y),
            Activation::Relu => y.relu(),
            Activation::Relu6 => y.clamp(0f32, 6f32),
        }
    }

    /// The input gradient from candle's ops (any device): mask by the activation, spread onto
    /// the input's grid (stride), and convolve with the flipped, transposed kernel.
    fn input_grad_portable(&self, gy: &Tensor, y: &Tensor, in_dims: &[usize]) -> Result<Tensor> {
        let g = Geometry::new(&self.inner, in_dims)?;
        let act = self.inner.spec.activation;
        if super::fused::enabled()
            && let Some(_) = &self.inner.on(gy.device())?.taps
        {
            super::flops::add(g.flops());
            let (t, _, l, _) =
                portable::exact_padding((g.h, g.w), (g.oh, g.ow), (g.kh, g.kw), (g.sh, g.sw), (g.pt, g.pl));
            let w = self.inner.on(gy.device())?.weight.reshape((g.co, g.kh * g.kw))?;
            return super::fused::depthwise_bwd(gy, y, &w, g.depthwise(t, l, act));
        }
        let gpre = match act {
            _ if super::fused::enabled() => super::fused::act_mask(gy, y, act)?,
            Activation::Identity => gy.clone(),
            Activation::Relu => (gy * portable::as_f32(&y.gt(0f32)?)?)?,
            Activation::Relu6 => (gy * (portable::as_f32(&y.gt(0f32)?)? * portable::as_f32(&y.lt(6f32)?)?)?)?,
        };
        let dw = self.inner.on(gy.device())?;
        super::flops::add(g.flops());
        let spread = portable::dilate(&gpre, g.sh, g.sw)?;
        // gx[y] = sum_k spread[y + pt - k] w[k]: a correlation with the flipped kernel, the
        // spread gradient padded by k - 1 - pt before and to an output of the input's length.
        let (top, left) = (g.kh as isize - 1 - g.pt as isize, g.kw as isize - 1 - g.pl as isize);
        let bottom = (g.h + g.kh - 1) as isize - top - spread.dim(2)? as isize;
        let right = (g.w + g.kw - 1) as isize - left - spread.dim(3)? as isize;
        if top < 0 || left < 0 {
            bail!("conv: padding wider than the kernel");
        }
        let padded = portable::pad2(&spread, top, bottom, left, right, 0.0)?;
        match &dw.taps {
            Some((_, flipped)) => portable::depthwise(&padded, flipped, (g.kh, g.kw), 1, (g.h, g.w)),
            None => padded.conv2d(&dw.flipped, 0, 1, 1, g.groups),
        }
    }
}

/// Sizes of one convolution call.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    n: usize,
    ci: usize,
    h: usize,
    w: usize,
    co: usize,
    cig: usize,
    cog: usize,
    groups: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    pt: usize,
    pl: usize,
    oh: usize,
    ow: usize,
}

impl Geometry {
    /// As a fused depthwise op's geometry, the input offset by `t` rows and `l` columns.
    fn depthwise(&self, t: isize, l: isize, act: Activation) -> super::fused::Depthwise {
        super::fused::Depthwise {
            n: self.n,
            c: self.co,
            h: self.h,
            w: self.w,
            oh: self.oh,
            ow: self.ow,
            kh: self.kh,
            kw: self.kw,
            s: self.sh,
            pt: t,
            pl: l,
            act,
        }
    }

    fn new(inner: &ConvInner, dims: &[usize]) -> Result<Self> {
        let [co, cig, kh, kw] = inner.wshape;
        let spec = inner.spec;
        let &[n, ci, h, w] = dims else { bail!("conv: input must be [n, c, h, w], got {dims:?}") };
        if ci != cig * spec.groups {
            bail!("conv: input has {ci} channels, weights expect {}", cig * spec.groups);
        }
        let (sh, sw) = spec.stride;
        let (pt, pb, pl, pr) = match spec.padding {
            Padding::Explicit { top, bottom, left, right } => (top, bottom, left, right),
            Padding::Same => {
                let (t, b) = tf_same_padding(h, kh, sh);
                let (l, r) = tf_same_padding(w, kw, sw);
                (t, b, l, r)
            }
        };
        if h + pt + pb < kh || w + pl + pr < kw {
            return Err(super::too_small(format_args!("conv: input {h}x{w} is smaller than the {kh}x{kw} kernel")));
        }
        let oh = (h + pt + pb - kh) / sh + 1;
        let ow = (w + pl + pr - kw) / sw + 1;
        let groups = spec.groups;
        Ok(Geometry { n, ci, h, w, co, cig, cog: co / groups, groups, kh, kw, sh, sw, pt, pl, oh, ow })
    }

    /// One image `x` of this (ungrouped) convolution as an implicit product, its input masked
    /// by `mask` (at stride 1).
    fn implicit_job<'a>(&self, x: &'a [f32], mask: Option<(&'a [f32], Activation)>) -> super::igemm::Conv<'a> {
        super::igemm::Conv {
            x,
            mask,
            c: self.ci,
            h: self.h,
            w: self.w,
            kh: self.kh,
            kw: self.kw,
            pt: self.pt,
            pl: self.pl,
            sh: self.sh,
            sw: self.sw,
            oh: self.oh,
            ow: self.ow,
        }
    }

    fn is_pointwise(&self) -> bool {
        self.kh == 1
            && self.kw == 1
            && self.sh == 1
            && self.sw == 1
            && self.pt == 0
            && self.pl == 0
            && self.oh == self.h
            && self.ow == self.w
    }

    /// Floating-point operations of the forward pass (the input gradient costs the same).
    fn flops(&self) -> u64 {
        2 * (self.n * self.co * self.oh * self.ow * self.cig * self.kh * self.kw) as u64
    }

    /// At stride 1, the geometry of the input gradient computed as a convolution of the output
    /// gradient (`co` channels, `oh x ow`) with the flipped kernel: padding `k - 1 - pad` before,
    /// output `h x w`. `None` at other strides (or a padding wider than the kernel).
    fn transposed(&self) -> Option<Geometry> {
        if self.sh != 1 || self.sw != 1 || self.pt >= self.kh || self.pl >= self.kw {
            return None;
        }
        Some(Geometry {
            n: self.n,
            ci: self.co,
            h: self.oh,
            w: self.ow,
            co: self.ci,
            cig: self.cog,
            cog: self.cig,
            groups: self.groups,
            kh: self.kh,
            kw: self.kw,
            sh: 1,
            sw: 1,
            pt: self.kh - 1 - self.pt,
            pl: self.kw - 1 - self.pl,
            oh: self.h,
            ow: self.w,
        })
    }

    /// Floats of the im2col buffer one band of output rows needs (see [`bands`]).
    fn col_len(&self) -> usize {
        let k = self.cig * self.kh * self.kw;
        k * band_rows(self.oh, self.ow, k) * self.ow
    }

    fn is_depthwise(&self) -> bool {
        self.cig == 1 && self.groups > 1
    }

    /// Valid kernel offsets `k` for output position `o`: those with `0 <= o*s - pad + k < len`.
    fn taps(o: usize, s: usize, pad: usize, k: usize, len: usize) -> (usize, usize, isize) {
        let start = (o * s) as isize - pad as isize;
        let k0 = (-start).max(0) as usize;
        let k1 = ((len as isize - start).min(k as isize)).max(0) as usize;
        (k0, k1.max(k0), start)
    }
}

/// `col[(c*kh + ky)*kw + kx, (oy - rows.start)*ow + ox] = x[c, oy*sh - pt + ky, ox*sw - pl + kx]`
/// (0 outside) for the output rows `oy` in `rows`. Each output row is one contiguous (stride 1)
/// or strided copy between zeroed margins. With `mask = (y, act)` only the entries whose `y`
/// the activation passes get through (zero elsewhere): the gradient at a pre-activation,
/// gathered without first writing it out.
fn im2col(
    x: &[f32],
    mask: Option<(&[f32], Activation)>,
    g: &Geometry,
    channels: usize,
    rows: std::ops::Range<usize>,
    col: &mut [f32],
) {
    let ohw = rows.len() * g.ow;
    let cols: Vec<_> = (0..g.kw).map(|kx| valid_cols(g.ow, g.sw, kx, g.pl, g.w)).collect();
    col[..channels * g.kh * g.kw * ohw].par_chunks_mut(ohw).enumerate().for_each(|(row, out)| {
        let c = row / (g.kh * g.kw);
        let ky = (row / g.kw) % g.kh;
        let kx = row % g.kw;
        let r = cols[kx].clone();
        let plane = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        for oy in rows.clone() {
            let iy = (oy * g.sh + ky) as isize - g.pt as isize;
            let dst = &mut out[(oy - rows.start) * g.ow..][..g.ow];
            if iy < 0 || iy >= g.h as isize || r.is_empty() {
                dst.fill(0.0);
                continue;
            }
            let src = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
            dst[..r.start].fill(0.0);
            dst[r.end..].fill(0.0);
            let first = r.start * g.sw + kx - g.pl;
            match (mask, g.sw) {
                (None, 1) => dst[r.clone()].copy_from_slice(&src[first..first + r.len()]),
                (None, _) => gather(&mut dst[r.clone()], &src[first..], g.sw),
                (Some((y, act)), 1) => {
                    let yrow = &y[c * g.h * g.w + iy as usize * g.w..][..g.w];
                    let (src, yrow) = (&src[first..first + r.len()], &yrow[first..first + r.len()]);
                    mask_into(&mut dst[r.clone()], src, yrow, act);
                }
                (Some((y, act)), _) => {
                    let yrow = &y[c * g.h * g.w + iy as usize * g.w..][..g.w];
                    let pairs = src[first..].iter().zip(&yrow[first..]).step_by(g.sw);
                    for (d, (s, o)) in dst[r.clone()].iter_mut().zip(pairs) {
                        *d = if act.passes(*o) { *s } else { 0.0 };
                    }
                }
            }
        }
    });
}

/// Output rows per band: the gathered columns of a band (`k` floats each) fill about 8 MB,
/// which stays in cache between im2col and the product, but at least 256 columns wide so
/// the product still splits across threads.
fn band_rows(oh: usize, ow: usize, k: usize) -> usize {
    const TARGET: usize = 2 << 20;
    let ow = ow.max(1);
    (TARGET / (k * ow).max(1)).max(256usize.div_ceil(ow)).clamp(1, oh.max(1))
}

/// The output rows `0..oh` cut into bands of at most [`band_rows`], of equal heights: a short
/// last band (4 rows after 26 of InceptionV3's 30-row stride-2 layer at 512x512) was a
/// product too narrow to split across threads, and ran on one.
fn bands(oh: usize, ow: usize, k: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let step = oh.div_ceil(oh.div_ceil(band_rows(oh, ow, k)).max(1)).max(1);
    (0..oh).step_by(step).map(move |r| r..(r + step).min(oh))
}

/// The adjoint of `im2col`: adds each column entry back onto the pixel it was read from.
fn col2im(col: &[f32], g: &Geometry, channels: usize, x: &mut [f32]) {
    let ohw = g.oh * g.ow;
    let kk = g.kh * g.kw;
    let cols: Vec<_> = (0..g.kw).map(|kx| valid_cols(g.ow, g.sw, kx, g.pl, g.w)).collect();
    x[..channels * g.h * g.w].par_chunks_mut(g.h * g.w).enumerate().for_each(|(c, plane)| {
        plane.fill(0.0);
        for ky in 0..g.kh {
            for (kx, r) in cols.iter().enumerate() {
                if r.is_empty() {
                    continue; // this tap column reads only padding
                }
                let src = &col[(c * kk + ky * g.kw + kx) * ohw..][..ohw];
                let first = r.start * g.sw + kx - g.pl;
                for oy in 0..g.oh {
                    let iy = (oy * g.sh + ky) as isize - g.pt as isize;
                    if iy < 0 || iy >= g.h as isize || r.is_empty() {
                        continue;
                    }
                    let row = &mut plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                    let from = &src[oy * g.ow..(oy + 1) * g.ow][r.clone()];
                    if g.sw == 1 {
                        for (d, s) in row[first..first + r.len()].iter_mut().zip(from) {
                            *d += s;
                        }
                    } else {
                        for (d, s) in row[first..].iter_mut().step_by(g.sw).zip(from) {
                            *d += s;
                        }
                    }
                }
            }
        }
    });
}

/// `dst = src` where the activation passes its output `y`, else 0 (equal lengths; written
/// branch-free per activation so it vectorises).
#[inline(always)]
pub(super) fn mask_into(dst: &mut [f32], src: &[f32], y: &[f32], act: Activation) {
    // Bit masks rather than branches: the loops vectorise, and a masked entry is exactly 0.
    let keep = |pass: bool| if pass { u32::MAX } else { 0 };
    let pairs = dst.iter_mut().zip(src.iter().zip(y));
    match act {
        Activation::Identity => dst.copy_from_slice(&src[..dst.len()]),
        Activation::Relu => pairs.for_each(|(d, (s, o))| *d = f32::from_bits(s.to_bits() & keep(*o > 0.0))),
        Activation::Relu6 => {
            pairs.for_each(|(d, (s, o))| *d = f32::from_bits(s.to_bits() & keep(*o > 0.0 && *o < 6.0)))
        }
    }
}

/// Output columns `ox` whose input column `ox*s + k - pad` lies inside `0..len`.
fn valid_cols(out_len: usize, s: usize, k: usize, pad: usize, len: usize) -> std::ops::Range<usize> {
    let lo = pad.saturating_sub(k).div_ceil(s).min(out_len);
    let hi = if len + pad > k { ((len + pad - k - 1) / s + 1).min(out_len) } else { 0 };
    lo..hi.max(lo)
}

/// `f(args)` for an `#[inline(always)]` plane function `f` of the arguments the depthwise
/// planes take, run from a copy compiled for AVX-512 where the CPU has it (else AVX2). (`ops::wide` with a
/// closure left the closure out of line, compiled for the baseline.)
macro_rules! wide_plane {
    ($f:ident($i:expr, $out:expr, $src:expr, $wt:expr, $g:expr, $cols:expr, $kk:expr)) => {{
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f")]
        fn avx512(
            i: usize,
            out: &mut [f32],
            src: &[f32],
            wt: &[f32],
            g: &Geometry,
            cols: &[std::ops::Range<usize>],
            kk: usize,
        ) {
            $f(i, out, src, wt, g, cols, kk)
        }
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        fn avx2(
            i: usize,
            out: &mut [f32],
            src: &[f32],
            wt: &[f32],
            g: &Geometry,
            cols: &[std::ops::Range<usize>],
            kk: usize,
        ) {
            $f(i, out, src, wt, g, cols, kk)
        }
        #[cfg(target_arch = "x86_64")]
        match super::igemm::isa() {
            // SAFETY: the CPU has AVX-512F (checked at run time).
            Some(super::igemm::Isa::Avx512) => unsafe { avx512($i, $out, $src, $wt, $g, $cols, $kk) },
            // SAFETY: the CPU has AVX2 and FMA (checked at run time).
            Some(super::igemm::Isa::Avx2) => unsafe { avx2($i, $out, $src, $wt, $g, $cols, $kk) },
            None => $f($i, $out, $src, $wt, $g, $cols, $kk),
        }
        #[cfg(not(target_arch = "x86_64"))]
        $f($i, $out, $src, $wt, $g, $cols, $kk)
    }};
}

/// Depthwise forward for one image into `y`, which arrives zeroed (`conv_forward`): output
/// channel `o` reads input channel `o / cog`. The innermost loop runs along a row, which
/// vectorises (at stride s, along rows regrouped by column modulo s).
fn depthwise_forward(x: &[f32], wt: &[f32], g: &Geometry, y: &mut [f32]) {
    let kk = g.kh * g.kw;
    let cols: Vec<_> = (0..g.kw).map(|kx| valid_cols(g.ow, g.sw, kx, g.pl, g.w)).collect();
    y.par_chunks_mut(g.oh * g.ow)
        .enumerate()
        .for_each(|(o, out)| wide_plane!(depthwise_forward_plane(o, out, x, wt, g, &cols, kk)));
}

thread_local! {
    /// One channel's padded input for [`depthwise_forward_wide`], kept between calls.
    static DW_PADDED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Depthwise forward for one image on a CPU with AVX-512F, each output written once with its
/// bias and activation (so the output is never zeroed, and no pass over it follows).
///
/// Each channel is first copied into a padded plane whose rows are split by column modulo the
/// stride: tap `(ky, kx)` of output `(oy, ox)` then reads phase `kx % s` of padded row
/// `oy * s + ky` at `ox + kx / s`, a contiguous run along `ox`, with no edge cases. A vector of
/// 16 outputs sums all its taps in a register and is stored once. The row-by-row loop of
/// [`depthwise_forward_plane`] read and wrote the output row once per tap, and its rows (29 to
/// 113 pixels on Lite0) ran mostly in its scalar and 8-wide tails: 8.8 GFLOP/s, a quarter of a
/// Lite0 step.
///
/// With `mask` (stride 1 only), the input is first multiplied by the activation mask read off
/// it: the input gradient of a stride-1 depthwise convolution is such a convolution of the
/// masked output gradient with the flipped kernel (`conv_backward`).
fn depthwise_forward_wide(
    x: &[f32],
    mask: Option<(&[f32], Activation)>,
    wt: &[f32],
    bias: Option<&[f32]>,
    act: Activation,
    g: &Geometry,
) -> Vec<f32> {
    assert!(mask.is_none() || g.sw == 1, "depthwise: a mask only at stride 1");
    let mut y = Vec::with_capacity(g.co * g.oh * g.ow);
    let (s, sy) = (g.sw, g.sh);
    let hp = (g.oh - 1) * sy + g.kh;
    // Phase length: outputs plus the taps' reach, plus 16 for the last vector's full load.
    let phase = g.ow + (g.kw - 1) / s + 16;
    let row = s * phase;
    y.spare_capacity_mut()[..g.co * g.oh * g.ow].par_chunks_mut(g.oh * g.ow).enumerate().for_each(|(o, out)| {
        let at = (o / g.cog) * g.h * g.w;
        let plane = &x[at..][..g.h * g.w];
        let mask = mask.map(|(y, a)| (&y[at..][..g.h * g.w], a));
        with_buffer(&DW_PADDED, hp * row, |buf| {
            pad_phases(plane, mask, g, buf, phase);
            let k = &wt[o * g.kh * g.kw..][..g.kh * g.kw];
            // SAFETY: the caller checked AVX-512F; `buf` holds `hp` rows of `s` phases of
            // `phase` floats, which every load below stays inside (see `phase`).
            unsafe { depthwise_rows(buf, k, bias.map_or(0.0, |b| b[o]), act, g, phase, out) };
        });
    });
    // SAFETY: `depthwise_rows` wrote every output of every channel (each row's vectors cover
    // its `ow` outputs).
    unsafe { y.set_len(g.co * g.oh * g.ow) };
    y
}

/// One input plane into `buf`: `hp` padded rows, each as `s` phases of `phase` floats, padded
/// column `c = j * s + p` (phase p, index j) holding input column `c - pl` of input row
/// `r - pt`, zero elsewhere.
fn pad_phases(plane: &[f32], mask: Option<(&[f32], Activation)>, g: &Geometry, buf: &mut [f32], phase: usize) {
    let s = g.sw;
    for (r, dst) in buf.chunks_exact_mut(s * phase).enumerate() {
        let iy = r as isize - g.pt as isize;
        if iy < 0 || iy >= g.h as isize {
            dst.fill(0.0);
            continue;
        }
        let src = &plane[iy as usize * g.w..][..g.w];
        let run = |p: usize| {
            let r = phase_span(phase, g.w, s, p, g.pl);
            (r.start, r.end)
        };
        if s > 2 {
            for (p, ph) in dst.chunks_exact_mut(phase).enumerate() {
                phase_row(ph, src, s, p, g.pl);
            }
            continue;
        }
        for p in 0..s {
            let (j0, j1) = run(p);
            let ph = &mut dst[p * phase..][..phase];
            ph[..j0].fill(0.0);
            ph[j1..].fill(0.0);
        }
        if s == 1 {
            let (j0, j1) = run(0);
            let first = j0 - g.pl.min(j0);
            match mask {
                None => dst[j0..j1].copy_from_slice(&src[first..][..j1 - j0]),
                Some((y, a)) => mask_into(&mut dst[j0..j1], &src[first..], &y[iy as usize * g.w + first..], a),
            }
            continue;
        }
        {
            // s == 2, in pairs, which the compiler turns into vector shuffles: the phase holding input
            // column 0 (`a`) takes the even input columns, the other (`b`) the odd ones.
            let pa = g.pl % 2;
            let ((ja, ja1), (jb, jb1)) = (run(pa), run(1 - pa));
            let (lo, hi) = dst.split_at_mut(phase);
            let (a, b) = if pa == 0 { (lo, hi) } else { (hi, lo) };
            let (a, b) = (&mut a[ja..ja1], &mut b[jb..jb1]);
            let pairs = a.len().min(b.len());
            for ((x, y), pair) in a.iter_mut().zip(b.iter_mut()).zip(src.chunks_exact(2)).take(pairs) {
                *x = pair[0];
                *y = pair[1];
            }
            for (x, v) in a[pairs..].iter_mut().zip(src[2 * pairs..].iter().step_by(2)) {
                *x = *v;
            }
            for (y, v) in b[pairs..].iter_mut().zip(src.get(2 * pairs + 1..).unwrap_or(&[]).iter().step_by(2)) {
                *y = *v;
            }
        }
    }
}

/// Where phase `p` of an input row `w` wide, padded by `pl` zeros before and read at stride `s`
/// (entry `j` is input column `j * s + p - pl`), holds input: `j` from `ceil((pl - p) / s)`
/// while the column is inside the row, within the phase's `len` entries.
pub(super) fn phase_span(len: usize, w: usize, s: usize, p: usize, pl: usize) -> std::ops::Range<usize> {
    let j0 = pl.saturating_sub(p).div_ceil(s).min(len);
    let j1 = (w + pl).saturating_sub(p).div_ceil(s).clamp(j0, len);
    j0..j1
}

/// Phase `p` of the input row `src` (see [`phase_span`]) into `dst`, zero outside its span.
pub(super) fn phase_row(dst: &mut [f32], src: &[f32], s: usize, p: usize, pl: usize) {
    let span = phase_span(dst.len(), src.len(), s, p, pl);
    dst[..span.start].fill(0.0);
    dst[span.end..].fill(0.0);
    // The first column is past the row when the span is empty (a row narrower than the stride).
    let from = src.get(span.start * s + p - pl.min(span.start * s + p)..).unwrap_or(&[]);
    gather(&mut dst[span], from, s);
}

/// `dst[i] = src[s i]` while both last: at strides 2 and 4 in vector shuffles.
fn gather(dst: &mut [f32], src: &[f32], s: usize) {
    #[cfg(target_arch = "x86_64")]
    if s == 2 && super::igemm::avx512() {
        // SAFETY: the CPU has AVX-512F.
        unsafe { every_other(dst, src) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if matches!(s, 2 | 4) && super::igemm::available() {
        // SAFETY: the CPU has AVX2 (AVX-512F or AVX2 with FMA, `available`).
        unsafe { strided_avx2(dst, src, s) };
        return;
    }
    for (v, x) in dst.iter_mut().zip(src.iter().step_by(s)) {
        *v = *x;
    }
}

/// `dst[i] = src[s i]` (`s` = 2 or 4) while both last, 8 at a time: on a CPU without AVX-512,
/// the phase planes of strided convolutions and pools (s = 2) and any stride-4 ones. (Winograd's
/// planes, 4% of an InceptionV3 dream on AVX2 element by element, took this too until they
/// split all phases of a row in one pass, `winograd::split_phases`.)
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn strided_avx2(dst: &mut [f32], src: &[f32], s: usize) {
    use std::arch::x86_64::*;
    assert!(matches!(s, 2 | 4));
    let n = dst.len().min(src.len().div_ceil(s));
    let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr());
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let mut i = 0;
    while i + 8 <= n && s * i + 8 * s <= src.len() {
        // SAFETY: src[s i..s i + 8 s] and dst[i..i + 8] are inside the slices (the loop's bounds).
        unsafe {
            let at = |k: usize| _mm256_loadu_ps(sp.add(s * i + 8 * k));
            let v = if s == 2 {
                // a0 a2 b0 b2 | a4 a6 b4 b6, then the 64-bit pairs in order.
                let even = _mm256_shuffle_ps::<0x88>(at(0), at(1));
                _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(even)))
            } else {
                // Entry 0 of each half of four loads: s0 s8 s16 s24 | s4 s12 s20 s28, then in order.
                let ab = _mm256_shuffle_ps::<0x00>(at(0), at(1));
                let cd = _mm256_shuffle_ps::<0x00>(at(2), at(3));
                _mm256_permutevar8x32_ps(_mm256_shuffle_ps::<0x88>(ab, cd), order)
            };
            _mm256_storeu_ps(dp.add(i), v);
        }
        i += 8;
    }
    for j in i..n {
        dst[j] = src[s * j];
    }
}

/// `dst[i] = src[2 i]` while both last, 16 at a time (the element-by-element copy was 3% of an
/// InceptionV3 step: the strided convolutions' phase planes, and Winograd's parity planes until
/// `winograd::split_phases` took those, at 8 lanes).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn every_other(dst: &mut [f32], src: &[f32]) {
    use std::arch::x86_64::*;
    let n = dst.len().min(src.len().div_ceil(2));
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let mut i = 0;
    while i + 16 <= n && 2 * i + 32 <= src.len() {
        // SAFETY: src[2i..2i + 32] and dst[i..i + 16] are inside the slices (the loop's bounds).
        unsafe {
            let a = _mm512_loadu_ps(src.as_ptr().add(2 * i));
            let b = _mm512_loadu_ps(src.as_ptr().add(2 * i + 16));
            _mm512_storeu_ps(dst.as_mut_ptr().add(i), _mm512_permutex2var_ps(a, even, b));
        }
        i += 16;
    }
    for j in i..n {
        dst[j] = src[2 * j];
    }
}

/// The output rows of one channel of [`depthwise_forward_wide`] from its padded plane `buf`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn depthwise_rows(
    buf: &[f32],
    k: &[f32],
    bias: f32,
    act: Activation,
    g: &Geometry,
    phase: usize,
    out: &mut [std::mem::MaybeUninit<f32>],
) {
    use std::arch::x86_64::*;
    let (s, sy, kw) = (g.sw, g.sh, g.kw);
    let row = s * phase;
    assert!(buf.len() >= ((g.oh - 1) * sy + g.kh) * row && out.len() >= g.oh * g.ow && k.len() == g.kh * kw);
    let b = _mm512_set1_ps(bias);
    // Where each tap reads, from output (oy, ox)'s row `oy * sy` and column `ox`.
    let taps: Vec<(usize, f32)> =
        (0..g.kh * kw).map(|t| ((t / kw) * row + (t % kw % s) * phase + t % kw / s, k[t])).collect();
    for oy in 0..g.oh {
        let r = buf.as_ptr().wrapping_add(oy * sy * row);
        for ox in (0..g.ow).step_by(16) {
            let n = (g.ow - ox).min(16);
            let mut acc = _mm512_setzero_ps();
            for &(at, w) in &taps {
                // SAFETY: row oy * sy + ky < hp, and index ox + kx / s + 15 < ow + (kw - 1) / s
                // + 16 = phase (asserted sizes above).
                let v = unsafe { _mm512_loadu_ps(r.add(at + ox)) };
                // A product and a sum, not a fused multiply-add: the same roundings in the same
                // order as the row-by-row route, so activations sitting on a ReLU6 kink break
                // the same way (with FMA, one pixel of the Lite0 reference did not).
                acc = _mm512_add_ps(acc, _mm512_mul_ps(_mm512_set1_ps(w), v));
            }
            let v = super::igemm::activate(_mm512_add_ps(acc, b), act);
            // SAFETY: lanes 0..n are outputs ox..ox + n of row oy.
            unsafe {
                _mm512_mask_storeu_ps(
                    out.as_mut_ptr().add(oy * g.ow + ox) as *mut f32,
                    ((1u32 << n) - 1) as __mmask16,
                    v,
                )
            };
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn depthwise_rows(
    _: &[f32],
    _: &[f32],
    _: f32,
    _: Activation,
    _: &Geometry,
    _: usize,
    _: &mut [std::mem::MaybeUninit<f32>],
) {
    unreachable!("igemm::available is false off x86_64")
}

/// Depthwise input gradient for one image: each input channel gathers from its own outputs,
/// into `gx`, which arrives zeroed (`conv_backward`).
fn depthwise_backward(gy: &[f32], wt: &[f32], g: &Geometry, gx: &mut [f32]) {
    let kk = g.kh * g.kw;
    let cols: Vec<_> = (0..g.kw).map(|kx| valid_cols(g.ow, g.sw, kx, g.pl, g.w)).collect();
    gx.par_chunks_mut(g.h * g.w)
        .enumerate()
        .for_each(|(c, out)| wide_plane!(depthwise_backward_plane(c, out, gy, wt, g, &cols, kk)));
}

/// One output channel of [`depthwise_forward`] (inlined into `wide_plane!`'s AVX-512 copy).
#[inline(always)]
fn depthwise_forward_plane(
    o: usize,
    out: &mut [f32],
    x: &[f32],
    wt: &[f32],
    g: &Geometry,
    cols: &[std::ops::Range<usize>],
    kk: usize,
) {
    let plane = &x[(o / g.cog) * g.h * g.w..][..g.h * g.w];
    // At stride s, the input's rows regrouped by column modulo s: each tap then reads
    // a contiguous run (a strided loop does not vectorise).
    let split;
    let plane = if g.sw > 1 {
        split = split_phases(plane, g.w, g.sw);
        &split[..]
    } else {
        plane
    };
    let k = &wt[o * kk..(o + 1) * kk];
    for oy in 0..g.oh {
        let (ky0, ky1, iy0) = Geometry::taps(oy, g.sh, g.pt, g.kh, g.h);
        let orow = &mut out[oy * g.ow..(oy + 1) * g.ow];
        for ky in ky0..ky1 {
            let irow = &plane[(iy0 + ky as isize) as usize * g.w..][..g.w];
            for (kx, r) in cols.iter().enumerate() {
                if r.is_empty() {
                    continue; // this tap column reads only padding (a row narrower than the kernel)
                }
                let wv = k[ky * g.kw + kx];
                let first = phase_index(r.start * g.sw + kx - g.pl, g.w, g.sw);
                for (o, i) in orow[r.clone()].iter_mut().zip(&irow[first..]) {
                    *o += wv * i;
                }
            }
        }
    }
}

/// One input channel of [`depthwise_backward`] (inlined into `wide_plane!`'s AVX-512 copy).
#[inline(always)]
fn depthwise_backward_plane(
    c: usize,
    out: &mut [f32],
    gy: &[f32],
    wt: &[f32],
    g: &Geometry,
    cols: &[std::ops::Range<usize>],
    kk: usize,
) {
    // At stride s the sums gather in rows regrouped by column modulo s (contiguous
    // runs per tap, see `depthwise_forward`) and are put back in order at the end.
    let mut split = if g.sw > 1 { vec![0.0f32; g.h * g.w] } else { Vec::new() };
    let plane: &mut [f32] = if g.sw > 1 { &mut split } else { &mut *out };
    for o in c * g.cog..(c + 1) * g.cog {
        let go = &gy[o * g.oh * g.ow..][..g.oh * g.ow];
        let k = &wt[o * kk..(o + 1) * kk];
        for oy in 0..g.oh {
            let (ky0, ky1, iy0) = Geometry::taps(oy, g.sh, g.pt, g.kh, g.h);
            let grow = &go[oy * g.ow..(oy + 1) * g.ow];
            for ky in ky0..ky1 {
                let irow = &mut plane[(iy0 + ky as isize) as usize * g.w..][..g.w];
                for (kx, r) in cols.iter().enumerate() {
                    if r.is_empty() {
                        continue; // this tap column reads only padding
                    }
                    let wv = k[ky * g.kw + kx];
                    let first = phase_index(r.start * g.sw + kx - g.pl, g.w, g.sw);
                    for (i, d) in irow[first..].iter_mut().zip(&grow[r.clone()]) {
                        *i += wv * d;
                    }
                }
            }
        }
    }
    if g.sw > 1 {
        merge_phases(&split, g.w, g.sw, out);
    }
}

/// Where column `c` of a row `w` wide lands when the row's columns are regrouped by their
/// remainder modulo `s`: remainder 0 first (columns 0, s, 2s, ...), then 1, and so on.
#[inline(always)]
fn phase_index(c: usize, w: usize, s: usize) -> usize {
    let p = c % s;
    // Columns with a remainder below p: ceil((w - q) / s) for each q < p.
    (0..p).map(|q| (w - q.min(w)).div_ceil(s)).sum::<usize>() + c / s
}

/// `plane` (rows `w` wide) with each row's columns regrouped by remainder modulo `s`.
#[inline(always)]
fn split_phases(plane: &[f32], w: usize, s: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; plane.len()];
    for (src, dst) in plane.chunks_exact(w).zip(out.chunks_exact_mut(w)) {
        if s == 2 {
            // Written as pairs, which the compiler turns into vector shuffles.
            let (even, odd) = dst.split_at_mut(w.div_ceil(2));
            for ((e, o), pair) in even.iter_mut().zip(odd.iter_mut()).zip(src.chunks_exact(2)) {
                *e = pair[0];
                *o = pair[1];
            }
            if w % 2 == 1 {
                even[w / 2] = src[w - 1];
            }
            continue;
        }
        let mut at = 0;
        for p in 0..s.min(w) {
            for v in src[p..].iter().step_by(s) {
                dst[at] = *v;
                at += 1;
            }
        }
    }
    out
}

/// The inverse of [`split_phases`], into `plane`.
#[inline(always)]
fn merge_phases(split: &[f32], w: usize, s: usize, plane: &mut [f32]) {
    for (src, dst) in split.chunks_exact(w).zip(plane.chunks_exact_mut(w)) {
        if s == 2 {
            let (even, odd) = src.split_at(w.div_ceil(2));
            for ((e, o), pair) in even.iter().zip(odd).zip(dst.chunks_exact_mut(2)) {
                pair[0] = *e;
                pair[1] = *o;
            }
            if w % 2 == 1 {
                dst[w - 1] = even[w / 2];
            }
            continue;
        }
        let mut at = 0;
        for p in 0..s.min(w) {
            for v in dst[p..].iter_mut().step_by(s) {
                *v = src[at];
                at += 1;
            }
        }
    }
}

thread_local! {
    /// The gradient at the pre-activation, kept between calls like [`SCRATCH`].
    static GPRE: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The im2col buffer, kept between calls: at 512x512 it is tens of megabytes, and a fresh
    /// allocation each time costs page faults.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's scratch buffer of at least `len` floats (contents undefined).
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    with_buffer(&SCRATCH, len, f)
}

/// Runs `f` with the buffer kept in `cell`, grown to `len` floats. The buffer is taken out of
/// the cell for the call, so a nested call on this thread (rayon runs another job's conv
/// while this one waits for its workers) gets a buffer of its own instead of a borrow panic.
pub(super) fn with_buffer<R>(
    cell: &'static std::thread::LocalKey<std::cell::RefCell<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    let mut buf = cell.with(|c| c.take());
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let result = f(&mut buf[..len]);
    cell.with(|c| {
        if c.borrow().len() < buf.len() {
            c.replace(buf);
        }
    });
    result
}

thread_local! {
    /// Set by [`on_im2col_route`]: this thread's convolutions take the im2col route.
    static IM2COL_ONLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with this thread's convolutions on the im2col route, as on a CPU without AVX-512 or
/// AVX2:
/// the tests keep that route covered on machines that have it.
pub fn on_im2col_route<R>(f: impl FnOnce() -> R) -> R {
    let before = IM2COL_ONLY.with(|c| c.replace(true));
    let r = f();
    IM2COL_ONLY.with(|c| c.set(before));
    r
}

/// Whether the implicit-product kernel (`igemm.rs`, and Winograd's route on it) runs this
/// convolution's input gradient and forward (on a CPU without AVX-512, only the forward's 3x3,
/// 5x5, 1x7 and 7x1 kernels, through Winograd's): stride 1, one group, [`implicit_kernels`], and on a CPU
/// without AVX-512 only the layers where that beat the im2col route ([`avx2_pays`]).
fn implicit(g: &Geometry) -> bool {
    implicit_kernels()
        && g.sh == 1
        && g.sw == 1
        && g.groups == 1
        && g.transposed().is_some()
        && (super::igemm::avx512() || avx2_pays(g))
}

/// The layers whose input gradient takes the AVX2 kernels (and the forward, through Winograd's,
/// see `conv_forward`): those whose forward and input gradient ran faster there than on the
/// im2col route, OpenBLAS's kernel. Measured on Zen 3, 2 cores, InceptionV3's layers at
/// 512x512, alternating in one process (`cargo test --release --lib route_speed -- --ignored
/// --nocapture`; this VM's speed moves by a quarter between runs, so each layer was read in
/// several runs). 3x3 layers through Winograd's F(4x4, 3x3), time against im2col: 32 -> 32 at
/// 253x253 0.77-0.85 forward, 0.78-0.94 gradient; 32 -> 64 0.6-0.7 forward and gradient; 80 ->
/// 192 at 124x124 0.55-0.7 forward, 0.5-0.55 gradient; 64 -> 96 and 96 -> 96 at 61x61 0.55-0.66
/// forward, 0.55-0.7 gradient. But 3 -> 64 at 224x224 (VGG's first layer) 1.2-1.7 times slower
/// forward: the products are 3 deep. 5x5 layers (F(2x2, 5x5) gradients): 48 -> 64 at 61x61
/// 0.8-0.9. 1x7 and 7x1 layers through F(2, 7), once its transforms were 8-lane intrinsics:
/// 128 -> 128 and 128 -> 192 at 30x30 0.7-0.8 both ways, 160 -> 160 at 21x21 and 14x14
/// 0.78-1.0. The 1x1 layers ran up to 1.8 times slower on the direct kernel (its 16-pixel
/// tiles read each tap's weights again from the L2 cache), as did 1x7 and 7x1 before F(2, 7),
/// the stride-2 ones 1.3 times. OpenBLAS for Winograd's products was no faster than the
/// kernel. (After the transforms' rewrite the 3x3 layers read 0.45-0.7.)
fn avx2_pays(g: &Geometry) -> bool {
    match (g.kh, g.kw) {
        (3, 3) => g.ci >= 32 && g.co >= 32 && winograd(),
        (5, 5) => true,
        // Not with `DEEPDREAM_WINOGRAD=2` (no F(2, 7) then): the direct kernel ran slower.
        (1, 7) | (7, 1) => winograd() && super::winograd::Tile::for_gradients(g.kh, g.kw).is_some(),
        _ => false,
    }
}

/// Whether this thread's convolutions may take the implicit-product kernel: the CPU has
/// AVX-512F or AVX2 with FMA, `DEEPDREAM_IGEMM` is not 0 (for comparing the routes), and not
/// inside [`on_im2col_route`].
fn implicit_kernels() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let on = *ON.get_or_init(|| super::igemm::available() && super::switched_on("DEEPDREAM_IGEMM"));
    on && !IM2COL_ONLY.with(|c| c.get())
}

/// Whether this thread's convolutions may take the AVX-512 kernels (the depthwise rows, the
/// strided convolutions through their phase planes): [`implicit_kernels`] on a CPU with
/// AVX-512F.
fn wide_kernels() -> bool {
    implicit_kernels() && super::igemm::avx512()
}

/// Whether convolutions at stride 1 with a kernel Winograd's route has (3x3; 5x5, 1x7 and 7x1
/// input gradients, and their forward on AVX2 without AVX-512; see `Tile::for_forward` and
/// `Tile::for_gradients`) take it (`winograd.rs`)
/// where they take the implicit-product kernel: unless `DEEPDREAM_WINOGRAD=0` (for comparing
/// the routes).
fn winograd() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| super::switched_on("DEEPDREAM_WINOGRAD"))
}

/// `one(b)` for each image `b` of a batch of `n`, joined.
fn per_image(n: usize, one: impl Fn(usize) -> Vec<f32>) -> Vec<f32> {
    if n == 1 {
        return one(0);
    }
    (0..n).flat_map(one).collect()
}

fn conv_forward(inner: &ConvInner, x: &[f32], g: &Geometry) -> Vec<f32> {
    // Strided convolutions too (through their phase planes, `igemm::strided`): only their
    // input gradients keep the col2im route.
    let strided = g.groups == 1 && (g.sh > 1 || g.sw > 1) && wide_kernels();
    // On a CPU without AVX-512 only the 3x3, 5x5, 1x7 and 7x1 layers [`avx2_pays`] picks leave the
    // im2col route, for Winograd's (`Tile::for_forward`); the direct kernel there is no faster than
    // OpenBLAS's.
    let implicit = implicit(g);
    if implicit && winograd() && g.n > 0 {
        let len = g.ci * g.h * g.w;
        let job = |b: usize| g.implicit_job(&x[b * len..][..len], None);
        let tile = super::winograd::Tile::for_forward(g.kh, g.kw);
        if let Some(tile) = tile.filter(|&t| super::winograd::fits(&job(0), t)) {
            let u = inner.winograd.get_or_init(|| super::winograd::Transformed::new(&inner.weight, g.co, g.ci, tile));
            return per_image(g.n, |b| super::winograd::conv(u, Some(&inner.bias), inner.spec.activation, &job(b)));
        }
    }
    if (implicit && super::igemm::avx512()) || strided {
        let packed = inner.packed.get_or_init(|| super::igemm::Packed::new(&inner.weight, g.co, g.ci * g.kh * g.kw));
        let len = g.ci * g.h * g.w;
        return per_image(g.n, |b| {
            let job = g.implicit_job(&x[b * len..][..len], None);
            super::igemm::conv(packed, Some(&inner.bias), inner.spec.activation, &job)
        });
    }
    let ohw = g.oh * g.ow;
    if g.is_depthwise() && wide_kernels() {
        let len = g.ci * g.h * g.w;
        return per_image(g.n, |b| {
            depthwise_forward_wide(
                &x[b * len..][..len],
                None,
                &inner.weight,
                Some(&inner.bias),
                inner.spec.activation,
                g,
            )
        });
    }
    // The products accumulate onto the bias (so neither a zeroing pass nor a bias pass is
    // needed: OpenBLAS skips its own pass over the output when told to accumulate).
    let mut y = super::par_fill_planes(g.n * g.co, ohw, |i| if g.is_depthwise() { 0.0 } else { inner.bias[i % g.co] });
    let col_len = if g.is_pointwise() || g.is_depthwise() { 0 } else { g.col_len() };
    with_scratch(col_len, |col| conv_forward_into(inner, x, g, &mut y, col));
    y
}

fn conv_forward_into(inner: &ConvInner, x: &[f32], g: &Geometry, y: &mut [f32], col: &mut [f32]) {
    let ohw = g.oh * g.ow;
    let k_len = g.cig * g.kh * g.kw;
    for b in 0..g.n {
        let xb = &x[b * g.ci * g.h * g.w..][..g.ci * g.h * g.w];
        let yb = &mut y[b * g.co * ohw..][..g.co * ohw];
        if g.is_depthwise() {
            depthwise_forward(xb, &inner.weight, g, yb);
        } else {
            for grp in 0..g.groups {
                let xg = &xb[grp * g.cig * g.h * g.w..];
                let wg = &inner.weight[grp * g.cog * k_len..][..g.cog * k_len];
                let yg = &mut yb[grp * g.cog * ohw..][..g.cog * ohw];
                if g.is_pointwise() {
                    sgemm(g.cog, ohw, k_len, wg, Trans::No, xg, Trans::No, yg, true);
                    continue;
                }
                // Band by band of output rows, so the gathered columns are still in cache
                // when the product reads them (and the buffer stays small).
                for rows in bands(g.oh, g.ow, k_len) {
                    let cols = rows.len() * g.ow;
                    im2col(xg, None, g, g.cig, rows.clone(), &mut col[..k_len * cols]);
                    sgemm_ld(
                        g.cog,
                        cols,
                        k_len,
                        wg,
                        &col[..k_len * cols],
                        cols,
                        &mut yg[rows.start * g.ow..],
                        ohw,
                        true,
                    );
                }
            }
        }
        let act = inner.spec.activation;
        if g.is_depthwise() {
            yb.par_chunks_mut(ohw).enumerate().for_each(|(o, plane)| {
                let bias = inner.bias[o];
                plane.iter_mut().for_each(|v| *v = act.apply(*v + bias));
            });
        } else if act != Activation::Identity {
            yb.par_chunks_mut(1 << 14).for_each(|chunk| chunk.iter_mut().for_each(|v| *v = act.apply(*v)));
        }
    }
}

/// One phase of a strided convolution's input gradient. The input pixels `(iy, ix)` with
/// `(iy + pt) % sh == ry` and `(ix + pl) % sw == rx` take gradient from the kernel taps
/// `ky = ry + sh * j`, `kx = rx + sw * i` alone, and input row `iy = sh * a + ry - pt` from
/// output row `a - j`: a stride-1 convolution of the output gradient with those taps,
/// flipped (`jy x jx` of them; `packed` is `[ci, co * jy * jx]`, none where the phase has no
/// taps). So the gradient runs on the implicit-product kernel, as the forward does, where the
/// im2col route multiplied through OpenBLAS and then scattered the columns back one add at a
/// time. Used from 16 input channels: with fewer (the image's 3 at the stem) the kernel's
/// blocks of 8 channels run mostly empty and the phases' scatter has too few planes to share
/// out; there col2im was as fast (InceptionV3 512x512 backward, alternating runs).
struct GradPhase {
    ry: usize,
    rx: usize,
    jy: usize,
    jx: usize,
    packed: Option<super::igemm::Packed>,
}

impl GradPhase {
    /// The first and one-past-last `a` (input row `sh * a + ry - pt`) inside the input, and
    /// the same for columns.
    fn spans(&self, g: &Geometry) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        let span = |r: usize, s: usize, pad: usize, len: usize| {
            let lo = pad.saturating_sub(r).div_ceil(s);
            let hi = (len + pad).saturating_sub(r).div_ceil(s);
            lo..hi.max(lo)
        };
        (span(self.ry, g.sh, g.pt, g.h), span(self.rx, g.sw, g.pl, g.w))
    }

    /// Whether the phase's convolution needs no negative padding (its first row reads no
    /// output row before the first): true for paddings under the stride (TensorFlow's SAME,
    /// PyTorch's usual ones); a 3x3 kernel at stride 2 padded by 2 fails it, and keeps col2im.
    fn fits(&self, g: &Geometry) -> bool {
        let (a, b) = self.spans(g);
        self.packed.is_none() || (a.start < self.jy.max(1) && b.start < self.jx.max(1))
    }
}

fn grad_phases(inner: &ConvInner, g: &Geometry) -> Vec<GradPhase> {
    let taps = |r: usize, s: usize, k: usize| if r < k { (k - r).div_ceil(s) } else { 0 };
    let mut phases = Vec::new();
    for ry in 0..g.sh {
        for rx in 0..g.sw {
            let (jy, jx) = (taps(ry, g.sh, g.kh), taps(rx, g.sw, g.kw));
            let packed = (jy * jx > 0).then(|| {
                let mut w = vec![0.0f32; g.ci * g.co * jy * jx];
                for c in 0..g.ci {
                    for o in 0..g.co {
                        for j in 0..jy {
                            for i in 0..jx {
                                let (ky, kx) = (ry + g.sh * (jy - 1 - j), rx + g.sw * (jx - 1 - i));
                                w[((c * g.co + o) * jy + j) * jx + i] =
                                    inner.weight[((o * g.ci + c) * g.kh + ky) * g.kw + kx];
                            }
                        }
                    }
                }
                super::igemm::Packed::new(&w, g.ci, g.co * jy * jx)
            });
            phases.push(GradPhase { ry, rx, jy, jx, packed });
        }
    }
    phases
}

/// The input gradient of one image of a strided convolution, phase by phase (see
/// [`GradPhase`]); `mask` is the forward output and its activation.
fn strided_input_grad(phases: &[GradPhase], gy: &[f32], mask: Option<(&[f32], Activation)>, g: &Geometry) -> Vec<f32> {
    // Masked once here rather than once per phase.
    match mask {
        Some((y, act)) => with_buffer(&GPRE, gy.len(), |masked| {
            mask_all(masked, gy, y, act);
            phase_grads(phases, masked, g)
        }),
        None => phase_grads(phases, gy, g),
    }
}

/// `dst = gy` where the activation passed its output `y`, else 0.
fn mask_all(dst: &mut [f32], gy: &[f32], y: &[f32], act: Activation) {
    dst.par_chunks_mut(1 << 14)
        .zip(gy.par_chunks(1 << 14).zip(y.par_chunks(1 << 14)))
        .for_each(|(d, (gs, ys))| super::wide(|| mask_into(d, gs, ys, act)));
}

/// [`strided_input_grad`] of the masked output gradient `gy`.
fn phase_grads(phases: &[GradPhase], gy: &[f32], g: &Geometry) -> Vec<f32> {
    let mut gx = vec![0.0f32; g.ci * g.h * g.w];
    for ph in phases {
        let Some(packed) = &ph.packed else { continue };
        let (a, b) = ph.spans(g);
        if a.is_empty() || b.is_empty() {
            continue;
        }
        let job = super::igemm::Conv {
            x: gy,
            mask: None,
            c: g.co,
            h: g.oh,
            w: g.ow,
            kh: ph.jy,
            kw: ph.jx,
            pt: ph.jy - 1 - a.start,
            pl: ph.jx - 1 - b.start,
            sh: 1,
            sw: 1,
            oh: a.len(),
            ow: b.len(),
        };
        let sub = super::igemm::conv(packed, None, Activation::Identity, &job);
        let (y0, x0) = (g.sh * a.start + ph.ry - g.pt, g.sw * b.start + ph.rx - g.pl);
        gx.par_chunks_mut(g.h * g.w).zip(sub.par_chunks(a.len() * b.len())).for_each(|(plane, part)| {
            for (i, row) in part.chunks_exact(b.len()).enumerate() {
                let out = &mut plane[(y0 + g.sh * i) * g.w..][..g.w];
                for (v, x) in row.iter().zip(out[x0..].iter_mut().step_by(g.sw)) {
                    *x = *v;
                }
            }
        });
    }
    gx
}

fn conv_backward(inner: &ConvInner, gy: &[f32], y: &[f32], g: &Geometry) -> Vec<f32> {
    let act = inner.spec.activation;
    if implicit(g)
        && let Some(t) = g.transposed()
    {
        // The input gradient is the convolution of the masked output gradient with the
        // flipped, transposed kernel (see `conv_backward_into`): geometry `t`.
        let len = g.co * g.oh * g.ow;
        let job = |b: usize| {
            let mask = (act != Activation::Identity).then(|| (&y[b * len..][..len], act));
            t.implicit_job(&gy[b * len..][..len], mask)
        };
        let tile = super::winograd::Tile::for_gradients(g.kh, g.kw);
        if let Some(tile) = tile.filter(|&t| winograd() && g.n > 0 && super::winograd::fits(&job(0), t)) {
            let u = inner
                .winograd_flipped
                .get_or_init(|| super::winograd::Transformed::new(inner.flipped(), g.ci, g.co, tile));
            return per_image(g.n, |b| super::winograd::conv(u, None, Activation::Identity, &job(b)));
        }
        let packed =
            inner.packed_flipped.get_or_init(|| super::igemm::Packed::new(inner.flipped(), g.ci, g.co * g.kh * g.kw));
        let len = g.co * g.oh * g.ow;
        return per_image(g.n, |b| {
            let mask = (act != Activation::Identity).then(|| (&y[b * len..][..len], act));
            super::igemm::conv(packed, None, Activation::Identity, &t.implicit_job(&gy[b * len..][..len], mask))
        });
    }
    if g.is_depthwise()
        && g.cog == 1
        && wide_kernels()
        && let Some(t) = g.transposed()
    {
        // At stride 1, a depthwise convolution of the masked output gradient with each
        // channel's kernel flipped (geometry `t`; with one output a channel, `flipped` is each
        // channel's taps reversed), on the forward's AVX-512 kernel.
        let len = g.co * g.oh * g.ow;
        return per_image(g.n, |b| {
            let mask = (act != Activation::Identity).then(|| (&y[b * len..][..len], act));
            depthwise_forward_wide(&gy[b * len..][..len], mask, inner.flipped(), None, Activation::Identity, &t)
        });
    }
    if g.groups == 1 && (g.sh > 1 || g.sw > 1) && g.ci >= 16 && wide_kernels() {
        let phases = inner.grad_phases.get_or_init(|| grad_phases(inner, g));
        let len = g.co * g.oh * g.ow;
        if phases.iter().all(|p| p.fits(g)) {
            return per_image(g.n, |b| {
                let mask = (act != Activation::Identity).then(|| (&y[b * len..][..len], act));
                strided_input_grad(phases, &gy[b * len..][..len], mask, g)
            });
        }
    }
    let gx = super::par_fill_planes(g.n * g.ci, g.h * g.w, |_| 0.0);
    // The gradient at the pre-activation: zero where the activation was flat. The stride-1
    // route applies the mask as its im2col gathers; the others read it from a buffer kept
    // between calls (a fresh one each call cost page faults: 14% of InceptionV3's backward).
    if act != Activation::Identity && g.transposed().is_some() && !g.is_pointwise() && !g.is_depthwise() {
        return finish_backward(inner, gy, Some(y), g, gx);
    }
    if act != Activation::Identity {
        return with_buffer(&GPRE, gy.len(), |gpre| {
            mask_all(gpre, gy, y, act);
            finish_backward(inner, gpre, None, g, gx)
        });
    }
    finish_backward(inner, gy, None, g, gx)
}

/// The input gradient into the zeroed `gx`, from the gradient at the pre-activation (or with
/// `y`, the output gradient still to be masked: see [`conv_backward_into`]).
fn finish_backward(inner: &ConvInner, gpre: &[f32], y: Option<&[f32]>, g: &Geometry, mut gx: Vec<f32>) -> Vec<f32> {
    let ohw = g.oh * g.ow;
    let k_len = g.cig * g.kh * g.kw;
    let col_len = if g.is_pointwise() || g.is_depthwise() {
        0
    } else if let Some(t) = g.transposed() {
        t.col_len()
    } else {
        k_len * ohw
    };
    with_scratch(col_len, |col| conv_backward_into(inner, gpre, y, g, &mut gx, col));
    gx
}

/// `gpre` is the gradient at the pre-activation, or with `y` the output gradient still to be
/// masked by the activation (the stride-1 route only).
fn conv_backward_into(
    inner: &ConvInner,
    gpre: &[f32],
    y: Option<&[f32]>,
    g: &Geometry,
    gx: &mut [f32],
    col: &mut [f32],
) {
    let ohw = g.oh * g.ow;
    let k_len = g.cig * g.kh * g.kw;
    for b in 0..g.n {
        let gyb = &gpre[b * g.co * ohw..][..g.co * ohw];
        let gxb = &mut gx[b * g.ci * g.h * g.w..][..g.ci * g.h * g.w];
        if g.is_depthwise() {
            depthwise_backward(gyb, &inner.weight, g, gxb);
            continue;
        }
        for grp in 0..g.groups {
            let wg = &inner.weight[grp * g.cog * k_len..][..g.cog * k_len];
            let gyg = &gyb[grp * g.cog * ohw..][..g.cog * ohw];
            let gxg = &mut gxb[grp * g.cig * g.h * g.w..][..g.cig * g.h * g.w];
            if g.is_pointwise() {
                sgemm(g.cig, ohw, g.cog, wg, Trans::Yes, gyg, Trans::No, gxg, true);
            } else if let Some(t) = g.transposed() {
                // At stride 1 the input gradient is itself a convolution: of the output
                // gradient with the flipped, transposed kernel. Its im2col is a plain copy and
                // the product lands straight in gx, where the col2im route would zero, fill and
                // scatter-add a matrix as large.
                let ft = &inner.flipped()[grp * g.cig * g.cog * g.kh * g.kw..][..g.cig * g.cog * g.kh * g.kw];
                let mask = y.map(|y| (&y[b * g.co * ohw + grp * g.cog * ohw..][..g.cog * ohw], inner.spec.activation));
                let k_t = g.cog * g.kh * g.kw;
                for rows in bands(t.oh, t.ow, k_t) {
                    let cols = rows.len() * t.ow;
                    im2col(gyg, mask, &t, g.cog, rows.clone(), &mut col[..k_t * cols]);
                    sgemm_ld(
                        g.cig,
                        cols,
                        k_t,
                        ft,
                        &col[..k_t * cols],
                        cols,
                        &mut gxg[rows.start * t.ow..],
                        g.h * g.w,
                        true,
                    );
                }
            } else {
                sgemm(k_len, ohw, g.cog, wg, Trans::Yes, gyg, Trans::No, col, false);
                col2im(col, g, g.cig, gxg);
            }
        }
    }
}

struct ConvOp(Arc<ConvInner>);

impl CustomOp1 for ConvOp {
    fn name(&self) -> &'static str {
        "deepdream-conv2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = Geometry::new(&self.0, layout.dims())?;
        let x = cpu_slice(storage, layout)?;
        super::flops::add(g.flops());
        let y = conv_forward(&self.0, x, &g);
        Ok((CpuStorage::F32(y), Shape::from((g.n, g.co, g.oh, g.ow))))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let gx = grad_res.contiguous()?.apply_op2_no_bwd(
            &res.contiguous()?,
            &ConvInputGrad { inner: self.0.clone(), in_dims: arg.dims().to_vec() },
        )?;
        Ok(Some(gx))
    }
}

/// The input gradient as its own op: arguments are the output gradient and the forward output.
struct ConvInputGrad {
    inner: Arc<ConvInner>,
    in_dims: Vec<usize>,
}

impl CustomOp2 for ConvInputGrad {
    fn name(&self) -> &'static str {
        "deepdream-conv2d-input-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = Geometry::new(&self.inner, &self.in_dims)?;
        let (gy, y) = (cpu_slice(s1, l1)?, cpu_slice(s2, l2)?);
        super::flops::add(g.flops());
        let gx = conv_backward(&self.inner, gy, y, &g);
        Ok((CpuStorage::F32(gx), Shape::from(self.in_dims.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// `phase_row` (the vector gathers at strides 2 and 4 included) against its definition:
    /// entry `j` is input column `j s + p - pl`, zero outside the row.
    #[test]
    fn phase_rows_match_the_definition() {
        let mut ran = 0;
        for s in 1..=4 {
            for w in [0usize, 1, 3, 7, 8, 16, 31, 33, 64, 70, 131] {
                let src: Vec<f32> = (0..w).map(|i| 1.0 + i as f32).collect();
                for pl in 0..4 {
                    for p in 0..s {
                        for len in [0, 1, (w + pl).div_ceil(s), (w + 2 * pl).div_ceil(s) + 3, 40] {
                            let mut got = vec![f32::NAN; len];
                            phase_row(&mut got, &src, s, p, pl);
                            let want: Vec<f32> = (0..len)
                                .map(|j| {
                                    let col = (j * s + p) as isize - pl as isize;
                                    if (0..w as isize).contains(&col) { src[col as usize] } else { 0.0 }
                                })
                                .collect();
                            assert_eq!(got, want, "stride {s} width {w} pad {pl} phase {p} length {len}");
                            ran += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(ran, 10 * 11 * 4 * 5);
        // The AVX2 gathers themselves (on a CPU with AVX-512, `phase_row` takes `every_other`
        // at stride 2).
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") {
            for s in [2, 4] {
                for w in 0..80usize {
                    let src: Vec<f32> = (0..w).map(|i| 1.0 + i as f32).collect();
                    for len in [0, w.div_ceil(s), w.div_ceil(s) + 2] {
                        let mut got = vec![f32::NAN; len + 1];
                        // SAFETY: the CPU has AVX2.
                        unsafe { strided_avx2(&mut got[..len], &src, s) };
                        let n = len.min(w.div_ceil(s));
                        let want: Vec<f32> = (0..n).map(|i| src[s * i]).collect();
                        assert_eq!(&got[..n], &want[..], "stride {s} width {w} length {len}");
                        assert!(got[n..].iter().all(|v| v.is_nan()), "stride {s} width {w} length {len}: past the end");
                    }
                }
            }
        }
    }

    /// The two routes of a convolution (the implicit product on AVX-512, Winograd's on it for
    /// 3x3 kernels and 5x5, 1x7 and 7x1 input gradients, the strided gradients phase by phase;
    /// im2col and OpenBLAS elsewhere) and of a depthwise one (register sums over a padded plane
    /// on AVX-512, row by row elsewhere) compute the same forward and input gradient.
    #[test]
    fn both_routes_agree() {
        let values = |n: usize, k: f32| (0..n).map(|i| (i as f32 * k).sin()).collect::<Vec<_>>();
        let cases = [
            ([1, 5, 13, 17], 9, (3, 3), Padding::Same, Activation::Relu),
            ([2, 4, 9, 8], 7, (1, 1), Padding::symmetric(0, 0), Activation::Relu6),
            ([1, 3, 12, 11], 8, (1, 7), Padding::symmetric(0, 3), Activation::Identity),
            ([1, 6, 10, 10], 16, (3, 3), Padding::symmetric(0, 0), Activation::Relu),
            ([1, 2, 7, 6], 3, (1, 7), Padding::Explicit { top: 0, bottom: 3, left: 3, right: 0 }, Activation::Relu),
            // Winograd's route: two images, lopsided padding, rows of more than 16 tiles.
            ([2, 4, 9, 37], 7, (3, 3), Padding::Explicit { top: 0, bottom: 1, left: 0, right: 1 }, Activation::Relu6),
            // 5x5 input gradients through F(2x2, 5x5): same padding, and valid (the gradient
            // pads by 4), outputs not a whole number of tiles.
            ([1, 5, 11, 13], 6, (5, 5), Padding::Same, Activation::Relu),
            // 7x1 input gradients through F(2, 7) along columns (1x7 ones along rows above).
            ([1, 4, 11, 9], 5, (7, 1), Padding::symmetric(3, 0), Activation::Relu),
            ([2, 3, 10, 9], 4, (5, 5), Padding::symmetric(0, 0), Activation::Identity),
            // 32 channels in and out or more: on an AVX2 CPU the forward and the input gradient
            // through F(4x4, 3x3) on the AVX2 kernels (`avx2_pays`), with a partial run of
            // tiles, then (70 columns) a whole row of 16 tiles and a partial one; the 5x5 cases
            // above and below take F(2x2, 5x5) both ways there.
            ([1, 48, 9, 10], 48, (3, 3), Padding::Same, Activation::Relu),
            ([1, 32, 6, 70], 32, (3, 3), Padding::Same, Activation::Relu6),
            ([1, 4, 7, 40], 5, (5, 5), Padding::Same, Activation::Relu),
        ];
        // Ungrouped at a stride (the forward through `igemm::strided`, the gradient by col2im
        // under 16 input channels).
        let strided = [
            ([1, 3, 17, 19], 8, (3, 3), (2, 2), Padding::Same, Activation::Relu),
            ([1, 4, 12, 11], 6, (3, 3), (2, 2), Padding::symmetric(0, 0), Activation::Relu6),
            ([2, 3, 9, 16], 5, (1, 1), (2, 2), Padding::symmetric(0, 0), Activation::Identity),
            // 16 input channels and more: the gradient phase by phase (`GradPhase`).
            ([1, 17, 11, 13], 6, (3, 3), (2, 2), Padding::Same, Activation::Relu),
            ([2, 16, 12, 11], 5, (3, 3), (2, 2), Padding::symmetric(0, 0), Activation::Relu6),
            ([1, 16, 9, 14], 4, (1, 1), (2, 2), Padding::symmetric(0, 0), Activation::Identity),
            // A stride in one direction; padding 2 at stride 2 (a phase that keeps col2im);
            // rows wide enough for the stride-2 copy's vector loop.
            ([1, 16, 10, 9], 5, (3, 3), (2, 1), Padding::symmetric(1, 1), Activation::Relu),
            ([1, 16, 9, 10], 5, (3, 3), (2, 2), Padding::symmetric(2, 2), Activation::Relu6),
            ([1, 16, 7, 75], 3, (3, 3), (2, 2), Padding::Same, Activation::Relu),
        ];
        // Depthwise (groups = channels), stride 1 and 2, 3x3 and 5x5, odd and lopsided
        // padding, rows under and over a vector.
        // (dims, kernel, stride, padding, activation, outputs per channel)
        let depthwise = [
            ([1, 6, 13, 17], (3, 3), (1, 1), Padding::Same, Activation::Relu6, 1),
            ([2, 4, 9, 37], (5, 5), (2, 2), Padding::Same, Activation::Relu, 1),
            (
                [1, 3, 11, 20],
                (3, 3),
                (2, 2),
                Padding::Explicit { top: 0, bottom: 1, left: 0, right: 1 },
                Activation::Relu6,
                1,
            ),
            ([1, 5, 7, 6], (5, 5), (1, 1), Padding::symmetric(0, 0), Activation::Identity, 1),
            ([1, 2, 8, 40], (3, 3), (1, 2), Padding::symmetric(1, 1), Activation::Relu, 1),
            // Stride 3 on rows narrower than the stride, a row stride above the column one,
            // a ReLU mask and lopsided padding on the stride-1 gradient, padding wider than
            // the kernel (the gradient's old route), one output column, two outputs a channel.
            ([1, 2, 5, 1], (3, 3), (3, 3), Padding::Same, Activation::Relu, 1),
            ([1, 2, 7, 2], (1, 1), (3, 3), Padding::symmetric(0, 0), Activation::Identity, 1),
            ([1, 3, 12, 9], (3, 3), (2, 1), Padding::symmetric(1, 1), Activation::Relu6, 1),
            (
                [1, 4, 9, 18],
                (3, 3),
                (1, 1),
                Padding::Explicit { top: 2, bottom: 0, left: 0, right: 2 },
                Activation::Relu,
                1,
            ),
            ([1, 2, 6, 7], (3, 3), (1, 1), Padding::symmetric(3, 3), Activation::Relu, 1),
            ([1, 3, 6, 1], (3, 3), (1, 1), Padding::symmetric(1, 1), Activation::Relu6, 1),
            ([1, 3, 8, 21], (3, 3), (1, 1), Padding::Same, Activation::Relu6, 2),
        ];
        let cases = cases
            .into_iter()
            .map(|(dims, co, k, padding, activation)| (dims, co, k, (1, 1), 1, padding, activation))
            .chain(
                strided
                    .into_iter()
                    .map(|(dims, co, k, stride, padding, activation)| (dims, co, k, stride, 1, padding, activation)),
            );
        let depthwise = depthwise.into_iter().map(|(dims, k, stride, padding, activation, multiplier)| {
            (dims, dims[1] * multiplier, k, stride, dims[1], padding, activation)
        });
        for (dims, co, (kh, kw), stride, groups, padding, activation) in cases.chain(depthwise) {
            let w = Tensor::from_vec(
                values(co * dims[1] / groups * kh * kw, 0.7),
                (co, dims[1] / groups, kh, kw),
                &Device::Cpu,
            )
            .unwrap();
            let b = Tensor::from_vec(values(co, 1.3), co, &Device::Cpu).unwrap();
            let conv = Conv2d::new(&w, Some(&b), ConvSpec { padding, activation, stride, groups }).unwrap();
            // Inputs up to 3, so that ReLU6 saturates somewhere, and an output gradient of its
            // own, so that the activation masks matter.
            let x = (Tensor::from_vec(values(dims.iter().product(), 0.31), dims.as_slice(), &Device::Cpu).unwrap()
                * 3.0)
                .unwrap();
            let flat = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let run = || {
                let y = conv.forward(&x).unwrap();
                let gy = Tensor::from_vec(values(y.elem_count(), 0.77), y.dims(), &Device::Cpu).unwrap();
                (flat(y.clone()), flat(conv.input_grad(&gy, &y, x.dims()).unwrap()))
            };
            let (fast, slow) = (run(), on_im2col_route(run));
            if groups > 1 {
                // The depthwise kernel rounds its products and sums as the row-by-row loop.
                assert_eq!(fast.0, slow.0, "{dims:?} {kh}x{kw} depthwise forward not bit-identical");
            }
            for (what, a, b) in [("forward", &fast.0, &slow.0), ("input gradient", &fast.1, &slow.1)] {
                assert_eq!(a.len(), b.len(), "{dims:?} {kh}x{kw} {what}: lengths");
                for (i, (u, v)) in a.iter().zip(b).enumerate() {
                    assert!((u - v).abs() <= 1e-4 * (1.0 + v.abs()), "{dims:?} {kh}x{kw} {what} [{i}]: {u} vs {v}");
                }
            }
        }
    }

    /// A thread waiting inside one convolution (its scratch buffers in use) may run another
    /// convolution's job: rayon does that when dreams share its pool. The nested call must get
    /// buffers of its own, not a borrow panic, and both must compute what they compute alone.
    #[test]
    fn scratch_buffers_are_reentrant() {
        let values = |n: usize, k: f32| (0..n).map(|i| (i as f32 * k).sin()).collect::<Vec<_>>();
        let w = Tensor::from_vec(values(4 * 3 * 9, 0.7), (4, 3, 3, 3), &Device::Cpu).unwrap();
        let spec = ConvSpec { stride: (1, 1), padding: Padding::Same, groups: 1, activation: Activation::Relu };
        let conv = Conv2d::new(&w, None, spec).unwrap();
        let x = Tensor::from_vec(values(3 * 20 * 24, 0.3), (1, 3, 20, 24), &Device::Cpu).unwrap();
        let flat = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let gy = conv.forward(&x).unwrap();
        let alone = (flat(gy.clone()), flat(conv.input_grad(&gy, &gy, x.dims()).unwrap()));
        let nested = with_scratch(1 << 12, |outer| {
            with_buffer(&GPRE, 1 << 12, |_| {
                outer.fill(f32::NAN); // the outer call's data stays its own
                (flat(conv.forward(&x).unwrap()), flat(conv.input_grad(&gy, &gy, x.dims()).unwrap()))
            })
        });
        assert_eq!(nested, alone);
    }
}

#[cfg(test)]
mod route_speed {
    use super::*;
    use candle_core::{Device, Tensor};
    /// `cargo test --release --lib route_speed -- --ignored --nocapture`: InceptionV3's layers at
    /// 512x512, forward and input gradient, on this CPU's route and on the im2col route,
    /// alternating (the minimum of 8 runs each).
    #[test]
    #[ignore]
    fn route_speed() {
        let values = |n: usize, k: f32| (0..n).map(|i| (i as f32 * k).sin()).collect::<Vec<_>>();
        // (c, h, m, kh, kw, stride, padding)
        let cases = [
            (32, 255, 32, 3, 3, 1, Padding::symmetric(0, 0)),
            (32, 253, 64, 3, 3, 1, Padding::Same),
            (80, 126, 192, 3, 3, 1, Padding::symmetric(0, 0)),
            (192, 61, 64, 1, 1, 1, Padding::symmetric(0, 0)),
            (48, 61, 64, 5, 5, 1, Padding::Same),
            (64, 61, 96, 3, 3, 1, Padding::Same),
            (96, 61, 96, 3, 3, 1, Padding::Same),
            (128, 30, 128, 1, 7, 1, Padding::symmetric(0, 3)),
            (128, 30, 192, 7, 1, 1, Padding::symmetric(3, 0)),
            (160, 21, 160, 1, 7, 1, Padding::symmetric(0, 3)),
            (160, 14, 160, 7, 1, 1, Padding::symmetric(3, 0)),
            (768, 30, 192, 1, 1, 1, Padding::symmetric(0, 0)),
            (288, 61, 384, 3, 3, 2, Padding::symmetric(0, 0)),
        ];
        for (c, h, m, kh, kw, s, padding) in cases {
            let w = Tensor::from_vec(values(m * c * kh * kw, 0.7), (m, c, kh, kw), &Device::Cpu).unwrap();
            let b = Tensor::from_vec(values(m, 1.3), m, &Device::Cpu).unwrap();
            let conv = Conv2d::new(
                &w,
                Some(&b),
                ConvSpec { padding, activation: Activation::Relu, stride: (s, s), groups: 1 },
            )
            .unwrap();
            let x = Tensor::from_vec(values(c * h * h, 0.31), (1, c, h, h), &Device::Cpu).unwrap();
            let y = conv.forward(&x).unwrap();
            let gy = Tensor::from_vec(values(y.elem_count(), 0.77), y.dims(), &Device::Cpu).unwrap();
            let (mut f, mut bw) = ([f64::MAX; 2], [f64::MAX; 2]);
            for i in 0..16 {
                let r = i % 2;
                let t = std::time::Instant::now();
                let go = || {
                    let _ = conv.forward(&x).unwrap();
                };
                if r == 0 {
                    go()
                } else {
                    on_im2col_route(go)
                }
                f[r] = f[r].min(t.elapsed().as_secs_f64());
                let t = std::time::Instant::now();
                let go = || {
                    let _ = conv.input_grad(&gy, &y, x.dims()).unwrap();
                };
                if r == 0 {
                    go()
                } else {
                    on_im2col_route(go)
                }
                bw[r] = bw[r].min(t.elapsed().as_secs_f64());
            }
            println!(
                "c{c} {h} -> {m} {kh}x{kw} s{s}: forward {:.2} ms (im2col {:.2}), gradient {:.2} (im2col {:.2})",
                f[0] * 1e3,
                f[1] * 1e3,
                bw[0] * 1e3,
                bw[1] * 1e3
            );
        }
    }
}
