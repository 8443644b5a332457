//! Differentiable ops the networks need, owned by the project because candle 0.11's versions
//! are wrong or slow for DeepDream (see each file). Every op has a finite-difference test.

pub mod blur;
pub mod conv;
pub mod fused;
pub mod gemm;
pub mod host;
mod igemm;
pub mod loss;
pub mod pool;
pub mod portable;
pub mod resize;
pub mod warp;
mod winograd;

#[cfg(test)]
mod gradcheck;

pub use blur::{gaussian_blur, laplacian_normalize};
pub use conv::{Activation, Conv2d, ConvSpec, Padding};
pub use pool::{Pool2d, PoolKind};
pub use resize::resize_bilinear;
pub use warp::{affine, affine_sample};

use candle_core::{CpuStorage, Layout, Result, bail};

/// Runs `f` compiled with AVX-512 where the CPU has it (else AVX2 with FMA), else as compiled
/// for the baseline (SSE2): the hand-written loops of the ops (depthwise convolution, pooling, masks) are plain
/// Rust that the compiler vectorises, and on the baseline it can use 4 lanes where the CPU has
/// 16. `f` must be inlined here to profit, and the compiler inlines only a small closure: one
/// that calls an `#[inline(always)]` function (as `conv::mask_into`). A large closure body
/// stays out of line, compiled for the baseline (the pooling loops did; the depthwise planes
/// use `conv.rs`'s `wide_plane!` instead, a named copy per function). Rust never fuses a
/// multiply and an add, so the results are the same bits either way.
#[inline(always)]
pub(crate) fn wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        match igemm::isa() {
            // SAFETY: the CPU has AVX-512F (checked at run time).
            Some(igemm::Isa::Avx512) => return unsafe { avx512(f) },
            // SAFETY: the CPU has AVX2 and FMA (checked at run time).
            Some(igemm::Isa::Avx2) => return unsafe { avx2(f) },
            None => {}
        }
    }
    f()
}

/// Whether the environment switch `var` (`DEEPDREAM_IGEMM`, `DEEPDREAM_WINOGRAD`,
/// `DEEPDREAM_FUSED`: the kernels' A/B knobs) is on: on unless set to 0.
pub(crate) fn switched_on(var: &str) -> bool {
    std::env::var(var).map_or(true, |v| v.trim() != "0")
}

/// `planes` planes of `len` floats, made in parallel: each task zeroes a plane and `f` fills it
/// (`f(scratch, plane index, plane)`, with a scratch value per task from `init`). A large
/// `vec![0.0; n]` is zeroed by one thread before the work starts (2 ms for the 16 MB gradient
/// of InceptionV3's first max pool at 512x512, about a third of that op); here each worker
/// zeroes a plane just before it uses it, while it is in its cache.
pub(crate) fn par_planes<S>(
    planes: usize,
    len: usize,
    init: impl Fn() -> S + Sync + Send,
    f: impl Fn(&mut S, usize, &mut [f32]) + Sync + Send,
) -> Vec<f32> {
    use rayon::prelude::*;
    let mut v: Vec<f32> = Vec::with_capacity(planes * len);
    if planes * len == 0 {
        return v;
    }
    v.spare_capacity_mut()[..planes * len].par_chunks_mut(len).enumerate().for_each_init(init, |s, (i, chunk)| {
        chunk.fill(std::mem::MaybeUninit::new(0.0));
        // SAFETY: every element of `chunk` was just written, so it is `len` valid floats.
        let plane = unsafe { std::slice::from_raw_parts_mut(chunk.as_mut_ptr().cast::<f32>(), chunk.len()) };
        f(s, i, plane);
    });
    // SAFETY: the chunks above cover the first planes * len elements, and each was written.
    unsafe { v.set_len(planes * len) };
    v
}

/// `planes` planes of `len` floats, plane `i` all `value(i)`, filled in parallel (a bias under
/// the products that accumulate onto it, or the zeros of a gradient), where `vec![v; n]` or an
/// `extend` filled on one thread while the other cores waited: [`par_planes`]' zeroed planes,
/// refilled (still in the core's cache) where the value is not +0.0.
pub(crate) fn par_fill_planes(planes: usize, len: usize, value: impl Fn(usize) -> f32 + Sync + Send) -> Vec<f32> {
    par_planes(
        planes,
        len,
        || (),
        |_, i, plane| {
            let v = value(i);
            if v.to_bits() != 0 {
                plane.fill(v);
            }
        },
    )
}

/// `Tensor::cat(parts, 1)` for NCHW tensors: where every part is f32 on the CPU, the planes are
/// copied on all threads (candle's concatenation copies on one: 4 ms of an InceptionV3 512x512
/// step, where the branches of its blocks join); elsewhere candle's. The result is
/// off candle's graph: for the passes the networks' own reverse pass differentiates
/// (`Block::forward_saving`) and for gradients, not where candle's autograd must see through.
pub fn cat_channels(parts: &[candle_core::Tensor]) -> Result<candle_core::Tensor> {
    use candle_core::{DType, Storage, Tensor};
    let on_cpu = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32 && t.rank() == 4;
    let Some(first) = parts.first().filter(|_| parts.iter().all(on_cpu)) else { return Tensor::cat(parts, 1) };
    let (n, _, h, w) = first.dims4()?;
    let hw = h * w;
    if n == 0 || hw == 0 || parts.iter().any(|t| t.dim(0).ok() != Some(n) || t.dims()[2..] != [h, w]) {
        return Tensor::cat(parts, 1);
    }
    let parts = parts.iter().map(|t| t.contiguous()).collect::<Result<Vec<_>>>()?;
    let held: Vec<_> = parts.iter().map(|t| t.storage_and_layout()).collect();
    let slices = held
        .iter()
        .map(|(storage, layout)| match &**storage {
            Storage::Cpu(cpu) => cpu_slice(cpu, layout),
            _ => bail!("cat_channels: a part left the CPU"),
        })
        .collect::<Result<Vec<_>>>()?;
    // Output plane k of image b comes from part i's plane (b * c_i + ch).
    let mut from = Vec::new();
    for b in 0..n {
        for (i, t) in parts.iter().enumerate() {
            let c = t.dim(1)?;
            from.extend((0..c).map(|ch| (i, (b * c + ch) * hw)));
        }
    }
    let channels = from.len() / n;
    let out = par_planes(
        from.len(),
        hw,
        || (),
        |_, k, plane| {
            let (i, at) = from[k];
            plane.copy_from_slice(&slices[i][at..at + hw]);
        },
    );
    drop(held);
    Tensor::from_vec(out, (n, channels, h, w), first.device())
}

/// A process-wide count of the floating-point operations the convolutions have run (a
/// multiply-add counts as two), read by `deepdream bench` to print GFLOP/s.
pub mod flops {
    use std::sync::atomic::{AtomicU64, Ordering};

    static COUNT: AtomicU64 = AtomicU64::new(0);

    pub(crate) fn add(n: u64) {
        COUNT.fetch_add(n, Ordering::Relaxed);
    }

    /// Operations counted since the process started.
    pub fn total() -> u64 {
        COUNT.load(Ordering::Relaxed)
    }
}

/// Values made once per device and kept (a layer's weights copied to the devices it has run
/// on).
pub(crate) struct PerDevice<T>(std::sync::Mutex<Vec<(candle_core::Device, T)>>);

impl<T> Default for PerDevice<T> {
    fn default() -> Self {
        PerDevice(Default::default())
    }
}

impl<T: Clone> PerDevice<T> {
    /// The value for `device`, made by `make` the first time.
    pub(crate) fn get_or_make<E>(
        &self,
        device: &candle_core::Device,
        make: impl FnOnce() -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        let mut cache = self.0.lock().expect("per-device cache lock");
        if let Some((_, v)) = cache.iter().find(|(d, _)| d.same_device(device)) {
            return Ok(v.clone());
        }
        let v = make()?;
        cache.push((device.clone(), v.clone()));
        Ok(v)
    }
}

/// Marks the error an op raises when its input is smaller than its window, so that the
/// smallest-octave check can tell "too small" from every other failure.
const TOO_SMALL: &str = "input too small:";

/// The error for an input smaller than an op's window.
pub(crate) fn too_small(what: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("{TOO_SMALL} {what}"))
}

/// Whether `e` says an input was smaller than an op's window.
pub fn is_too_small(e: &candle_core::Error) -> bool {
    e.to_string().contains(TOO_SMALL)
}

/// The f32 data of a contiguous CPU tensor, from its start offset.
pub(crate) fn cpu_slice<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else { bail!("deepdream ops take f32 tensors") };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("deepdream ops take contiguous tensors"),
    }
}

/// TensorFlow "SAME" padding for one axis: (before, after), the odd pixel after.
pub fn tf_same_padding(len: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let out = len.div_ceil(stride);
    let total = ((out.saturating_sub(1)) * stride + kernel).saturating_sub(len);
    (total / 2, total - total / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_padding_matches_tensorflow() {
        // (len, k, s) -> (before, after), from tf.nn.conv2d's documented rule.
        assert_eq!(tf_same_padding(224, 3, 2), (0, 1));
        assert_eq!(tf_same_padding(225, 3, 2), (1, 1));
        assert_eq!(tf_same_padding(300, 5, 2), (1, 2));
        assert_eq!(tf_same_padding(7, 3, 1), (1, 1));
        assert_eq!(tf_same_padding(1, 5, 1), (2, 2));
    }

    #[test]
    fn cat_channels_is_candles_cat() {
        use candle_core::{Device, Tensor};
        let t = |n: usize, c: usize, h: usize, w: usize, k: f32| {
            let v: Vec<f32> = (0..n * c * h * w).map(|i| (i as f32 * k).sin()).collect();
            Tensor::from_vec(v, (n, c, h, w), &Device::Cpu).unwrap()
        };
        // Two images, parts of 1, 3 and 2 channels; a part that is a narrow of a wider tensor
        // (copied first) and one that is not contiguous (a transpose).
        let narrowed = t(2, 5, 3, 4, 0.7).narrow(1, 1, 3).unwrap();
        let transposed = t(2, 2, 4, 3, 0.9).transpose(2, 3).unwrap();
        let parts = [t(2, 1, 3, 4, 0.3), narrowed, transposed];
        let want = Tensor::cat(&parts, 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let got = cat_channels(&parts).unwrap();
        assert_eq!(got.dims(), [2, 6, 3, 4]);
        assert_eq!(got.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want);
        // One image: narrows along the channels are contiguous views at an offset into their
        // storage (as a fork's branch gradients are), read in place.
        let wide = t(1, 7, 3, 4, 0.5);
        let parts = [wide.narrow(1, 4, 3).unwrap(), wide.narrow(1, 0, 2).unwrap(), t(1, 2, 3, 4, 0.2)];
        let want = Tensor::cat(&parts, 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(cat_channels(&parts).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(), want);
        // An empty batch.
        assert_eq!(cat_channels(&[t(0, 1, 3, 4, 0.3), t(0, 2, 3, 4, 0.3)]).unwrap().dims(), [0, 3, 3, 4]);
        // Parts that disagree on the image size are candle's error, not a panic.
        assert!(cat_channels(&[t(1, 1, 3, 4, 0.3), t(1, 1, 4, 4, 0.3)]).is_err());
    }
}
