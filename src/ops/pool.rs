//! Max and average pooling with padding and ceil_mode, each with its own backward pass.
//!
//! Candle's pooling has no padding or ceil_mode, a backward only when kernel == stride, a max-pool
//! gradient of 1/(k*k) instead of 1, and an avg-pool gradient that leaks into leftover rows.
//! Output sizes and window clipping follow PyTorch exactly.

use super::cpu_slice;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    Max,
    /// Average; `count_include_pad` counts padded zeros in the divisor, as PyTorch's default.
    Avg { count_include_pad: bool },
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
        bail!("pool: input of {len} is smaller than the kernel {k}");
    }
    let span = span as usize;
    let mut out = if ceil { span.div_ceil(s) } else { span / s } + 1;
    // The last window must start inside the input or the left padding.
    if ceil && (out - 1) * s >= len + pad {
        out -= 1;
    }
    Ok(out)
}

/// One pooling window, clipped to the input: rows `y0..y1`, cols `x0..x1`, and its divisor.
struct Window {
    y0: usize,
    y1: usize,
    x0: usize,
    x1: usize,
    divisor: f32,
}

impl Pool2d {
    pub fn max(kernel: usize, stride: usize, padding: usize, ceil_mode: bool) -> Self {
        Pool2d { kind: PoolKind::Max, kernel: (kernel, kernel), stride: (stride, stride), padding: (padding, padding), ceil_mode }
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
        x.contiguous()?.apply_op1(*self)
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

    fn window(&self, oy: usize, ox: usize, h: usize, w: usize) -> Window {
        let (kh, kw) = self.kernel;
        let (sh, sw) = self.stride;
        let (ph, pw) = self.padding;
        let ys = (oy * sh) as isize - ph as isize;
        let xs = (ox * sw) as isize - pw as isize;
        let ye = (ys + kh as isize).min((h + ph) as isize);
        let xe = (xs + kw as isize).min((w + pw) as isize);
        let padded = ((ye - ys) * (xe - xs)) as f32;
        let (y0, x0) = (ys.max(0) as usize, xs.max(0) as usize);
        let (y1, x1) = ((ye.min(h as isize).max(0) as usize).max(y0), (xe.min(w as isize).max(0) as usize).max(x0));
        let divisor = match self.kind {
            PoolKind::Avg { count_include_pad: true } => padded,
            _ => ((y1 - y0) * (x1 - x0)) as f32,
        };
        Window { y0, y1, x0, x1, divisor }
    }

    /// Index of the first maximum in the window (PyTorch's scan order: the first position, then
    /// any strictly larger value or NaN), if the window is not empty.
    fn argmax(plane: &[f32], w: usize, win: &Window) -> Option<usize> {
        if win.y0 >= win.y1 || win.x0 >= win.x1 {
            return None;
        }
        let (mut best_i, mut best_v) = (win.y0 * w + win.x0, f32::NEG_INFINITY);
        for y in win.y0..win.y1 {
            let row = &plane[y * w + win.x0..y * w + win.x1];
            for (dx, &v) in row.iter().enumerate() {
                if v > best_v || v.is_nan() {
                    best_v = v;
                    best_i = y * w + win.x0 + dx;
                }
            }
        }
        Some(best_i)
    }
}

impl CustomOp1 for Pool2d {
    fn name(&self) -> &'static str {
        "deepdream-pool2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = layout.shape().dims4()?;
        let (oh, ow) = self.out_dims(h, w)?;
        let x = cpu_slice(storage, layout)?;
        let mut y = vec![0.0f32; n * c * oh * ow];
        y.par_chunks_mut(oh * ow).enumerate().for_each(|(plane_idx, out)| {
            let plane = &x[plane_idx * h * w..][..h * w];
            for oy in 0..oh {
                for ox in 0..ow {
                    let win = self.window(oy, ox, h, w);
                    out[oy * ow + ox] = match self.kind {
                        PoolKind::Max => Self::argmax(plane, w, &win).map_or(f32::NEG_INFINITY, |i| plane[i]),
                        PoolKind::Avg { .. } => {
                            let mut s = 0.0f32;
                            for yy in win.y0..win.y1 {
                                s += plane[yy * w + win.x0..yy * w + win.x1].iter().sum::<f32>();
                            }
                            if win.divisor > 0.0 { s / win.divisor } else { 0.0 }
                        }
                    };
                }
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
        let mut gx = vec![0.0f32; n * c * h * w];
        gx.par_chunks_mut(h * w).enumerate().for_each(|(plane_idx, gplane)| {
            let plane = &x[plane_idx * h * w..][..h * w];
            let go = &gy[plane_idx * oh * ow..][..oh * ow];
            for oy in 0..oh {
                for ox in 0..ow {
                    let win = p.window(oy, ox, h, w);
                    let d = go[oy * ow + ox];
                    match p.kind {
                        PoolKind::Max => {
                            if let Some(i) = Pool2d::argmax(plane, w, &win) {
                                gplane[i] += d;
                            }
                        }
                        PoolKind::Avg { .. } if win.divisor > 0.0 => {
                            let share = d / win.divisor;
                            for yy in win.y0..win.y1 {
                                gplane[yy * w + win.x0..yy * w + win.x1].iter_mut().for_each(|v| *v += share);
                            }
                        }
                        PoolKind::Avg { .. } => {}
                    }
                }
            }
        });
        Ok((CpuStorage::F32(gx), Shape::from((n, c, h, w))))
    }
}
