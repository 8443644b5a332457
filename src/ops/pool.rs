//! Max and average pooling with padding and ceil_mode, each with its own backward pass.
//!
//! Candle's pooling has no padding or ceil_mode, a backward only when kernel == stride, a max-pool
//! gradient of 1/(k*k) instead of 1, and an avg-pool gradient that leaks into leftover rows.
//! Output sizes and window clipping follow PyTorch exactly.

use super::{cpu_slice, portable};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, bail};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    Max,
    /// Average; `count_include_pad` counts padded zeros in the divisor, as PyTorch's default.
    Avg {
        count_include_pad: bool,
    },
}

/// A pooling window: kernel, stride and symmetric padding as (rows, cols).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2d {
    pub kind: PoolKind,
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub ceil_mode: bool,
}

/// PyTorch's `pooling_output_shape`.
fn out_len(len: usize, k: usize, s: usize, pad: usize, ceil: bool) -> Result<usize> {
    let span = len as isize + 2 * pad as isize - k as isize;
    if span < 0 {
        return Err(super::too_small(format_args!("pool: input of {len} is smaller than the kernel {k}")));
    }
    let span = span as usize;
    let mut out = if ceil { span.div_ceil(s) } else { span / s } + 1;
    // The last window must start inside the input or the left padding.
    if ceil && (out - 1) * s >= len + pad {
        out -= 1;
    }
    Ok(out)
}

/// One axis of the pooling windows, clipped to the input: positions `lo..hi` and this axis's
/// factor of the divisor (windows are rectangles, so the divisor is a product of the two).
#[derive(Clone, Copy)]
struct Span {
    lo: usize,
    hi: usize,
    divisor: f32,
}

impl Pool2d {
    pub fn max(kernel: usize, stride: usize, padding: usize, ceil_mode: bool) -> Self {
        Pool2d {
            kind: PoolKind::Max,
            kernel: (kernel, kernel),
            stride: (stride, stride),
            padding: (padding, padding),
            ceil_mode,
        }
    }

    pub fn avg(kernel: usize, stride: usize, padding: usize, ceil_mode: bool, count_include_pad: bool) -> Self {
        Pool2d {
            kind: PoolKind::Avg { count_include_pad },
            kernel: (kernel, kernel),
            stride: (stride, stride),
            padding: (padding, padding),
            ceil_mode,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if portable::wanted(x) {
            return self.forward_portable(x);
        }
        x.contiguous()?.apply_op1(*self)
    }

    fn exact_padding(&self, h: usize, w: usize, oh: usize, ow: usize) -> (isize, isize, isize, isize) {
        portable::exact_padding((h, w), (oh, ow), self.kernel, self.stride, self.padding)
    }

    /// Each output's divisor, `[1, 1, oh, ow]` on `device`.
    fn divisors(&self, h: usize, w: usize, device: &candle_core::Device) -> Result<Tensor> {
        let (rows, cols) = self.all_spans(h, w)?;
        let name = format!("pool divisors {self:?} {h}x{w}");
        super::host::constant(&name, &[1, 1, rows.len(), cols.len()], device, || {
            rows.iter().flat_map(|r| cols.iter().map(move |c| r.divisor * c.divisor)).collect()
        })
    }

    /// The forward from candle's ops (any device): max pooling of the input padded with -inf,
    /// average pooling of the zero-padded input rescaled to each window's divisor.
    fn forward_portable(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let (oh, ow) = self.out_dims(h, w)?;
        let (t, b, l, r) = self.exact_padding(h, w, oh, ow);
        match self.kind {
            PoolKind::Max => {
                portable::pad2(x, t, b, l, r, f32::NEG_INFINITY)?.max_pool2d_with_stride(self.kernel, self.stride)
            }
            PoolKind::Avg { .. } => {
                let mean = portable::pad2(x, t, b, l, r, 0.0)?.avg_pool2d_with_stride(self.kernel, self.stride)?;
                let k = (self.kernel.0 * self.kernel.1) as f64;
                mean.broadcast_mul(&(self.divisors(h, w, x.device())?.recip()? * k)?)
            }
        }
    }

    /// The input gradient from candle's ops (any device). Average: each output's share spread
    /// over its window (a correlation of the spread gradient with a box of ones). Max: for each
    /// kernel offset in PyTorch's scan order, the outputs whose maximum sits there and was not
    /// claimed by an earlier offset send their gradient to it.
    fn input_grad_portable(&self, gy: &Tensor, x: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let (oh, ow) = self.out_dims(h, w)?;
        let (t, b, l, r) = self.exact_padding(h, w, oh, ow);
        let (kh, kw) = self.kernel;
        let (sh, sw) = self.stride;
        if self.kind == PoolKind::Max && super::fused::enabled() {
            let g = super::fused::MaxPool { n, c, h, w, oh, ow, kh, kw, sh, sw, pt: t, pl: l };
            return super::fused::maxpool_bwd(gy, x, g);
        }
        let (hp, wp) = ((oh - 1) * sh + kh, (ow - 1) * sw + kw);
        let padded_grad = match self.kind {
            PoolKind::Avg { .. } => {
                let share = gy.broadcast_div(&self.divisors(h, w, gy.device())?)?;
                let spread =
                    portable::dilate(&share, sh, sw)?.reshape((n * c, 1, (oh - 1) * sh + 1, (ow - 1) * sw + 1))?;
                let ones = Tensor::ones((1, 1, kh, kw), gy.dtype(), gy.device())?;
                // A correlation with the box, output hp x wp: the spread gradient padded by
                // kernel - 1 before, and to hp + kernel - 1 in all.
                let (bottom, right) = (hp as isize - spread.dim(2)? as isize, wp as isize - spread.dim(3)? as isize);
                portable::pad2(&spread, kh as isize - 1, bottom, kw as isize - 1, right, 0.0)?
                    .conv2d(&ones, 0, 1, 1, 1)?
                    .reshape((n, c, hp, wp))?
            }
            PoolKind::Max => {
                let xp = portable::pad2(x, t, b, l, r, f32::NEG_INFINITY)?;
                let out = xp.max_pool2d_with_stride(self.kernel, self.stride)?;
                let mut unclaimed = Tensor::ones((n, c, oh, ow), DType::F32, gy.device())?;
                let mut acc: Option<Tensor> = None;
                for ky in 0..kh {
                    for kx in 0..kw {
                        let cand =
                            portable::subsample(&xp.narrow(2, ky, hp - ky)?.narrow(3, kx, wp - kx)?, sh, sw, oh, ow)?;
                        let here = (portable::as_f32(&cand.eq(&out)?)? * &unclaimed)?;
                        unclaimed = (&unclaimed - &here)?;
                        let spread = portable::dilate(&(gy * here)?, sh, sw)?;
                        let placed = portable::pad2(
                            &spread,
                            ky as isize,
                            (hp - ky - spread.dim(2)?) as isize,
                            kx as isize,
                            (wp - kx - spread.dim(3)?) as isize,
                            0.0,
                        )?;
                        acc = Some(match acc {
                            Some(a) => (a + placed)?,
                            None => placed,
                        });
                    }
                }
                acc.expect("a kernel has at least one offset")
            }
        };
        // Back from the padded grid to the input's.
        portable::pad2(&padded_grad, -t, -b, -l, -r, 0.0)
    }

    /// The input gradient for output gradient `gy` and forward input `x` (what the backward
    /// pass of `forward` computes).
    pub fn input_grad(&self, gy: &Tensor, x: &Tensor) -> Result<Tensor> {
        if portable::wanted(gy) {
            return self.input_grad_portable(gy, x);
        }
        gy.contiguous()?.apply_op2_no_bwd(&x.contiguous()?, &PoolInputGrad(*self))
    }

    fn out_dims(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        if self.kernel.0 == 0 || self.kernel.1 == 0 || self.stride.0 == 0 || self.stride.1 == 0 {
            bail!("pool: kernel and stride must be positive");
        }
        if 2 * self.padding.0 > self.kernel.0 || 2 * self.padding.1 > self.kernel.1 {
            bail!("pool: padding must be at most half the kernel");
        }
        if h == 0 || w == 0 {
            return Err(super::too_small(format_args!("pool: an empty input of {h}x{w}")));
        }
        Ok((
            out_len(h, self.kernel.0, self.stride.0, self.padding.0, self.ceil_mode)?,
            out_len(w, self.kernel.1, self.stride.1, self.padding.1, self.ceil_mode)?,
        ))
    }

    /// The windows along one axis: `k` kernel, `st` stride, `pad` padding, `len` input, `out` outputs.
    fn spans(&self, len: usize, out: usize, k: usize, st: usize, pad: usize) -> Vec<Span> {
        (0..out)
            .map(|o| {
                let start = (o * st) as isize - pad as isize;
                let end = (start + k as isize).min((len + pad) as isize);
                let lo = start.max(0) as usize;
                let hi = (end.min(len as isize).max(0) as usize).max(lo);
                let divisor = match self.kind {
                    PoolKind::Avg { count_include_pad: true } => (end - start) as f32,
                    _ => (hi - lo) as f32,
                };
                Span { lo, hi, divisor }
            })
            .collect()
    }

    /// Row and column spans for an `h x w` input.
    fn all_spans(&self, h: usize, w: usize) -> Result<(Vec<Span>, Vec<Span>)> {
        let (oh, ow) = self.out_dims(h, w)?;
        // The max pool's scan keeps positions in a plane as u32.
        if self.kind == PoolKind::Max && h.checked_mul(w).is_none_or(|n| n >= u32::MAX as usize) {
            bail!("pool: a plane of {h}x{w} values is too large");
        }
        Ok((
            self.spans(h, oh, self.kernel.0, self.stride.0, self.padding.0),
            self.spans(w, ow, self.kernel.1, self.stride.1, self.padding.1),
        ))
    }
}

/// PyTorch's max with NaN propagation (a NaN anywhere in a window makes the window's max NaN).
/// (The max pool's forward on CPUs without AVX-512, with `row_max` and `column_max`: there the
/// scan of [`max_scan_plane`] goes window by window.)
#[inline(always)]
fn nanmax(a: f32, b: f32) -> f32 {
    if b > a || b.is_nan() { b } else { a }
}

/// `dst[i] = nanmax(dst[i], src[i])` for the entries both have: on AVX2 in explicit vectors
/// with plain stores. Written as a loop, the compiler saw that an entry where `src` loses keeps
/// its value and vectorised it as masked stores of the winners (`vmaskmovps`, microcoded on
/// AMD's Zen 3: 3% of an InceptionV3 dream there).
#[inline(always)]
fn max_into(dst: &mut [f32], src: &[f32]) {
    let n = dst.len().min(src.len());
    #[cfg(target_arch = "x86_64")]
    if super::igemm::available() {
        // SAFETY: the CPU has AVX2 (AVX-512F or AVX2 with FMA, `available`).
        unsafe { max_into_avx2(&mut dst[..n], &src[..n]) };
        return;
    }
    dst[..n].iter_mut().zip(&src[..n]).for_each(|(r, &v)| *r = nanmax(*r, v));
}

/// [`max_into`] 8 at a time (equal lengths), the same choice per entry as [`nanmax`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn max_into_avx2(dst: &mut [f32], src: &[f32]) {
    use std::arch::x86_64::*;
    assert_eq!(dst.len(), src.len());
    let (d, s) = (dst.as_mut_ptr(), src.as_ptr());
    for i in (0..dst.len()).step_by(8) {
        let k = (dst.len() - i).min(8);
        // SAFETY: entries i..i + k of both (the loop's bound); the last few by a masked load
        // and a plain partial store (`winograd::store8`), not a loop the compiler would turn
        // into masked stores again.
        unsafe {
            let (a, b) = (super::winograd::load8(d.add(i), k), super::winograd::load8(s.add(i), k));
            // `vmaxps(b, a)` is `b > a ? b : a`, and `a` where either is NaN; then `b` where it
            // is NaN. (A blend of `a` and `b` by `b > a || b is NaN`, the same choice, became a
            // masked store of `b` again: the compiler saw `a` was the memory stored to.)
            let m = _mm256_max_ps(b, a);
            super::winograd::store8(d.add(i), _mm256_blendv_ps(m, b, _mm256_cmp_ps::<_CMP_UNORD_Q>(b, b)), k);
        }
    }
}

/// Along each row of `plane` (`h x w`), the maximum over each column span, into `val`
/// (`h x ow`). Windows of the full kernel width are read off a running max at stride 1,
/// which vectorises; clipped windows at the edges are scanned directly.
#[inline(always)]
fn row_max(plane: &[f32], w: usize, kw: usize, cols: &[Span], val: &mut [f32]) {
    let ow = cols.len();
    let mut run = vec![f32::NEG_INFINITY; w];
    for (row, vrow) in plane.chunks_exact(w).zip(val.chunks_exact_mut(ow)) {
        // run[x] = max(row[x..x + kw]) for every x with a full window.
        let full = (w + 1).saturating_sub(kw);
        run[..full].copy_from_slice(&row[..full]);
        // A row narrower than the window has no full window (and `row[j..]` would run past it).
        for j in (1..kw).filter(|_| full > 0) {
            max_into(&mut run[..full], &row[j..j + full]);
        }
        for (v, c) in vrow.iter_mut().zip(cols) {
            *v = if c.hi - c.lo == kw {
                run[c.lo]
            } else {
                row[c.lo..c.hi].iter().fold(f32::NEG_INFINITY, |m, &x| nanmax(m, x))
            };
        }
    }
}

/// Column maxima of the row maxima: one output row per row span, whole rows at a time.
#[inline(always)]
fn column_max(val: &[f32], ow: usize, rows: &[Span], out: &mut [f32]) {
    for (r, orow) in rows.iter().zip(out.chunks_exact_mut(ow)) {
        orow.fill(f32::NEG_INFINITY);
        for vrow in val[r.lo * ow..r.hi * ow].chunks_exact(ow) {
            max_into(orow, vrow);
        }
    }
}

/// `$name(args)`: the `#[inline(always)]` plane function `$f`, run from a copy compiled for
/// AVX-512 where the CPU has it (else AVX2). (`ops::wide` with a closure left these bodies out of line,
/// compiled for the baseline: sums 4 wide, a scalar division per output.)
macro_rules! wide_copy {
    ($name:ident => $f:ident($($arg:ident: $ty:ty),*)) => {
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($arg: $ty),*) {
                    $f($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    $f($($arg),*)
                }
                match super::igemm::isa() {
                    // SAFETY: the CPU has AVX-512F (checked at run time).
                    Some(super::igemm::Isa::Avx512) => return unsafe { avx512($($arg),*) },
                    // SAFETY: the CPU has AVX2 and FMA (checked at run time).
                    Some(super::igemm::Isa::Avx2) => return unsafe { avx2($($arg),*) },
                    None => {}
                }
            }
            $f($($arg),*)
        }
    };
}

wide_copy!(max_plane_wide => max_plane(p: &Pool2d, plane: &[f32], w: usize, rows: &[Span], cols: &[Span], val: &mut [f32], out: &mut [f32]));
wide_copy!(box_plane_wide => box_plane(p: &Pool2d, plane: &[f32], w: usize, dx: &[f32], s: &mut Scratch, out: &mut [f32]));
wide_copy!(box_grad_plane_wide => box_grad_plane(p: &Pool2d, go: &[f32], w: usize, d: &[f32], s: &mut Scratch, gplane: &mut [f32]));
wide_copy!(avg_plane_wide => avg_plane(p: &Pool2d, plane: &[f32], w: usize, rows: &[Span], cols: &[Span], out: &mut [f32]));
wide_copy!(avg_grad_plane_wide => avg_grad_plane(p: &Pool2d, go: &[f32], w: usize, rows: &[Span], cols: &[Span], gplane: &mut [f32]));

/// The max pool's forward on one plane: row maxima into `val`, then their column maxima.
#[inline(always)]
fn max_plane(p: &Pool2d, plane: &[f32], w: usize, rows: &[Span], cols: &[Span], val: &mut [f32], out: &mut [f32]) {
    row_max(plane, w, p.kernel.1, cols, val);
    column_max(val, cols.len(), rows, out);
}

/// The average pool's forward on one plane.
#[inline(always)]
fn avg_plane(p: &Pool2d, plane: &[f32], w: usize, rows: &[Span], cols: &[Span], out: &mut [f32]) {
    p.avg_plane(plane, w, rows, cols, out)
}

/// The average pool's input gradient on one plane.
#[inline(always)]
fn avg_grad_plane(p: &Pool2d, go: &[f32], w: usize, rows: &[Span], cols: &[Span], gplane: &mut [f32]) {
    p.avg_grad_plane(go, w, rows, cols, gplane)
}

impl Pool2d {
    /// Whether the column windows are those of a stride-1 pool: window `o` covers input columns
    /// `o - pl .. o - pl + kw` clipped to the row. Then every sum over them is a sum of shifted
    /// rows, which vectorises.
    fn shifted(&self, cols: &[Span], w: usize) -> bool {
        let (kw, pl) = (self.kernel.1, self.padding.1);
        self.stride.1 == 1
            && cols.iter().enumerate().all(|(o, c)| {
                let start = o as isize - pl as isize;
                (c.lo, c.hi)
                    == (start.max(0) as usize, ((start + kw as isize).min(w as isize).max(0) as usize).max(c.lo))
            })
    }

    /// One plane of the average pool: sums along rows, then sums of those along columns, whole
    /// rows at a time, each divided by its window's divisor.
    #[inline(always)]
    fn avg_plane(&self, plane: &[f32], w: usize, rows: &[Span], cols: &[Span], out: &mut [f32]) {
        let ow = cols.len();
        let mut sums = vec![0.0f32; plane.len() / w * ow];
        // The divisors in a row of their own: read out of the spans, the divisions did not
        // vectorise (a scalar division per output, 2% of an InceptionV3 step).
        let col_divisors: Vec<f32> = cols.iter().map(|c| c.divisor).collect();
        let shifted = self.shifted(cols, w);
        for (row, srow) in plane.chunks_exact(w).zip(sums.chunks_exact_mut(ow)) {
            if shifted {
                // Tap j of output o is input column o - pl + j: the taps in the same order as
                // the sum below (from -0.0, as `Iterator::sum`), one shifted row at a time.
                srow.fill(-0.0);
                for j in 0..self.kernel.1 {
                    let (o0, o1, x0) = tap_range(j, self.padding.1, w, ow);
                    srow[o0..o1].iter_mut().zip(&row[x0..]).for_each(|(s, v)| *s += v);
                }
                continue;
            }
            for (s, c) in srow.iter_mut().zip(cols) {
                *s = row[c.lo..c.hi].iter().sum();
            }
        }
        for (r, orow) in rows.iter().zip(out.chunks_exact_mut(ow)) {
            orow.fill(0.0);
            for srow in sums[r.lo * ow..r.hi * ow].chunks_exact(ow) {
                orow.iter_mut().zip(srow).for_each(|(o, s)| *o += s);
            }
            for (o, cd) in orow.iter_mut().zip(&col_divisors) {
                let d = r.divisor * cd;
                // Divided unconditionally, then selected: the loop vectorises.
                let q = *o / d;
                *o = if d > 0.0 { q } else { 0.0 };
            }
        }
    }

    /// One plane of the average pool's input gradient: the forward's two passes transposed,
    /// spread along columns, then along rows.
    #[inline(always)]
    fn avg_grad_plane(&self, go: &[f32], w: usize, rows: &[Span], cols: &[Span], gplane: &mut [f32]) {
        let ow = cols.len();
        let h = gplane.len() / w;
        let mut spread = vec![0.0f32; h * ow];
        let mut share = vec![0.0f32; ow];
        let col_divisors: Vec<f32> = cols.iter().map(|c| c.divisor).collect();
        for (r, grow) in rows.iter().zip(go.chunks_exact(ow)) {
            for ((s, cd), g) in share.iter_mut().zip(&col_divisors).zip(grow) {
                let d = r.divisor * cd;
                let q = g / d;
                *s = if d > 0.0 { q } else { 0.0 };
            }
            for srow in spread[r.lo * ow..r.hi * ow].chunks_exact_mut(ow) {
                srow.iter_mut().zip(&share).for_each(|(d, s)| *d += s);
            }
        }
        let shifted = self.shifted(cols, w);
        for (grow, srow) in gplane.chunks_exact_mut(w).zip(spread.chunks_exact(ow)) {
            if shifted {
                // Input column x takes outputs o = x + pl - j: taps from the last to the
                // first add them in the order of o, as the loop below.
                for j in (0..self.kernel.1).rev() {
                    let (o0, o1, x0) = tap_range(j, self.padding.1, w, ow);
                    grow[x0..x0 + (o1 - o0)].iter_mut().zip(&srow[o0..o1]).for_each(|(g, s)| *g += s);
                }
                continue;
            }
            for (c, &s) in cols.iter().zip(srow) {
                grow[c.lo..c.hi].iter_mut().for_each(|v| *v += s);
            }
        }
    }
}

/// For tap `j` of a stride-1 pool padded by `pl` (a row `w` wide, `ow` outputs): the outputs
/// `o0..o1` whose tap lies inside the row, and the input column `x0` of output `o0`'s tap.
#[inline(always)]
fn tap_range(j: usize, pl: usize, w: usize, ow: usize) -> (usize, usize, usize) {
    // Column o - pl + j in 0..w. No output's tap lies inside a row narrower than j - pl + 1:
    // then the range is empty, and starts at column 0 (so the callers' slices stay in bounds).
    let o0 = pl.saturating_sub(j).min(ow);
    let o1 = (w + pl).saturating_sub(j).min(ow).max(o0);
    if o1 == o0 {
        return (o0, o0, 0);
    }
    (o0, o1, o0 + j - pl.min(o0 + j))
}

/// Buffers of one task, kept from plane to plane.
#[derive(Default)]
struct Scratch {
    a: Vec<f32>,
    b: Vec<f32>,
    at: Vec<u32>,
}

/// `dst[i] = start + src[i] + src[i + step] + ... + src[i + (taps - 1) * step]`, added in that
/// order, over the whole of `dst`: one flat pass per tap.
#[inline(always)]
fn box_sum(dst: &mut [f32], src: &[f32], taps: usize, step: usize, start: f32) {
    assert!(taps > 0 && src.len() >= dst.len() + (taps - 1) * step, "pool: box sum past its source");
    dst.fill(start);
    for t in 0..taps {
        dst.iter_mut().zip(&src[t * step..]).for_each(|(d, s)| *d += s);
    }
}

/// `v[i] / d[i]`, or 0 where the divisor is not positive. Divided unconditionally, then
/// selected: the loop vectorises.
#[inline(always)]
fn divide(v: &mut [f32], d: &[f32]) {
    v.iter_mut().zip(d).for_each(|(o, &d)| {
        let q = *o / d;
        *o = if d > 0.0 { q } else { 0.0 };
    });
}

/// One plane of a stride-1 average pool (see [`Pool2d::box_route`]): the plane padded with -0.0
/// to `(h + 2 pt) x (w + 2 pl)`, its sums along rows over `kw` columns, their sums down `kh`
/// rows, each divided by `dx` (the divisors, `oh` rows as wide as the padded plane), the first
/// `ow` columns of each row out.
#[inline(always)]
fn box_plane(p: &Pool2d, plane: &[f32], w: usize, dx: &[f32], s: &mut Scratch, out: &mut [f32]) {
    let ((kh, kw), (pt, pl)) = (p.kernel, p.padding);
    let (h, wx) = (plane.len() / w, w + 2 * pl);
    let (hx, ow) = (h + 2 * pt, wx + 1 - kw);
    let oh = hx + 1 - kh;
    let (xp, sums) = (&mut s.a, &mut s.b);
    xp.clear();
    sums.clear();
    // kw - 1 more at the end: the last row's sums read past its width (columns dropped later).
    xp.resize(hx * wx + kw - 1, -0.0);
    for (row, xrow) in plane.chunks_exact(w).zip(xp[pt * wx..].chunks_exact_mut(wx)) {
        xrow[pl..pl + w].copy_from_slice(row);
    }
    // From -0.0 (as `Iterator::sum`) in the windows' order; a padded tap adds -0.0, which
    // changes nothing, so each sum is bit for bit the sum over its clipped window.
    sums.resize(hx * wx, 0.0);
    box_sum(sums, xp, kw, 1, -0.0);
    xp.truncate(oh * wx);
    box_sum(xp, sums, kh, wx, 0.0);
    divide(xp, dx);
    for (orow, xrow) in out.chunks_exact_mut(ow).zip(xp.chunks_exact(wx)) {
        orow.copy_from_slice(&xrow[..ow]);
    }
}

/// One plane of a stride-1 average pool's input gradient: the output gradient divided by `d`
/// (`oh x ow` divisors), padded with -0.0 to `(h + kh - 1) x (w + kw - 1)` (`kh - 1 - pt` rows
/// and `kw - 1 - pl` columns before), summed down `kh` rows and then along `kw` columns: each
/// input pixel's outputs in their order, as [`Pool2d::avg_grad_plane`] adds them.
#[inline(always)]
fn box_grad_plane(p: &Pool2d, go: &[f32], w: usize, d: &[f32], s: &mut Scratch, gplane: &mut [f32]) {
    let ((kh, kw), (pt, pl)) = (p.kernel, p.padding);
    let (h, wp) = (gplane.len() / w, w + kw - 1);
    let ow = w + 2 * pl + 1 - kw;
    let (share, spread) = (&mut s.a, &mut s.b);
    share.clear();
    share.resize((h + kh - 1) * wp, -0.0);
    spread.clear();
    spread.extend_from_slice(go);
    divide(spread, d);
    for (srow, q) in share[(kh - 1 - pt) * wp..].chunks_exact_mut(wp).zip(spread.chunks_exact(ow)) {
        srow[kw - 1 - pl..][..ow].copy_from_slice(q);
    }
    // kw - 1 more at the end, as in the forward; the sums start from 0.0 (the zeroed gradient).
    spread.clear();
    spread.resize(h * wp + kw - 1, -0.0);
    box_sum(&mut spread[..h * wp], share, kh, wp, 0.0);
    share.truncate(h * wp);
    box_sum(share, spread, kw, 1, 0.0);
    for (grow, srow) in gplane.chunks_exact_mut(w).zip(share.chunks_exact(wp)) {
        grow.copy_from_slice(&srow[..w]);
    }
}

impl Pool2d {
    /// Stride 1 both ways: then an average pool and its gradient are box sums over a plane
    /// padded with -0.0, flat passes over whole planes (a padded tap adds -0.0, which leaves
    /// every float as it is). Row by row, the rows of InceptionV3's 30x30 and 61x61 planes were
    /// too short to vectorise well: its average pools took 2.5% of a 512x512 step.
    fn box_route(&self) -> bool {
        self.stride == (1, 1)
    }

    /// Each output's divisor, `oh` rows `row_len` wide (1 in the columns past `ow`).
    fn divisor_plane(&self, rows: &[Span], cols: &[Span], row_len: usize) -> Vec<f32> {
        let mut d = vec![1.0f32; rows.len() * row_len];
        for (r, drow) in rows.iter().zip(d.chunks_exact_mut(row_len)) {
            for (c, v) in cols.iter().zip(drow.iter_mut()) {
                *v = r.divisor * c.divisor;
            }
        }
        d
    }
}

/// The max pool on one plane under PyTorch's scan (row-major from each window's first element,
/// taking any larger value or any NaN: ties go to the first, NaNs to the last): each window's
/// maximum into `val` and its index in the plane into `at` (`u32::MAX` for an empty window).
/// The windows that lie whole inside the plane go 16 at a time ([`scan_run`]), each tap one
/// vector of the plane's pixels: read straight at stride 1, split into even and odd lanes in
/// registers at stride 2, and above that read off the plane split by column phase (phase `q`
/// holds columns `q, q + sw, ...`, where a tap's pixels of neighbouring windows are
/// neighbours). The windows clipped at the edges go one by one.
///
/// `isa`: the kernel the whole windows take ([`scan_run`] on AVX-512, [`scan_run_avx2`] 8 at a
/// time on AVX2), or none (one by one, as the edges).
#[allow(clippy::too_many_arguments)]
fn max_scan_plane(
    p: &Pool2d,
    plane: &[f32],
    w: usize,
    rows: &[Span],
    cols: &[Span],
    s: &mut Scratch,
    val: &mut [f32],
    isa: Option<super::igemm::Isa>,
) {
    let ow = cols.len();
    let ((kh, kw), sw, pl) = (p.kernel, p.stride.1, p.padding.1);
    let h = plane.len() / w;
    let ox0 = cols.iter().position(|c| c.hi - c.lo == kw).unwrap_or(ow);
    let ox1 = ox0 + cols[ox0..].iter().take_while(|c| c.hi - c.lo == kw).count();
    let vector = isa.is_some() && plane.len() <= i32::MAX as usize && ox1 > ox0;
    let at = &mut s.at;
    at.resize(rows.len() * ow, 0);
    // Tap column kx of window ox reads column ox * sw + kx - pl: phase (kx - pl) mod sw, entry
    // ox + (kx - pl) div sw. Per kx: where entry 0 of that phase's row 0 sits, and the
    // phase's row length.
    let mut taps = Vec::with_capacity(kw);
    // At stride 2 the kernel splits the phases itself, in registers.
    let step = if sw == 2 { 2 } else { 1 };
    let src: &[f32] = if vector && sw > 2 {
        let widths: Vec<usize> = (0..sw).map(|q| w.saturating_sub(q).div_ceil(sw)).collect();
        let starts: Vec<usize> = widths.iter().scan(0, |acc, wq| Some(std::mem::replace(acc, *acc + h * wq))).collect();
        let phases = &mut s.a;
        phases.resize(h * w, 0.0);
        for q in 0..sw.min(w) {
            let dst = &mut phases[starts[q]..][..h * widths[q]];
            for (drow, row) in dst.chunks_exact_mut(widths[q]).zip(plane.chunks_exact(w)) {
                super::conv::phase_row(drow, row, sw, q, 0);
            }
        }
        for kx in 0..kw {
            let d = kx as isize - pl as isize;
            let q = d.rem_euclid(sw as isize) as usize;
            taps.push((starts[q] as isize + d.div_euclid(sw as isize), widths[q]));
        }
        phases
    } else {
        taps.extend((0..kw).map(|kx| (kx as isize - pl as isize, w)));
        plane
    };
    for (oy, r) in rows.iter().enumerate() {
        let (vrow, arow) = (&mut val[oy * ow..][..ow], &mut at[oy * ow..][..ow]);
        let mut ox = 0;
        while ox < ow {
            if vector && ox == ox0 && r.hi - r.lo == kh {
                // SAFETY: the CPU runs `isa` (the caller's); the windows ox0..ox1 lie whole
                // inside the plane, so every tap's entries of them lie inside its phase row
                // (checked again in `scan_run`).
                unsafe {
                    match isa {
                        Some(super::igemm::Isa::Avx512) => {
                            scan_run(src, &taps, step, r.lo, w, kh, sw, pl, ox0..ox1, vrow, arow)
                        }
                        _ => scan_run_avx2(src, &taps, step, r.lo, w, kh, sw, pl, ox0..ox1, vrow, arow),
                    }
                };
                ox = ox1;
                continue;
            }
            let c = cols[ox];
            let (mut best, mut here) = (f32::NEG_INFINITY, u32::MAX);
            if r.lo < r.hi && c.lo < c.hi {
                here = (r.lo * w + c.lo) as u32;
                for y in r.lo..r.hi {
                    for (x, &v) in plane[y * w + c.lo..y * w + c.hi].iter().enumerate() {
                        if v > best || v.is_nan() {
                            (best, here) = (v, (y * w + c.lo + x) as u32);
                        }
                    }
                }
            }
            (vrow[ox], arow[ox]) = (best, here);
            ox += 1;
        }
    }
}

/// PyTorch's scan over the whole windows `oxs` of the output row whose windows start at input
/// row `y0`, 16 at a time: tap `(ky, kx)` of window `ox` reads `src[taps[kx].0 + (y0 + ky) *
/// taps[kx].1 + ox * step]`, the plane's pixel `(y0 + ky) * w + ox * sw + kx - pl`. At `step`
/// 2, each tap loads 32 neighbours and keeps every other one.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn scan_run(
    src: &[f32],
    taps: &[(isize, usize)],
    step: usize,
    y0: usize,
    w: usize,
    kh: usize,
    sw: usize,
    pl: usize,
    oxs: std::ops::Range<usize>,
    val: &mut [f32],
    at: &mut [u32],
) {
    use std::arch::x86_64::*;
    assert!(oxs.end <= val.len() && oxs.end <= at.len());
    let lane = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(sw as i32),
    );
    assert!(step == 1 || step == 2);
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    for ox in oxs.clone().step_by(16) {
        let n = (oxs.end - ox).min(16);
        let k = ((1u32 << n) - 1) as __mmask16;
        // The source entries the windows read: n of them, or every other of 2n - 1.
        let span = step * (n - 1) + 1;
        let (k0, k1) =
            (((1u32 << span.min(16)) - 1) as __mmask16, ((1u32 << span.saturating_sub(16)) - 1) as __mmask16);
        let first = _mm512_add_epi32(_mm512_set1_epi32((y0 * w + ox * sw - pl) as i32), lane);
        let mut best = _mm512_set1_ps(f32::NEG_INFINITY);
        let mut here = first;
        for ky in 0..kh {
            for (kx, &(start, len)) in taps.iter().enumerate() {
                let from = start + ((y0 + ky) * len + ox * step) as isize;
                assert!(from >= 0 && from as usize + span <= src.len(), "pool: a window past its plane");
                // SAFETY: the lanes in `k0` and `k1` lie inside `src` (asserted above).
                let v = unsafe {
                    let p = src.as_ptr().add(from as usize);
                    if step == 1 {
                        _mm512_maskz_loadu_ps(k0, p)
                    } else {
                        let (a, b) = (_mm512_maskz_loadu_ps(k0, p), _mm512_maskz_loadu_ps(k1, p.wrapping_add(16)));
                        _mm512_permutex2var_ps(a, even, b)
                    }
                };
                let take = k & (_mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, best) | _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v));
                best = _mm512_mask_mov_ps(best, take, v);
                here =
                    _mm512_mask_mov_epi32(here, take, _mm512_add_epi32(first, _mm512_set1_epi32((ky * w + kx) as i32)));
            }
        }
        // SAFETY: windows ox..ox + n are inside both rows (asserted above).
        unsafe {
            _mm512_mask_storeu_ps(val.as_mut_ptr().add(ox), k, best);
            _mm512_mask_storeu_epi32(at.as_mut_ptr().add(ox).cast(), k, here);
        }
    }
}

/// [`scan_run`] on AVX2, 8 windows at a time: masked loads by lane masks, the stride-2 split by
/// a shuffle of two vectors and a permute of their 64-bit halves.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn scan_run_avx2(
    src: &[f32],
    taps: &[(isize, usize)],
    step: usize,
    y0: usize,
    w: usize,
    kh: usize,
    sw: usize,
    pl: usize,
    oxs: std::ops::Range<usize>,
    val: &mut [f32],
    at: &mut [u32],
) {
    use std::arch::x86_64::*;
    assert!(oxs.end <= val.len() && oxs.end <= at.len());
    assert!(step == 1 || step == 2);
    let idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let lane = _mm256_mullo_epi32(idx, _mm256_set1_epi32(sw as i32));
    // Lanes 0..n on.
    let upto = |n: usize| _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), idx);
    for ox in oxs.clone().step_by(8) {
        let n = (oxs.end - ox).min(8);
        let k = upto(n);
        // The source entries the windows read: n of them, or every other of 2n - 1.
        let span = step * (n - 1) + 1;
        let (k0, k1) = (upto(span.min(8)), upto(span.saturating_sub(8)));
        let first = _mm256_add_epi32(_mm256_set1_epi32((y0 * w + ox * sw - pl) as i32), lane);
        let mut best = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut here = first;
        for ky in 0..kh {
            for (kx, &(start, len)) in taps.iter().enumerate() {
                let from = start + ((y0 + ky) * len + ox * step) as isize;
                assert!(from >= 0 && from as usize + span <= src.len(), "pool: a window past its plane");
                // SAFETY: the lanes in `k0` and `k1` lie inside `src` (asserted above).
                let v = unsafe {
                    let p = src.as_ptr().add(from as usize);
                    if step == 1 {
                        _mm256_maskload_ps(p, k0)
                    } else {
                        let (a, b) = (_mm256_maskload_ps(p, k0), _mm256_maskload_ps(p.wrapping_add(8), k1));
                        // a0 a2 b0 b2 | a4 a6 b4 b6, then the 64-bit halves in the order 0 2 1 3.
                        let e = _mm256_shuffle_ps::<0b10_00_10_00>(a, b);
                        _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(e)))
                    }
                };
                let take = _mm256_or_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(v, best), _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
                let take = _mm256_and_ps(take, _mm256_castsi256_ps(k));
                best = _mm256_blendv_ps(best, v, take);
                let there = _mm256_add_epi32(first, _mm256_set1_epi32((ky * w + kx) as i32));
                here =
                    _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(here), _mm256_castsi256_ps(there), take));
            }
        }
        // SAFETY: windows ox..ox + n are inside both rows (asserted above). Plain stores, not
        // masked ones (microcoded on AMD's Zen 3); the indices' bits through float stores.
        unsafe {
            super::winograd::store8(val.as_mut_ptr().add(ox), best, n);
            super::winograd::store8(at.as_mut_ptr().add(ox).cast(), _mm256_castsi256_ps(here), n);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn scan_run_avx2(
    _: &[f32],
    _: &[(isize, usize)],
    _: usize,
    _: usize,
    _: usize,
    _: usize,
    _: usize,
    _: usize,
    _: std::ops::Range<usize>,
    _: &mut [f32],
    _: &mut [u32],
) {
    unreachable!("igemm::available is false off x86_64")
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn scan_run(
    _: &[f32],
    _: &[(isize, usize)],
    _: usize,
    _: usize,
    _: usize,
    _: usize,
    _: usize,
    _: usize,
    _: std::ops::Range<usize>,
    _: &mut [f32],
    _: &mut [u32],
) {
    unreachable!("igemm::available is false off x86_64")
}

impl CustomOp1 for Pool2d {
    fn name(&self) -> &'static str {
        "deepdream-pool2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = layout.shape().dims4()?;
        let (oh, ow) = self.out_dims(h, w)?;
        let x = cpu_slice(storage, layout)?;
        let (rows, cols) = self.all_spans(h, w)?;
        let boxed = self.kind != PoolKind::Max && self.box_route();
        let dx = if boxed { self.divisor_plane(&rows, &cols, w + 2 * self.padding.1) } else { Vec::new() };
        let y = super::par_planes(n * c, oh * ow, Scratch::default, |s, plane_idx, out| {
            let plane = &x[plane_idx * h * w..][..h * w];
            match self.kind {
                PoolKind::Max if super::igemm::avx512() => {
                    max_scan_plane(self, plane, w, &rows, &cols, s, out, super::igemm::isa())
                }
                PoolKind::Max => {
                    s.a.resize(h * ow, 0.0);
                    max_plane_wide(self, plane, w, &rows, &cols, &mut s.a, out)
                }
                PoolKind::Avg { .. } if boxed => box_plane_wide(self, plane, w, &dx, s, out),
                PoolKind::Avg { .. } => avg_plane_wide(self, plane, w, &rows, &cols, out),
            }
        });
        Ok((CpuStorage::F32(y), Shape::from((n, c, oh, ow))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.contiguous()?.apply_op2_no_bwd(arg, &PoolInputGrad(*self))?))
    }
}

/// Arguments: the output gradient and the forward input.
struct PoolInputGrad(Pool2d);

impl CustomOp2 for PoolInputGrad {
    fn name(&self) -> &'static str {
        "deepdream-pool2d-input-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let p = &self.0;
        let (n, c, h, w) = l2.shape().dims4()?;
        let (oh, ow) = p.out_dims(h, w)?;
        let (gy, x) = (cpu_slice(s1, l1)?, cpu_slice(s2, l2)?);
        let (rows, cols) = p.all_spans(h, w)?;
        let boxed = p.kind != PoolKind::Max && p.box_route();
        let d = if boxed { p.divisor_plane(&rows, &cols, ow) } else { Vec::new() };
        let gx = super::par_planes(n * c, h * w, Scratch::default, |s, plane_idx, gplane| {
            let plane = &x[plane_idx * h * w..][..h * w];
            let go = &gy[plane_idx * oh * ow..][..oh * ow];
            match p.kind {
                PoolKind::Max => {
                    // Each output's gradient to its window's maximum, added in the outputs' order.
                    let mut val = std::mem::take(&mut s.b);
                    val.resize(oh * ow, 0.0);
                    max_scan_plane(p, plane, w, &rows, &cols, s, &mut val, super::igemm::isa());
                    s.b = val;
                    for (&i, &g) in s.at.iter().zip(go) {
                        if i != u32::MAX {
                            gplane[i as usize] += g;
                        }
                    }
                }
                PoolKind::Avg { .. } if boxed => box_grad_plane_wide(p, go, w, &d, s, gplane),
                PoolKind::Avg { .. } => avg_grad_plane_wide(p, go, w, &rows, &cols, gplane),
            }
        });
        Ok((CpuStorage::F32(gx), Shape::from((n, c, h, w))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// `max_into` (on x86 its AVX2 vectors) makes the same choice as `nanmax` for every pair of
    /// special values, bit for bit: NaN either side (two payloads), zeros of both signs, the
    /// infinities, ties; at every length 0..=19 (whole vectors and the partial tail).
    #[test]
    fn max_into_matches_nanmax() {
        let nan2 = f32::from_bits(0x7fc0_1234);
        let specials = [f32::NAN, nan2, 0.0, -0.0, 1.0, -1.0, 2.5, f32::INFINITY, f32::NEG_INFINITY, f32::MIN_POSITIVE];
        let pairs: Vec<(f32, f32)> = specials.iter().flat_map(|&a| specials.iter().map(move |&b| (a, b))).collect();
        for len in 0..=19 {
            for start in (0..pairs.len()).step_by(7) {
                let (mut dst, src): (Vec<f32>, Vec<f32>) = (0..len).map(|i| pairs[(start + i) % pairs.len()]).unzip();
                let want: Vec<u32> = dst.iter().zip(&src).map(|(&a, &b)| nanmax(a, b).to_bits()).collect();
                let mut past = dst.clone();
                past.push(7.0);
                max_into(&mut past[..len], &src);
                assert_eq!(past[len], 7.0, "length {len}: wrote past the end");
                max_into(&mut dst, &src);
                let got: Vec<u32> = dst.iter().map(|v| v.to_bits()).collect();
                assert_eq!(got, want, "length {len} from pair {start}");
            }
        }
    }

    /// PyTorch's max pool as written in its CPU kernel: scan each window row-major from its first
    /// element, take any larger value or NaN; the output is the value found, and the backward
    /// adds the output's gradient there. Returns (output, input gradient).
    fn scan(p: &Pool2d, x: &[f32], h: usize, w: usize, gy: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let (rows, cols) = p.all_spans(h, w).unwrap();
        let mut gx = vec![0.0f32; h * w];
        let mut y = vec![f32::NEG_INFINITY; rows.len() * cols.len()];
        for (oy, r) in rows.iter().enumerate() {
            for (ox, c) in cols.iter().enumerate() {
                if r.lo >= r.hi || c.lo >= c.hi {
                    continue;
                }
                let (mut best, mut at) = (f32::NEG_INFINITY, r.lo * w + c.lo);
                for y in r.lo..r.hi {
                    for x_ in c.lo..c.hi {
                        let v = x[y * w + x_];
                        if v > best || v.is_nan() {
                            (best, at) = (v, y * w + x_);
                        }
                    }
                }
                gx[at] += gy[oy * cols.len() + ox];
                y[oy * cols.len() + ox] = best;
            }
        }
        (y, gx)
    }

    #[test]
    fn max_pool_follows_pytorchs_scan() {
        // Rows wider than a vector run of windows (and narrower), ties (whole numbers), NaN and
        // infinities, windows clipped by padding and by ceil_mode, strides 1, 2 (split in
        // registers) and 3 (phase planes), a stride in one direction, a 1x1 window.
        let pool =
            |kernel, stride, padding, ceil_mode| Pool2d { kind: PoolKind::Max, kernel, stride, padding, ceil_mode };
        for p in [
            Pool2d::max(3, 2, 0, false),
            Pool2d::max(3, 1, 1, false),
            Pool2d::max(3, 2, 1, true),
            Pool2d::max(2, 2, 0, true),
            Pool2d::max(5, 3, 2, false),
            pool((3, 3), (2, 1), (1, 1), false),
            pool((3, 2), (1, 2), (0, 1), true),
            Pool2d::max(1, 1, 0, false),
        ] {
            for (h, w) in [(9, 41), (13, 70), (6, 7)] {
                let mut x: Vec<f32> = (0..h * w).map(|i| ((i as f32 * 0.37).sin() * 3.0).round()).collect();
                x[5] = f32::NAN;
                x[w + 3] = f32::INFINITY;
                x[2 * w + 8] = f32::NEG_INFINITY;
                x[3 * w + 17 % w] = f32::NAN;
                x[3 * w + 18 % w] = f32::NAN;
                let xt = Tensor::from_slice(&x, (1, 1, h, w), &Device::Cpu).unwrap();
                let (oh, ow) = p.out_dims(h, w).unwrap();
                let gy: Vec<f32> = (0..oh * ow).map(|i| (i % 7) as f32 - 3.0).collect();
                let gyt = Tensor::from_slice(&gy, (1, 1, oh, ow), &Device::Cpu).unwrap();
                let (want_y, want) = scan(&p, &x, h, w, &gy);
                let got = p.input_grad(&gyt, &xt).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                assert_eq!(got, want, "{p:?} gradient on {h}x{w}");
                // Each scan kernel this CPU runs (the gradient above took the widest).
                let (rows, cols) = p.all_spans(h, w).unwrap();
                let isas = match super::super::igemm::isa() {
                    Some(super::super::igemm::Isa::Avx512) => {
                        vec![Some(super::super::igemm::Isa::Avx512), Some(super::super::igemm::Isa::Avx2), None]
                    }
                    isa => vec![isa, None],
                };
                for isa in isas {
                    let (mut s, mut val) = (Scratch::default(), vec![0.0f32; oh * ow]);
                    max_scan_plane(&p, &x, w, &rows, &cols, &mut s, &mut val, isa);
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&val), bits(&want_y), "{p:?} scan {isa:?} on {h}x{w}");
                    let mut g = vec![0.0f32; h * w];
                    for (&i, &d) in s.at.iter().zip(&gy) {
                        if i != u32::MAX {
                            g[i as usize] += d;
                        }
                    }
                    assert_eq!(g, want, "{p:?} scan {isa:?} gradient on {h}x{w}");
                }
                let got = p.forward(&xt).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want_y), "{p:?} forward on {h}x{w}");
                // The forward of CPUs without AVX-512 (row maxima, then column maxima): the same
                // values (its order of comparisons may keep the other zero of a +0/-0 tie).
                let (rows, cols) = p.all_spans(h, w).unwrap();
                let (mut val, mut out) = (vec![0.0f32; h * ow], vec![0.0f32; oh * ow]);
                max_plane(&p, &x, w, &rows, &cols, &mut val, &mut out);
                let same = out.iter().zip(&want_y).all(|(a, b)| a == b || (a.is_nan() && b.is_nan()));
                assert!(same, "{p:?} forward without AVX-512 on {h}x{w}");
            }
        }
    }

    #[test]
    fn average_pool_sums_in_the_order_of_its_definition() {
        // The stride-1 pools are box sums over padded planes, a (2, 1) stride sums shifted rows,
        // a (1, 2) one window by window: the same sums in the same order as window by window,
        // bit for bit, both directions.
        let strided = |kernel, stride, padding| Pool2d {
            kind: PoolKind::Avg { count_include_pad: false },
            kernel,
            stride,
            padding,
            ceil_mode: true,
        };
        for p in [
            Pool2d::avg(3, 1, 1, false, false),
            Pool2d::avg(3, 1, 1, false, true),
            Pool2d::avg(5, 1, 2, true, false),
            strided((3, 3), (2, 1), (1, 1)),
            strided((3, 2), (1, 2), (1, 0)),
        ] {
            // Rows narrower than the padding (a 5x5 window padded by 2 on 1 and 2 columns).
            for (h, w) in [(9, 41), (5, 3), (4, 1), (3, 2)] {
                let x: Vec<f32> = (0..h * w).map(|i| (i as f32 * 0.37).sin() * 3.1).collect();
                // (A 2-wide window unpadded does not fit a 1-wide row.)
                let Ok((oh, ow)) = p.out_dims(h, w) else { continue };
                let gy: Vec<f32> = (0..oh * ow).map(|i| (i as f32 * 0.71).cos()).collect();
                let (rows, cols) = p.all_spans(h, w).unwrap();
                let mut want = vec![0.0f32; oh * ow];
                let mut spread = vec![0.0f32; h * ow];
                for (oy, r) in rows.iter().enumerate() {
                    for (ox, c) in cols.iter().enumerate() {
                        let mut sum = 0.0f32;
                        for y in r.lo..r.hi {
                            sum += x[y * w + c.lo..y * w + c.hi].iter().sum::<f32>();
                        }
                        let d = r.divisor * c.divisor;
                        want[oy * ow + ox] = sum / d;
                        for y in r.lo..r.hi {
                            spread[y * ow + ox] += gy[oy * ow + ox] / d;
                        }
                    }
                }
                let mut want_gx = vec![0.0f32; h * w];
                for y in 0..h {
                    for (ox, c) in cols.iter().enumerate() {
                        for x_ in c.lo..c.hi {
                            want_gx[y * w + x_] += spread[y * ow + ox];
                        }
                    }
                }
                let xt = Tensor::from_slice(&x, (1, 1, h, w), &Device::Cpu).unwrap();
                let gyt = Tensor::from_slice(&gy, (1, 1, oh, ow), &Device::Cpu).unwrap();
                let got = p.forward(&xt).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                assert_eq!(got, want, "{p:?} forward on {h}x{w}");
                let got = p.input_grad(&gyt, &xt).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                assert_eq!(got, want_gx, "{p:?} input gradient on {h}x{w}");
            }
        }
    }
}
