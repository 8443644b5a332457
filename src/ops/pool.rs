//! Max and average pooling with padding and ceil_mode, each with its own backward pass.
//!
//! Candle's pooling has no padding or ceil_mode, a backward only when kernel == stride, a max-pool
//! gradient of 1/(k*k) instead of 1, and an avg-pool gradient that leaks into leftover rows.
//! Output sizes and window clipping follow PyTorch exactly.

use super::{cpu_slice, portable};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

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
        Ok((
            self.spans(h, oh, self.kernel.0, self.stride.0, self.padding.0),
            self.spans(w, ow, self.kernel.1, self.stride.1, self.padding.1),
        ))
    }
}

/// PyTorch's max with NaN propagation (a NaN anywhere in a window makes the window's max NaN).
#[inline(always)]
fn nanmax(a: f32, b: f32) -> f32 {
    if b > a || b.is_nan() { b } else { a }
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
            run[..full].iter_mut().zip(&row[j..j + full]).for_each(|(r, &v)| *r = nanmax(*r, v));
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
            orow.iter_mut().zip(vrow).for_each(|(o, &v)| *o = nanmax(*o, v));
        }
    }
}

/// `$name(args)`: the `#[inline(always)]` plane function `$f`, run from a copy compiled for
/// AVX-512 where the CPU has it. (`ops::wide` with a closure left these bodies out of line,
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
                if super::igemm::available() {
                    // SAFETY: the CPU has AVX-512F (checked at run time).
                    return unsafe { avx512($($arg),*) };
                }
            }
            $f($($arg),*)
        }
    };
}

wide_copy!(max_plane_wide => max_plane(p: &Pool2d, plane: &[f32], w: usize, rows: &[Span], cols: &[Span], val: &mut [f32], out: &mut [f32]));
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

/// One plane of the max pool's input gradient: each window's output gradient goes to its
/// maximum under PyTorch's scan (row-major from the window's first element, taking any larger
/// value or any NaN: ties go to the first, NaNs to the last), added in the outputs' order.
fn max_grad_plane(p: &Pool2d, plane: &[f32], w: usize, rows: &[Span], cols: &[Span], go: &[f32], gplane: &mut [f32]) {
    let ow = cols.len();
    let (kh, kw) = p.kernel;
    let vector = super::igemm::available() && plane.len() < i32::MAX as usize;
    for (oy, r) in rows.iter().enumerate() {
        if r.lo >= r.hi {
            continue;
        }
        let grow = &go[oy * ow..][..ow];
        let mut ox = 0;
        while ox < ow {
            // A run of outputs with whole windows (all kh x kw inside the plane), 16 at most.
            let run = if vector && r.hi - r.lo == kh {
                cols[ox..].iter().take(16).take_while(|c| c.hi - c.lo == kw).count()
            } else {
                0
            };
            if run > 0 {
                // SAFETY: AVX-512F is present; the windows are whole, inside the plane.
                let at = unsafe { argmax_run(plane, w, r.lo, cols[ox].lo, p.stride.1, kh, kw, run) };
                for (i, g) in at[..run].iter().zip(&grow[ox..]) {
                    gplane[*i as usize] += g;
                }
                ox += run;
                continue;
            }
            let c = cols[ox];
            if c.lo < c.hi {
                let (mut best, mut at) = (f32::NEG_INFINITY, r.lo * w + c.lo);
                for y in r.lo..r.hi {
                    for (x, &v) in plane[y * w + c.lo..y * w + c.hi].iter().enumerate() {
                        if v > best || v.is_nan() {
                            (best, at) = (v, y * w + c.lo + x);
                        }
                    }
                }
                gplane[at] += grow[ox];
            }
            ox += 1;
        }
    }
}

/// PyTorch's scan for `n` (at most 16) neighbouring whole windows, the first starting at row
/// `y0`, column `x0`, the next `sw` columns on: where each window's maximum sits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn argmax_run(
    plane: &[f32],
    w: usize,
    y0: usize,
    x0: usize,
    sw: usize,
    kh: usize,
    kw: usize,
    n: usize,
) -> [u32; 16] {
    use std::arch::x86_64::*;
    assert!(n > 0 && n <= 16 && (y0 + kh - 1) * w + x0 + (n - 1) * sw + kw <= plane.len());
    let k = ((1u32 << n) - 1) as __mmask16;
    let lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let first = _mm512_add_epi32(
        _mm512_set1_epi32((y0 * w + x0) as i32),
        _mm512_mullo_epi32(lane, _mm512_set1_epi32(sw as i32)),
    );
    let mut best = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut at = first;
    for ky in 0..kh {
        for kx in 0..kw {
            let here = _mm512_add_epi32(first, _mm512_set1_epi32((ky * w + kx) as i32));
            // SAFETY: every lane in `k` indexes inside `plane` (asserted above).
            let v = unsafe { _mm512_mask_i32gather_ps::<4>(best, k, here, plane.as_ptr()) };
            let take = k & (_mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, best) | _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v));
            best = _mm512_mask_mov_ps(best, take, v);
            at = _mm512_mask_mov_epi32(at, take, here);
        }
    }
    let mut out = [0u32; 16];
    // SAFETY: `out` holds 16 lanes.
    unsafe { _mm512_storeu_si512(out.as_mut_ptr().cast(), at) };
    out
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn argmax_run(_: &[f32], _: usize, _: usize, _: usize, _: usize, _: usize, _: usize, _: usize) -> [u32; 16] {
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
        let mut y = vec![0.0f32; n * c * oh * ow];
        y.par_chunks_mut(oh * ow).enumerate().for_each(|(plane_idx, out)| {
            let plane = &x[plane_idx * h * w..][..h * w];
            match self.kind {
                PoolKind::Max => {
                    let mut val = vec![0.0f32; h * ow];
                    max_plane_wide(self, plane, w, &rows, &cols, &mut val, out);
                }
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
        let mut gx = vec![0.0f32; n * c * h * w];
        gx.par_chunks_mut(h * w).enumerate().for_each(|(plane_idx, gplane)| {
            let plane = &x[plane_idx * h * w..][..h * w];
            let go = &gy[plane_idx * oh * ow..][..oh * ow];
            match p.kind {
                PoolKind::Max => max_grad_plane(p, plane, w, &rows, &cols, go, gplane),
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

    /// PyTorch's max-pool backward as written in its CPU kernel: scan each window row-major
    /// from its first element, take any larger value or NaN, add the output's gradient there.
    fn scan(p: &Pool2d, x: &[f32], h: usize, w: usize, gy: &[f32]) -> Vec<f32> {
        let (rows, cols) = p.all_spans(h, w).unwrap();
        let mut gx = vec![0.0f32; h * w];
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
            }
        }
        gx
    }

    #[test]
    fn max_pool_gradient_follows_pytorchs_scan() {
        // Rows wider than a vector run of windows (and narrower), ties (whole numbers), NaN and
        // infinities, windows clipped by padding and by ceil_mode.
        for (k, s, pad, ceil) in
            [(3, 2, 0, false), (3, 1, 1, false), (3, 2, 1, true), (2, 2, 0, true), (5, 3, 2, false)]
        {
            let p = Pool2d::max(k, s, pad, ceil);
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
                let got = p.input_grad(&gyt, &xt).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let want = scan(&p, &x, h, w, &gy);
                assert_eq!(got, want, "{p:?} on {h}x{w}");
            }
        }
    }

    #[test]
    fn average_pool_sums_in_the_order_of_its_definition() {
        // The stride-1 pools sum shifted rows; the same sums in the same order as window by
        // window, bit for bit, both directions.
        for p in
            [Pool2d::avg(3, 1, 1, false, false), Pool2d::avg(3, 1, 1, false, true), Pool2d::avg(5, 1, 2, true, false)]
        {
            // Rows narrower than the padding (a 5x5 window padded by 2 on 1 and 2 columns).
            for (h, w) in [(9, 41), (5, 3), (4, 1), (3, 2)] {
                let x: Vec<f32> = (0..h * w).map(|i| (i as f32 * 0.37).sin() * 3.1).collect();
                let (oh, ow) = p.out_dims(h, w).unwrap();
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
