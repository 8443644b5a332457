//! Bilinear resize with half-pixel centres and no antialiasing, exactly PyTorch's
//! `F.interpolate(mode="bilinear", align_corners=False)`. Used between octaves, never inside the
//! differentiated graph, so it has no backward.

use super::cpu_slice;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

/// Resizes an `[n, c, h, w]` tensor to `[n, c, out_h, out_w]`.
pub fn resize_bilinear(x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if (h, w) == (out_h, out_w) {
        return Ok(x.clone());
    }
    if super::portable::wanted(x) {
        // The same interpolation as two matrix products, rows then columns (any device).
        if h == 0 || w == 0 || out_h == 0 || out_w == 0 {
            bail!("resize: empty image ({h}x{w} -> {out_h}x{out_w})");
        }
        return super::portable::separable(x, "bilinear", matrix, out_h, out_w);
    }
    x.contiguous()?.apply_op1_no_bwd(&Bilinear { out_h, out_w })
}

struct Bilinear {
    out_h: usize,
    out_w: usize,
}

/// The interpolation as an `[out_len, in_len]` matrix (row-major).
fn matrix(in_len: usize, out_len: usize) -> Vec<f32> {
    let mut m = vec![0.0f32; out_len * in_len];
    for (o, (i0, i1, l)) in taps(in_len, out_len).into_iter().enumerate() {
        m[o * in_len + i0] += 1.0 - l;
        m[o * in_len + i1] += l;
    }
    m
}

/// For each output index: the two source indices and the weight of the second.
fn taps(in_len: usize, out_len: usize) -> Vec<(usize, usize, f32)> {
    let scale = in_len as f32 / out_len as f32;
    (0..out_len)
        .map(|o| {
            let src = (scale * (o as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (src as usize).min(in_len - 1);
            let i1 = if i0 + 1 < in_len { i0 + 1 } else { i0 };
            (i0, i1, (src - i0 as f32).min(1.0))
        })
        .collect()
}

impl CustomOp1 for Bilinear {
    fn name(&self) -> &'static str {
        "deepdream-resize-bilinear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = layout.shape().dims4()?;
        let (oh, ow) = (self.out_h, self.out_w);
        if h == 0 || w == 0 || oh == 0 || ow == 0 {
            bail!("resize: empty image ({h}x{w} -> {oh}x{ow})");
        }
        let x = cpu_slice(storage, layout)?;
        let (ty, tx) = (taps(h, oh), taps(w, ow));
        let mut y = vec![0.0f32; n * c * oh * ow];
        y.par_chunks_mut(oh * ow).enumerate().for_each(|(p, out)| {
            let plane = &x[p * h * w..][..h * w];
            for (oy, &(y0, y1, ly)) in ty.iter().enumerate() {
                let (r0, r1) = (&plane[y0 * w..][..w], &plane[y1 * w..][..w]);
                for (ox, &(x0, x1, lx)) in tx.iter().enumerate() {
                    let top = r0[x0] * (1.0 - lx) + r0[x1] * lx;
                    let bottom = r1[x0] * (1.0 - lx) + r1[x1] * lx;
                    out[oy * ow + ox] = top * (1.0 - ly) + bottom * ly;
                }
            }
        });
        Ok((CpuStorage::F32(y), Shape::from((n, c, oh, ow))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn doubling_matches_pytorch() {
        // torch.nn.functional.interpolate(torch.tensor([[[[0., 1.], [2., 3.]]]]), (4, 4),
        //   mode="bilinear", align_corners=False)
        let x = Tensor::new(&[[[[0f32, 1.], [2., 3.]]]], &Device::Cpu).unwrap();
        let y = resize_bilinear(&x, 4, 4).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want = [0.0, 0.25, 0.75, 1.0, 0.5, 0.75, 1.25, 1.5, 1.5, 1.75, 2.25, 2.5, 2.0, 2.25, 2.75, 3.0];
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{y:?}");
        }
    }

    #[test]
    fn constant_stays_constant_at_odd_sizes() {
        let x = Tensor::full(0.7f32, (1, 3, 13, 29), &Device::Cpu).unwrap();
        let y = resize_bilinear(&x, 9, 41).unwrap();
        assert_eq!(y.dims(), &[1, 3, 9, 41]);
        for v in y.flatten_all().unwrap().to_vec1::<f32>().unwrap() {
            assert!((v - 0.7).abs() < 1e-6);
        }
    }
}
