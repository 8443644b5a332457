//! Gaussian blur (separable, edges clamped) and the Laplacian-pyramid normalisation of
//! Mordvintsev's DeepDream notebook. Regularisers applied between ascent steps, so no backward.

use super::{cpu_slice, resize_bilinear};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

struct Gaussian {
    kernel: Vec<f32>,
}

/// Blurs each plane of an `[n, c, h, w]` tensor with a Gaussian of `sigma` pixels.
pub fn gaussian_blur(x: &Tensor, sigma: f64) -> Result<Tensor> {
    if sigma <= 0.0 {
        return Ok(x.clone());
    }
    let radius = (3.0 * sigma).ceil() as i64;
    let mut kernel: Vec<f32> =
        (-radius..=radius).map(|i| (-(i * i) as f64 / (2.0 * sigma * sigma)).exp() as f32).collect();
    let sum: f32 = kernel.iter().sum();
    kernel.iter_mut().for_each(|k| *k /= sum);
    if super::portable::wanted(x) {
        // The same blur (edges clamped) as two matrix products, rows then columns (any device).
        let (_, _, h, w) = x.dims4()?;
        let matrix = |len: usize, _: usize| {
            let mut m = vec![0.0f32; len * len];
            for o in 0..len {
                for (k, wt) in kernel.iter().enumerate() {
                    let i = (o as i64 + k as i64 - radius).clamp(0, len as i64 - 1) as usize;
                    m[o * len + i] += wt;
                }
            }
            m
        };
        return super::portable::separable(x, &format!("gaussian {sigma}"), matrix, h, w);
    }
    x.contiguous()?.apply_op1_no_bwd(&Gaussian { kernel })
}

impl CustomOp1 for Gaussian {
    fn name(&self) -> &'static str {
        "deepdream-gaussian-blur"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = layout.shape().dims4()?;
        let x = cpu_slice(storage, layout)?;
        let r = (self.kernel.len() / 2) as isize;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(h * w).enumerate().for_each(|(p, out)| {
            let plane = &x[p * h * w..][..h * w];
            let mut tmp = vec![0f32; h * w];
            let clamp = |i: isize, len: usize| i.clamp(0, len as isize - 1) as usize;
            for yy in 0..h {
                for xx in 0..w {
                    tmp[yy * w + xx] = self
                        .kernel
                        .iter()
                        .enumerate()
                        .map(|(k, wt)| wt * plane[yy * w + clamp(xx as isize + k as isize - r, w)])
                        .sum();
                }
            }
            for yy in 0..h {
                for xx in 0..w {
                    out[yy * w + xx] = self
                        .kernel
                        .iter()
                        .enumerate()
                        .map(|(k, wt)| wt * tmp[clamp(yy as isize + k as isize - r, h) * w + xx])
                        .sum();
                }
            }
        });
        Ok((CpuStorage::F32(y), Shape::from((n, c, h, w))))
    }
}

/// Splits `x` into `levels` Laplacian bands, scales each to unit RMS, and sums them back:
/// every spatial frequency then contributes equally to the step.
pub fn laplacian_normalize(x: &Tensor, levels: usize) -> Result<Tensor> {
    let mut bands = Vec::new();
    let mut current = x.clone();
    for _ in 0..levels.saturating_sub(1) {
        let (_, _, h, w) = current.dims4()?;
        if h < 4 || w < 4 {
            break;
        }
        let low = resize_bilinear(&gaussian_blur(&current, 1.0)?, h.div_ceil(2), w.div_ceil(2))?;
        bands.push((&current - resize_bilinear(&low, h, w)?)?);
        current = low;
    }
    bands.push(current);
    let (_, _, h, w) = x.dims4()?;
    let mut out: Option<Tensor> = None;
    for band in bands.into_iter().rev() {
        // Divided by its RMS on the device: no value comes back to the host.
        let rms = band.sqr()?.mean_all()?.sqrt()?.clamp(1e-8f32, f32::MAX)?;
        let band = band.broadcast_div(&rms)?;
        out = Some(match out {
            None => band,
            Some(o) => {
                let (_, _, bh, bw) = band.dims4()?;
                (resize_bilinear(&o, bh, bw)? + band)?
            }
        });
    }
    resize_bilinear(&out.expect("at least one band"), h, w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn blur_keeps_constants_and_spreads_a_point() {
        let c = Tensor::full(3.0f32, (1, 1, 9, 7), &Device::Cpu).unwrap();
        let b = gaussian_blur(&c, 1.5).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(b.iter().all(|v| (v - 3.0).abs() < 1e-5));
        let mut p = vec![0f32; 81];
        p[40] = 1.0;
        let b = gaussian_blur(&Tensor::from_vec(p, (1, 1, 9, 9), &Device::Cpu).unwrap(), 1.0).unwrap();
        let v = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!((v.iter().sum::<f32>() - 1.0).abs() < 1e-5, "mass kept away from the edges");
        assert!(v[40] < 0.2 && v[41] > 0.05 && (v[41] - v[39]).abs() < 1e-6);
    }

    #[test]
    fn laplacian_bands_have_equal_weight() {
        let x = Tensor::randn(0f32, 1f32, (1, 3, 40, 33), &Device::Cpu).unwrap();
        let y = laplacian_normalize(&x, 4).unwrap();
        assert_eq!(y.dims(), x.dims());
        let rms = y.sqr().unwrap().mean_all().unwrap().sqrt().unwrap().to_scalar::<f32>().unwrap();
        assert!(rms.is_finite() && rms > 0.1);
    }
}
