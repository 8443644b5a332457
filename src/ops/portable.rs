//! The ops on any candle device, built from candle's own tensor ops (conv2d, pooling, matmul,
//! padding, comparisons), all of which have CUDA kernels: what runs when a tensor is not on the
//! CPU. On the CPU the hand-written kernels run instead, and these serve as a second,
//! independent implementation that the tests compare them with ([`PathGuard`]).
//!
//! Gradients here are explicit functions, never candle's autograd: the networks run their own
//! reverse pass, which calls [`Conv2d::input_grad`](super::Conv2d::input_grad) and
//! [`Pool2d::input_grad`](super::Pool2d::input_grad).

use candle_core::{DType, Result, Tensor};
use std::cell::Cell;

thread_local! {
    static FORCED: Cell<bool> = const { Cell::new(false) };
}

/// While alive, the ops on this thread take the portable path (on) or the native one (off);
/// the previous choice comes back when it drops. Made by [`crate::device::Backend::enter`].
pub struct PathGuard {
    previous: bool,
}

impl PathGuard {
    pub(crate) fn new(portable: bool) -> Self {
        PathGuard { previous: FORCED.with(|f| f.replace(portable)) }
    }
}

impl Drop for PathGuard {
    fn drop(&mut self) {
        FORCED.with(|f| f.set(self.previous));
    }
}

/// Whether this thread's CPU ops are forced onto the portable path.
pub(crate) fn forced() -> bool {
    FORCED.with(|f| f.get())
}

/// Whether an op on `x` takes the portable path.
pub(crate) fn wanted(x: &Tensor) -> bool {
    !x.device().is_cpu() || forced()
}

/// Pads dims 2 and 3 with `value`: `top`, `bottom`, `left`, `right` rows and columns; a
/// negative amount crops instead.
pub(crate) fn pad2(x: &Tensor, top: isize, bottom: isize, left: isize, right: isize, value: f32) -> Result<Tensor> {
    let mut x = x.clone();
    for (dim, before, after) in [(2, top, bottom), (3, left, right)] {
        let len = x.dim(dim)? as isize;
        let (b, a) = (before.max(0) as usize, after.max(0) as usize);
        let start = (-before).max(0) as usize;
        let keep = (len - (-before).max(0) - (-after).max(0)).max(0) as usize;
        if start > 0 || keep < len as usize {
            x = x.narrow(dim, start, keep)?;
        }
        if b > 0 || a > 0 {
            if value == 0.0 {
                x = x.pad_with_zeros(dim, b, a)?;
            } else {
                let mut shape = x.dims().to_vec();
                let mut parts = Vec::new();
                if b > 0 {
                    shape[dim] = b;
                    parts.push(Tensor::full(value, shape.as_slice(), x.device())?.to_dtype(x.dtype())?);
                }
                parts.push(x.clone());
                if a > 0 {
                    shape[dim] = a;
                    parts.push(Tensor::full(value, shape.as_slice(), x.device())?.to_dtype(x.dtype())?);
                }
                x = Tensor::cat(&parts, dim)?;
            }
        }
    }
    Ok(x)
}

/// Spreads `[n, c, h, w]` onto a grid `s` times finer: `[n, c, (h-1)*sy+1, (w-1)*sx+1]` with the
/// values at multiples of the strides and zeros between (the adjoint of striding).
pub(crate) fn dilate(x: &Tensor, sy: usize, sx: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let mut x = x.clone();
    if sy > 1 {
        x = x.unsqueeze(3)?.pad_with_zeros(3, 0, sy - 1)?.reshape((n, c, h * sy, w))?.narrow(2, 0, (h - 1) * sy + 1)?;
    }
    let rows = x.dim(2)?;
    if sx > 1 {
        x = x.unsqueeze(4)?.pad_with_zeros(4, 0, sx - 1)?.reshape((n, c, rows, w * sx))?.narrow(
            3,
            0,
            (w - 1) * sx + 1,
        )?;
    }
    Ok(x)
}

/// Every `s`-th row and column from the start, `out` of each (the inverse of [`dilate`]).
pub(crate) fn subsample(x: &Tensor, sy: usize, sx: usize, oh: usize, ow: usize) -> Result<Tensor> {
    let (n, c, _, _) = x.dims4()?;
    let x = x.narrow(2, 0, ((oh - 1) * sy + 1).min(x.dim(2)?))?.narrow(3, 0, ((ow - 1) * sx + 1).min(x.dim(3)?))?;
    let x = pad2(&x, 0, (oh * sy - x.dim(2)?) as isize, 0, (ow * sx - x.dim(3)?) as isize, 0.0)?;
    x.reshape((n, c, oh, sy, ow, sx))?.narrow(3, 0, 1)?.narrow(5, 0, 1)?.reshape((n, c, oh, ow))
}

/// A depthwise correlation of the padded `[n, c, hp, wp]` input with one `[1, c, 1, 1]` weight
/// per kernel tap, at `stride`, to `out` = (oh, ow): a sum of shifted, scaled copies. candle's
/// grouped conv2d runs one convolution per group (a kernel launch per channel on a GPU); this
/// is two elementwise ops per tap whatever the channel count.
pub(crate) fn depthwise(
    xp: &Tensor,
    taps: &[Tensor],
    k: (usize, usize),
    stride: usize,
    out: (usize, usize),
) -> Result<Tensor> {
    let (kh, kw) = k;
    let (oh, ow) = out;
    let (_, _, hp, wp) = xp.dims4()?;
    // The input split into stride x stride phases once: tap (ky, kx) reads phase
    // (ky % s, kx % s) from row ky / s, column kx / s.
    let mut phases = Vec::with_capacity(stride * stride);
    for a in 0..stride {
        for b in 0..stride {
            if stride == 1 {
                phases.push(xp.clone());
            } else {
                let ph = (hp - a).div_ceil(stride);
                let pw = (wp - b).div_ceil(stride);
                let shifted = xp.narrow(2, a, hp - a)?.narrow(3, b, wp - b)?;
                phases.push(subsample(&shifted, stride, stride, ph, pw)?);
            }
        }
    }
    let mut acc: Option<Tensor> = None;
    for ky in 0..kh {
        for kx in 0..kw {
            let phase = &phases[(ky % stride) * stride + kx % stride];
            let win = phase.narrow(2, ky / stride, oh)?.narrow(3, kx / stride, ow)?;
            let term = win.broadcast_mul(&taps[ky * kw + kx])?;
            acc = Some(match acc {
                None => term,
                Some(a) => (a + term)?,
            });
        }
    }
    acc.ok_or_else(|| candle_core::Error::Msg("depthwise: empty kernel".into()))
}

/// `y[p] = rows · x[p] · colsᵀ` for every plane `p` of `[n, c, h, w]`, where `rows` is
/// `[out_h, h]` and `cols` is `[out_w, w]`, made row-major on the host by `rows(len, out_len)`
/// and `cols(...)` the first time and then kept on the device under `name` (`ops::host`).
pub(crate) fn separable(
    x: &Tensor,
    name: &str,
    matrix: impl Fn(usize, usize) -> Vec<f32>,
    out_h: usize,
    out_w: usize,
) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let dev = x.device();
    let ry = super::host::constant(&format!("{name} {h}->{out_h}"), &[out_h, h], dev, || matrix(h, out_h))?;
    let rxt = super::host::constant(&format!("{name} {w}->{out_w} transposed"), &[w, out_w], dev, || {
        let m = matrix(w, out_w);
        let mut t = vec![0.0f32; m.len()];
        for o in 0..out_w {
            for i in 0..w {
                t[i * out_w + o] = m[o * w + i];
            }
        }
        t
    })?;
    let planes = x.contiguous()?.reshape((n * c, h, w))?;
    let t = planes.broadcast_matmul(&rxt)?; // [p, h, out_w]
    let y = ry.broadcast_left(n * c)?.contiguous()?.matmul(&t)?; // [p, out_h, out_w]
    y.reshape((n, c, out_h, out_w))
}

/// The padding (top, bottom, left, right) that makes an `h x w` input exactly as large as
/// `out` windows of `kernel` at `stride` need, with `before` (rows, cols) padded first; bottom
/// and right come out negative when trailing rows or columns are never read.
pub(crate) fn exact_padding(
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
    kernel: (usize, usize),
    stride: (usize, usize),
    before: (usize, usize),
) -> (isize, isize, isize, isize) {
    let need_h = ((oh - 1) * stride.0 + kernel.0) as isize;
    let need_w = ((ow - 1) * stride.1 + kernel.1) as isize;
    let (t, l) = (before.0 as isize, before.1 as isize);
    (t, need_h - h as isize - t, l, need_w - w as isize - l)
}

/// `1.0` where `mask` holds, `0.0` elsewhere.
pub(crate) fn as_f32(mask: &Tensor) -> Result<Tensor> {
    mask.to_dtype(DType::F32)
}

#[cfg(test)]
mod tests {
    //! The portable path against the CPU kernels, op by op, on odd sizes.
    use super::*;
    use crate::ops::{Activation, Conv2d, ConvSpec, Padding, Pool2d, gaussian_blur, resize_bilinear};
    use candle_core::Device;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn random(rng: &mut StdRng, shape: &[usize], scale: f32) -> Tensor {
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-scale..scale)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Runs `f` on the CPU kernels and on the portable path; the results must agree within
    /// 1e-5 of the largest value.
    fn both(what: &str, f: &dyn Fn() -> Tensor) {
        both_within(what, 1e-5, f)
    }

    /// As [`both`], within `rel` of the largest value.
    fn both_within(what: &str, rel: f32, f: &dyn Fn() -> Tensor) {
        let native = f();
        // The portable path with its fused ops (as a GPU runs it) and composed from candle's
        // ops alone (DEEPDREAM_FUSED=0).
        for fused in [true, false] {
            let portable = {
                let _portable = PathGuard::new(true);
                crate::ops::fused::with(fused, f)
            };
            assert_eq!(native.dims(), portable.dims(), "{what}: shapes");
            let scale = native.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1e-6);
            let diff = (&native - &portable).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff <= rel * scale.max(1.0), "{what} (fused {fused}): differ by {diff} (scale {scale})");
        }
    }

    fn conv_case(rng: &mut StdRng, shape: [usize; 4], co: usize, k: (usize, usize), spec: ConvSpec) {
        let cig = shape[1] / spec.groups;
        let w = random(rng, &[co, cig, k.0, k.1], 0.5);
        let b = random(rng, &[co], 1.0);
        let conv = Conv2d::new(&w, Some(&b), spec).unwrap();
        let x = random(rng, &shape, 2.0);
        let what = format!("conv {shape:?} -> {co}, {k:?}, {spec:?}");
        // 1e-4: on AVX2 the CPU's 3x3 layers of 32 channels or more take Winograd's F(4x4, 3x3)
        // both ways (this test's 32 -> 32 case), whose rounding is 7.5-10 times the direct
        // convolution's (`winograd.rs`); the same bound for every conv case, for simplicity.
        both_within(&format!("{what} forward"), 1e-4, &|| conv.forward(&x).unwrap());
        let y = conv.forward(&x).unwrap();
        let gy = random(rng, y.dims(), 1.0);
        both_within(&format!("{what} input gradient"), 1e-4, &|| conv.input_grad(&gy, &y, x.dims()).unwrap());
    }

    #[test]
    fn conv_agrees_with_the_cpu_kernels() {
        let mut rng = StdRng::seed_from_u64(3);
        for act in [Activation::Identity, Activation::Relu, Activation::Relu6] {
            for stride in [1, 2] {
                let spec = |padding, groups| ConvSpec { stride: (stride, stride), padding, groups, activation: act };
                conv_case(&mut rng, [2, 3, 9, 14], 5, (3, 3), spec(Padding::symmetric(1, 1), 1));
                conv_case(&mut rng, [1, 3, 10, 7], 4, (3, 3), spec(Padding::symmetric(0, 0), 1));
                conv_case(&mut rng, [1, 4, 11, 8], 3, (5, 3), spec(Padding::Same, 1));
                conv_case(
                    &mut rng,
                    [1, 2, 7, 6],
                    3,
                    (1, 7),
                    spec(Padding::Explicit { top: 0, bottom: 3, left: 3, right: 0 }, 1),
                );
                conv_case(&mut rng, [1, 6, 13, 10], 6, (3, 3), spec(Padding::Same, 6));
                conv_case(&mut rng, [1, 6, 9, 12], 12, (5, 5), spec(Padding::Same, 6));
                // Rows and columns narrower than the kernel (a tiny octave): no tap may index
                // past the row it reads.
                conv_case(&mut rng, [1, 6, 1, 2], 6, (5, 5), spec(Padding::Same, 6));
                conv_case(&mut rng, [1, 4, 2, 1], 4, (3, 3), spec(Padding::Same, 4));
                conv_case(&mut rng, [1, 4, 7, 5], 6, (3, 2), spec(Padding::symmetric(1, 0), 2));
                conv_case(&mut rng, [1, 6, 5, 9], 7, (1, 1), spec(Padding::symmetric(0, 0), 1));
                // Large enough that the CPU kernels gather and multiply in several bands of
                // output rows (forward and stride-1 input gradient).
                conv_case(&mut rng, [1, 32, 200, 100], 32, (3, 3), spec(Padding::Same, 1));
            }
        }
    }

    #[test]
    fn pools_agree_with_the_cpu_kernels() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut pools = Vec::new();
        for (k, s, p) in [(3, 2, 0), (3, 1, 1), (2, 2, 0), (3, 2, 1), (5, 3, 2)] {
            for ceil in [false, true] {
                pools.push(Pool2d::max(k, s, p, ceil));
                pools.push(Pool2d::avg(k, s, p, ceil, true));
                pools.push(Pool2d::avg(k, s, p, ceil, false));
            }
        }
        for pool in pools {
            // The last two are narrower than some windows (a tiny octave).
            let shapes = [[1, 2, 9, 7], [2, 3, 14, 11], [1, 3, 10, 13], [1, 2, 5, 1], [1, 2, 2, 6]];
            for (i, shape) in shapes.into_iter().enumerate() {
                // The last input is whole numbers: windows with tied maxima.
                let x = random(&mut rng, &shape, 2.0);
                let x = if i == 2 { x.round().unwrap() } else { x };
                if pool.forward(&x).is_err() {
                    // Smaller than the window even with padding: both paths refuse it.
                    let _portable = PathGuard::new(true);
                    assert!(pool.forward(&x).is_err(), "{pool:?} {shape:?}: only the CPU kernel refuses");
                    continue;
                }
                both(&format!("{pool:?} {shape:?} forward"), &|| pool.forward(&x).unwrap());
                let gy = random(&mut rng, pool.forward(&x).unwrap().dims(), 1.0);
                both(&format!("{pool:?} {shape:?} input gradient"), &|| pool.input_grad(&gy, &x).unwrap());
            }
        }
    }

    #[test]
    fn resize_and_blur_agree_with_the_cpu_kernels() {
        let mut rng = StdRng::seed_from_u64(9);
        let x = random(&mut rng, &[1, 3, 13, 29], 2.0);
        for (h, w) in [(9, 41), (26, 58), (5, 5), (13, 30)] {
            both(&format!("resize to {h}x{w}"), &|| resize_bilinear(&x, h, w).unwrap());
        }
        for sigma in [0.5, 1.0, 2.5] {
            both(&format!("blur sigma {sigma}"), &|| gaussian_blur(&x, sigma).unwrap());
        }
    }
}
