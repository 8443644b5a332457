//! Fused ops of the portable path: a depthwise convolution with its bias and activation (and
//! its input gradient with the activation's mask) as one op, bias plus activation as one op,
//! and the activation's mask as one op. Composed from candle's ops these are 2 ops per kernel
//! tap plus padding copies (a 3x3 depthwise layer: 20 launches forward, 25 backward, and a
//! stride-2 backward on a zero-dilated gradient four times the size); fused they are one launch
//! each. candle has no fused or depthwise op (its grouped conv2d runs one convolution per group).
//!
//! Each op has the same maths twice: `cpu_fwd` (plain loops, the reference, used on the
//! `cpu-portable` path) and `cuda_fwd` (src/ops/kernels.cu, compiled to PTX by build.rs with
//! the `cuda` feature). `deepdream check-kernels --device cuda` compares them on a GPU; the
//! tests compare the CPU versions with candle's composed ops and with the native CPU kernels.

use super::conv::Activation;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

#[cfg(feature = "cuda")]
fn act_code(a: Activation) -> i32 {
    match a {
        Activation::Identity => 0,
        Activation::Relu => 1,
        Activation::Relu6 => 2,
    }
}

fn activate(v: f32, a: Activation) -> f32 {
    match a {
        Activation::Identity => v,
        Activation::Relu => v.max(0.0),
        Activation::Relu6 => v.clamp(0.0, 6.0),
    }
}

fn mask(y: f32, a: Activation) -> f32 {
    match a {
        Activation::Identity => 1.0,
        Activation::Relu => (y > 0.0) as u8 as f32,
        Activation::Relu6 => (y > 0.0 && y < 6.0) as u8 as f32,
    }
}

/// A contiguous f32 CPU storage as a slice (from its layout's offset).
fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => bail!("fused ops need contiguous f32 tensors"),
    }
}

/// The geometry of a depthwise convolution: input `[n, c, h, w]`, output `[n, c, oh, ow]`,
/// kernel `kh x kw`, stride `s`; output (oy, ox) reads input rows `oy * s - pt + ky` (and
/// columns alike), zero outside the input. `pt`/`pl` may be negative (a crop).
#[derive(Clone, Copy, Debug)]
pub struct Depthwise {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub oh: usize,
    pub ow: usize,
    pub kh: usize,
    pub kw: usize,
    pub s: usize,
    pub pt: isize,
    pub pl: isize,
    pub act: Activation,
}

impl Depthwise {
    /// Refuses tensors whose sizes are not this geometry's: the kernels index by the geometry,
    /// so a mismatch would read past a buffer on a GPU.
    fn check(&self, forward: bool, a: &Layout, b: &Layout, c: &Layout) -> Result<()> {
        let (input, output, weights) =
            (self.n * self.c * self.h * self.w, self.n * self.c * self.oh * self.ow, self.c * self.kh * self.kw);
        let want = match forward {
            true => [input, weights, self.c],
            false => [output, output, weights],
        };
        let got = [a, b, c].map(|l| l.shape().elem_count());
        if got != want || self.s == 0 {
            bail!("depthwise: tensors of {got:?} values for {self:?} (expected {want:?})");
        }
        Ok(())
    }
}

#[cfg(feature = "cuda")]
impl Depthwise {
    /// Runs depthwise `kernel` of kernels.cu on its three inputs (forward: x, w, bias; backward:
    /// gy, y, w); both kernels take the same arguments after them.
    fn launch(
        &self,
        kernel: &str,
        forward: bool,
        [(s0, l0), (s1, l1), (s2, l2)]: [(&candle_core::CudaStorage, &Layout); 3],
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
        let g = *self;
        g.check(forward, l0, l1, l2)?;
        let dev = &s0.device;
        let inputs = [gpu::view(s0, l0)?, gpu::view(s1, l1)?, gpu::view(s2, l2)?];
        let shape = match forward {
            true => Shape::from((g.n, g.c, g.oh, g.ow)),
            false => Shape::from((g.n, g.c, g.h, g.w)),
        };
        let total = shape.elem_count();
        // SAFETY: every element is written by the kernel below.
        let out = unsafe { dev.alloc::<f32>(total)? };
        let f = dev.get_or_load_custom_func(kernel, "deepdream_kernels", gpu::PTX)?;
        let mut a = f.builder();
        let ints = [g.n * g.c, g.c, g.h, g.w, g.oh, g.ow, g.kh, g.kw, g.s].map(|v| v as i32);
        let (pt, pl, act) = (g.pt as i32, g.pl as i32, act_code(g.act));
        for v in &inputs {
            a.arg(v);
        }
        a.arg(&out);
        for v in &ints {
            a.arg(v);
        }
        a.arg(&pt).arg(&pl).arg(&act);
        gpu::launch(&mut a, total)?;
        drop(a);
        Ok((candle_core::CudaStorage::wrap_cuda_slice(out, dev.clone()), shape))
    }
}

/// `bias` one value per channel of `x` (`[n, c, ...]`), for [`BiasAct`].
fn check_bias(x: &Layout, bias: &Layout) -> Result<()> {
    match x.shape().dims() {
        [_, c, ..] if bias.shape().elem_count() == *c => Ok(()),
        d => bail!("bias and activation: {} biases for a tensor of shape {d:?}", bias.shape().elem_count()),
    }
}

#[cfg(feature = "cuda")]
mod gpu {
    use candle_core::cuda_backend::WrapErr;
    use candle_core::cuda_backend::cudarc::driver::LaunchConfig;
    use candle_core::{CudaStorage, Layout, Result, bail};

    pub const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/kernels.ptx"));

    /// The f32 slice of a contiguous storage, from its offset.
    pub fn view<'a>(
        s: &'a CudaStorage,
        l: &Layout,
    ) -> Result<candle_core::cuda_backend::cudarc::driver::CudaView<'a, f32>> {
        match l.contiguous_offsets() {
            Some((a, b)) => Ok(s.as_cuda_slice::<f32>()?.slice(a..b)),
            None => bail!("fused ops need contiguous tensors"),
        }
    }

    pub fn config(total: usize) -> LaunchConfig {
        LaunchConfig::for_num_elems(total as u32)
    }

    pub fn launch(b: &mut candle_core::cuda_backend::cudarc::driver::LaunchArgs, total: usize) -> Result<()> {
        if total == 0 {
            return Ok(()); // nothing to compute, and a launch of no blocks is invalid
        }
        // SAFETY: every kernel of kernels.cu checks its index against `total` and reads only
        // the extents its arguments describe, which the callers checked against the tensors'
        // sizes (`Depthwise::check`, `check_bias`, equal shapes for the mask).
        unsafe { b.launch(config(total)) }.w()?;
        Ok(())
    }
}

/// `act(depthwise(x, w) + bias)`: `x` `[n, c, h, w]`, `w` `[c, kh * kw]`, `bias` `[c]`.
pub struct DepthwiseFwd(pub Depthwise);

impl CustomOp3 for DepthwiseFwd {
    fn name(&self) -> &'static str {
        "deepdream-depthwise-fwd"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        g.check(true, xl, wl, bl)?;
        let (x, wt, b) = (slice(xs, xl)?, slice(ws, wl)?, slice(bs, bl)?);
        let mut y = vec![0f32; g.n * g.c * g.oh * g.ow];
        y.par_chunks_mut(g.oh * g.ow).enumerate().for_each(|(p, out)| {
            let ch = p % g.c;
            let xp = &x[p * g.h * g.w..(p + 1) * g.h * g.w];
            let wc = &wt[ch * g.kh * g.kw..(ch + 1) * g.kh * g.kw];
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let mut acc = b[ch];
                    for ky in 0..g.kh {
                        let iy = (oy * g.s + ky) as isize - g.pt;
                        if iy < 0 || iy >= g.h as isize {
                            continue;
                        }
                        for kx in 0..g.kw {
                            let ix = (ox * g.s + kx) as isize - g.pl;
                            if ix < 0 || ix >= g.w as isize {
                                continue;
                            }
                            acc += xp[iy as usize * g.w + ix as usize] * wc[ky * g.kw + kx];
                        }
                    }
                    out[oy * g.ow + ox] = activate(acc, g.act);
                }
            }
        });
        Ok((CpuStorage::F32(y), Shape::from((g.n, g.c, g.oh, g.ow))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        ws: &candle_core::CudaStorage,
        wl: &Layout,
        bs: &candle_core::CudaStorage,
        bl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        self.0.launch("dd_depthwise_fwd", true, [(xs, xl), (ws, wl), (bs, bl)])
    }
}

/// The input gradient of [`DepthwiseFwd`]: `gy` and the forward's output `y` `[n, c, oh, ow]`
/// (the activation's mask is read off `y`), `w` `[c, kh * kw]`; gives `[n, c, h, w]`.
pub struct DepthwiseBwd(pub Depthwise);

impl CustomOp3 for DepthwiseBwd {
    fn name(&self) -> &'static str {
        "deepdream-depthwise-bwd"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        ys: &CpuStorage,
        yl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        g.check(false, gl, yl, wl)?;
        let (gy, y, wt) = (slice(gs, gl)?, slice(ys, yl)?, slice(ws, wl)?);
        let mut gx = vec![0f32; g.n * g.c * g.h * g.w];
        gx.par_chunks_mut(g.h * g.w).enumerate().for_each(|(p, out)| {
            let ch = p % g.c;
            let (gp, yp) = (&gy[p * g.oh * g.ow..(p + 1) * g.oh * g.ow], &y[p * g.oh * g.ow..(p + 1) * g.oh * g.ow]);
            let wc = &wt[ch * g.kh * g.kw..(ch + 1) * g.kh * g.kw];
            let s = g.s as isize;
            for iy in 0..g.h {
                for ix in 0..g.w {
                    let mut acc = 0f32;
                    for ky in 0..g.kh {
                        let ny = iy as isize + g.pt - ky as isize;
                        if ny < 0 || ny % s != 0 || (ny / s) as usize >= g.oh {
                            continue;
                        }
                        for kx in 0..g.kw {
                            let nx = ix as isize + g.pl - kx as isize;
                            if nx < 0 || nx % s != 0 || (nx / s) as usize >= g.ow {
                                continue;
                            }
                            let o = (ny / s) as usize * g.ow + (nx / s) as usize;
                            acc += gp[o] * mask(yp[o], g.act) * wc[ky * g.kw + kx];
                        }
                    }
                    out[iy * g.w + ix] = acc;
                }
            }
        });
        Ok((CpuStorage::F32(gx), Shape::from((g.n, g.c, g.h, g.w))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        gs: &candle_core::CudaStorage,
        gl: &Layout,
        ys: &candle_core::CudaStorage,
        yl: &Layout,
        ws: &candle_core::CudaStorage,
        wl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        self.0.launch("dd_depthwise_bwd", false, [(gs, gl), (ys, yl), (ws, wl)])
    }
}

/// `act(x + bias[c])` for `x` `[n, c, h, w]`, `bias` `[c]`.
pub struct BiasAct(pub Activation);

impl CustomOp2 for BiasAct {
    fn name(&self) -> &'static str {
        "deepdream-bias-act"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, bs: &CpuStorage, bl: &Layout) -> Result<(CpuStorage, Shape)> {
        check_bias(xl, bl)?;
        let (x, b) = (slice(xs, xl)?, slice(bs, bl)?);
        let dims = xl.shape().dims();
        let (c, hw) = (dims[1], dims[2..].iter().product::<usize>());
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(hw.max(1)).zip(x.par_chunks(hw.max(1))).enumerate().for_each(|(p, (o, i))| {
            let bias = b[p % c];
            for (o, &v) in o.iter_mut().zip(i) {
                *o = activate(v + bias, self.0);
            }
        });
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        bs: &candle_core::CudaStorage,
        bl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
        check_bias(xl, bl)?;
        let dev = &xs.device;
        let (x, b) = (gpu::view(xs, xl)?, gpu::view(bs, bl)?);
        let dims = xl.shape().dims();
        let total = xl.shape().elem_count();
        let (c, hw) = (dims[1] as i32, dims[2..].iter().product::<usize>() as i32);
        // SAFETY: every element is written by the kernel below.
        let y = unsafe { dev.alloc::<f32>(total)? };
        let f = dev.get_or_load_custom_func("dd_bias_act", "deepdream_kernels", gpu::PTX)?;
        let mut a = f.builder();
        let (t, act) = (total as i64, act_code(self.0));
        a.arg(&x).arg(&b).arg(&y).arg(&t).arg(&c).arg(&hw).arg(&act);
        gpu::launch(&mut a, total)?;
        drop(a);
        Ok((candle_core::CudaStorage::wrap_cuda_slice(y, dev.clone()), xl.shape().clone()))
    }
}

/// `gy * act'(y)`, the derivative read off the activation's output `y`.
pub struct ActMask(pub Activation);

impl CustomOp2 for ActMask {
    fn name(&self) -> &'static str {
        "deepdream-act-mask"
    }

    fn cpu_fwd(&self, gs: &CpuStorage, gl: &Layout, ys: &CpuStorage, yl: &Layout) -> Result<(CpuStorage, Shape)> {
        if gl.shape() != yl.shape() {
            bail!("activation mask: gradient {:?} for output {:?}", gl.shape(), yl.shape());
        }
        let (gy, y) = (slice(gs, gl)?, slice(ys, yl)?);
        let g: Vec<f32> = gy.par_iter().zip(y.par_iter()).map(|(&g, &y)| g * mask(y, self.0)).collect();
        Ok((CpuStorage::F32(g), gl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        gs: &candle_core::CudaStorage,
        gl: &Layout,
        ys: &candle_core::CudaStorage,
        yl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
        if gl.shape() != yl.shape() {
            bail!("activation mask: gradient {:?} for output {:?}", gl.shape(), yl.shape());
        }
        let dev = &gs.device;
        let (gy, y) = (gpu::view(gs, gl)?, gpu::view(ys, yl)?);
        let total = gl.shape().elem_count();
        // SAFETY: every element is written by the kernel below.
        let g = unsafe { dev.alloc::<f32>(total)? };
        let f = dev.get_or_load_custom_func("dd_act_mask", "deepdream_kernels", gpu::PTX)?;
        let mut a = f.builder();
        let (t, act) = (total as i64, act_code(self.0));
        a.arg(&gy).arg(&y).arg(&g).arg(&t).arg(&act);
        gpu::launch(&mut a, total)?;
        drop(a);
        Ok((candle_core::CudaStorage::wrap_cuda_slice(g, dev.clone()), gl.shape().clone()))
    }
}

thread_local! {
    static OVERRIDE: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// A max pool's geometry: input `[n, c, h, w]`, output `[n, c, oh, ow]`; output (oy, ox)'s window
/// is input rows `oy * sh - pt + ky` (`ky < kh`) and columns alike, pixels outside the input
/// left out (as padding with -inf).
#[derive(Clone, Copy, Debug)]
pub struct MaxPool {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub oh: usize,
    pub ow: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub pt: isize,
    pub pl: isize,
}

impl MaxPool {
    /// The flat index (in its plane) of the first maximum in scan order of output (oy, ox)'s
    /// window, PyTorch's choice among ties; `None` for a window outside the input.
    fn argmax(&self, plane: &[f32], oy: usize, ox: usize) -> Option<usize> {
        let mut best: Option<(usize, f32)> = None;
        for ky in 0..self.kh {
            let iy = (oy * self.sh + ky) as isize - self.pt;
            if iy < 0 || iy >= self.h as isize {
                continue;
            }
            for kx in 0..self.kw {
                let ix = (ox * self.sw + kx) as isize - self.pl;
                if ix < 0 || ix >= self.w as isize {
                    continue;
                }
                let at = iy as usize * self.w + ix as usize;
                if best.is_none_or(|(_, m)| plane[at] > m) {
                    best = Some((at, plane[at]));
                }
            }
        }
        best.map(|(at, _)| at)
    }

    fn check(&self, gy: &Layout, x: &Layout) -> Result<()> {
        let want = [self.n * self.c * self.oh * self.ow, self.n * self.c * self.h * self.w];
        let got = [gy.shape().elem_count(), x.shape().elem_count()];
        if got != want || self.sh == 0 || self.sw == 0 {
            bail!("max pool: tensors of {got:?} values for {self:?} (expected {want:?})");
        }
        Ok(())
    }
}

/// The input gradient of a max pool, `gy` `[n, c, oh, ow]` and the pool's input `x`: each
/// output's gradient goes to its window's first maximum. Composed from candle's ops this is
/// about 130 ops a pool (a mask, a claim and a placement per kernel offset); here one, gathered
/// per input pixel so that sums come out in the same order on every device.
pub struct MaxPoolBwd(pub MaxPool);

impl CustomOp2 for MaxPoolBwd {
    fn name(&self) -> &'static str {
        "deepdream-maxpool-bwd"
    }

    fn cpu_fwd(&self, gs: &CpuStorage, gl: &Layout, xs: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        g.check(gl, xl)?;
        let (gy, x) = (slice(gs, gl)?, slice(xs, xl)?);
        let mut gx = vec![0f32; g.n * g.c * g.h * g.w];
        gx.par_chunks_mut(g.h * g.w).enumerate().for_each(|(p, out)| {
            let plane = &x[p * g.h * g.w..(p + 1) * g.h * g.w];
            let gp = &gy[p * g.oh * g.ow..(p + 1) * g.oh * g.ow];
            for iy in 0..g.h {
                for ix in 0..g.w {
                    // The outputs whose window holds (iy, ix), in scan order.
                    let first = |i: usize, pad: isize, k: usize, s: usize| {
                        let lo = i as isize + pad - k as isize + 1;
                        if lo <= 0 { 0 } else { (lo as usize).div_ceil(s) }
                    };
                    let mut acc = 0f32;
                    let mut oy = first(iy, g.pt, g.kh, g.sh);
                    while oy < g.oh && (oy * g.sh) as isize - g.pt <= iy as isize {
                        let mut ox = first(ix, g.pl, g.kw, g.sw);
                        while ox < g.ow && (ox * g.sw) as isize - g.pl <= ix as isize {
                            if g.argmax(plane, oy, ox) == Some(iy * g.w + ix) {
                                acc += gp[oy * g.ow + ox];
                            }
                            ox += 1;
                        }
                        oy += 1;
                    }
                    out[iy * g.w + ix] = acc;
                }
            }
        });
        Ok((CpuStorage::F32(gx), Shape::from((g.n, g.c, g.h, g.w))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        gs: &candle_core::CudaStorage,
        gl: &Layout,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
        let g = self.0;
        g.check(gl, xl)?;
        let dev = &gs.device;
        let (gy, x) = (gpu::view(gs, gl)?, gpu::view(xs, xl)?);
        let total = g.n * g.c * g.h * g.w;
        // SAFETY: every element is written by the kernel below.
        let gx = unsafe { dev.alloc::<f32>(total)? };
        let f = dev.get_or_load_custom_func("dd_maxpool_bwd", "deepdream_kernels", gpu::PTX)?;
        let mut a = f.builder();
        let ints = [g.n * g.c, g.h, g.w, g.oh, g.ow, g.kh, g.kw, g.sh, g.sw].map(|v| v as i32);
        let (pt, pl) = (g.pt as i32, g.pl as i32);
        a.arg(&gy).arg(&x).arg(&gx);
        for v in &ints {
            a.arg(v);
        }
        a.arg(&pt).arg(&pl);
        gpu::launch(&mut a, total)?;
        drop(a);
        Ok((candle_core::CudaStorage::wrap_cuda_slice(gx, dev.clone()), Shape::from((g.n, g.c, g.h, g.w))))
    }
}

pub fn maxpool_bwd(gy: &Tensor, x: &Tensor, g: MaxPool) -> Result<Tensor> {
    gy.contiguous()?.apply_op2_no_bwd(&x.contiguous()?, &MaxPoolBwd(g))
}

/// Whether the portable path uses the fused ops (`DEEPDREAM_FUSED=0` turns them off, for an
/// A/B on a GPU; read once), unless [`with`] says otherwise on this thread.
pub fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    OVERRIDE.with(|o| o.get()).unwrap_or_else(|| *ON.get_or_init(|| super::switched_on("DEEPDREAM_FUSED")))
}

/// Runs `f` with the fused ops on or off on this thread (tests compare both).
pub fn with<T>(on: bool, f: &dyn Fn() -> T) -> T {
    let before = OVERRIDE.with(|o| o.replace(Some(on)));
    let out = f();
    OVERRIDE.with(|o| o.set(before));
    out
}

/// Applies a fused op to contiguous f32 tensors.
pub fn depthwise_fwd(x: &Tensor, w: &Tensor, bias: &Tensor, g: Depthwise) -> Result<Tensor> {
    x.contiguous()?.apply_op3_no_bwd(&w.contiguous()?, &bias.contiguous()?, &DepthwiseFwd(g))
}

pub fn depthwise_bwd(gy: &Tensor, y: &Tensor, w: &Tensor, g: Depthwise) -> Result<Tensor> {
    gy.contiguous()?.apply_op3_no_bwd(&y.contiguous()?, &w.contiguous()?, &DepthwiseBwd(g))
}

pub fn bias_act(x: &Tensor, bias: &Tensor, act: Activation) -> Result<Tensor> {
    x.contiguous()?.apply_op2_no_bwd(&bias.contiguous()?, &BiasAct(act))
}

pub fn act_mask(gy: &Tensor, y: &Tensor, act: Activation) -> Result<Tensor> {
    if act == Activation::Identity {
        return Ok(gy.clone());
    }
    gy.contiguous()?.apply_op2_no_bwd(&y.contiguous()?, &ActMask(act))
}
