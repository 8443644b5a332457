//! The classic DeepDream layer loss's core, `sum(a^2)` over a window of each map, and its
//! gradient `2 a` in the window (0 outside), each one pass.
//!
//! Why by hand: from candle's ops the loss is two narrows (a strided view), a square and a sum,
//! and candle's autograd gives every node of that graph a zero-filled gradient, adds into it, and
//! pads the narrows' gradients with zeros by concatenation. On InceptionV3's four classic layers
//! at 512x512 that took about 16 ms of a 280 ms step. The objective now hands the gradient to the
//! network directly (`model::Loss::direct`), written here as candle's graph wrote it:
//! `(a * g) * 2 + 0` inside the window (its square's backward is `(a * g).affine(2, 0)`).

use super::cpu_slice;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

/// The window `rows x cols` of an `h x w` map, checked: the rows and columns around it (top,
/// bottom, left, right), as `portable::pad2` takes them.
fn margins(
    a: &Tensor,
    rows: &std::ops::Range<usize>,
    cols: &std::ops::Range<usize>,
) -> Result<(isize, isize, isize, isize)> {
    let (_, _, h, w) = a.dims4()?;
    if rows.start > rows.end || rows.end > h || cols.start > cols.end || cols.end > w {
        bail!("square sum: window {rows:?} x {cols:?} outside a {h}x{w} map");
    }
    Ok((rows.start as isize, (h - rows.end) as isize, cols.start as isize, (w - cols.end) as isize))
}

/// `sum(a[.., .., rows, cols]^2)` of a `[n, c, h, w]` tensor, as a scalar (shape `[]`), outside
/// any graph.
pub fn window_square_sum(a: &Tensor, rows: std::ops::Range<usize>, cols: std::ops::Range<usize>) -> Result<Tensor> {
    let (t, b, l, r) = margins(a, &rows, &cols)?;
    let a = a.detach();
    if super::portable::wanted(&a) {
        return super::portable::pad2(&a, -t, -b, -l, -r, 0.0)?.sqr()?.sum_all();
    }
    a.contiguous()?.apply_op1_no_bwd(&Window { rows, cols, op: WindowOp::SquareSum })
}

/// The gradient of `g * window_square_sum(a, rows, cols)` with respect to `a`: `(a * g) * 2`
/// inside the window, 0 outside, outside any graph.
pub fn window_square_sum_grad(
    a: &Tensor,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    g: f32,
) -> Result<Tensor> {
    let (t, b, l, r) = margins(a, &rows, &cols)?;
    let a = a.detach();
    if super::portable::wanted(&a) {
        // The window's gradient, padded with zeros (as candle's narrow backward does).
        let inner = super::portable::pad2(&a, -t, -b, -l, -r, 0.0)?.affine(g as f64, 0.0)?.affine(2.0, 0.0)?;
        return super::portable::pad2(&inner, t, b, l, r, 0.0);
    }
    a.contiguous()?.apply_op1_no_bwd(&Window { rows, cols, op: WindowOp::Grad(g) })
}

enum WindowOp {
    SquareSum,
    Grad(f32),
}

struct Window {
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    op: WindowOp,
}

impl CustomOp1 for Window {
    fn name(&self) -> &'static str {
        "deepdream-window-square-sum"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = layout.shape().dims4()?;
        let a = cpu_slice(storage, layout)?;
        let (rows, cols) = (&self.rows, &self.cols);
        match self.op {
            WindowOp::SquareSum => {
                // Each plane's sum in f64, then the planes' in order: the same total on any
                // number of threads.
                let sums: Vec<f64> = if h * w == 0 {
                    Vec::new()
                } else {
                    a.par_chunks(h * w)
                        .map(|plane| {
                            plane[rows.start * w..rows.end * w]
                                .chunks_exact(w)
                                .map(|row| row[cols.clone()].iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>())
                                .sum::<f64>()
                        })
                        .collect()
                };
                Ok((CpuStorage::F32(vec![sums.iter().sum::<f64>() as f32]), Shape::from(())))
            }
            WindowOp::Grad(g) => {
                let gx = super::par_planes(
                    n * c,
                    h * w,
                    || (),
                    |_, p, out| {
                        let plane = &a[p * h * w..][..h * w];
                        for y in rows.clone() {
                            let (orow, arow) = (&mut out[y * w..][cols.clone()], &plane[y * w..][cols.clone()]);
                            orow.iter_mut().zip(arow).for_each(|(o, &v)| *o = (v * g) * 2.0 + 0.0);
                        }
                    },
                );
                Ok((CpuStorage::F32(gx), layout.shape().clone()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Against candle's own graph of the same loss: the sum to float rounding, the gradient bit
    /// for bit (windows that cut every side, none, and an empty one).
    #[test]
    fn matches_candles_graph() {
        let (n, c, h, w) = (2, 3, 7, 9);
        let data: Vec<f32> = (0..n * c * h * w).map(|i| ((i as f32) * 0.731).sin() * 2.5).collect();
        let a = Tensor::from_vec(data, (n, c, h, w), &Device::Cpu).unwrap();
        for (rows, cols) in [(2..5, 2..7), (0..h, 0..w), (3..3, 1..8)] {
            let g = 0.37f32;
            let v = Var::from_tensor(&a).unwrap();
            let s = v.as_tensor().narrow(2, rows.start, rows.len()).unwrap();
            let s = s.narrow(3, cols.start, cols.len()).unwrap().sqr().unwrap().sum_all().unwrap();
            let grads = (&s * g as f64).unwrap().backward().unwrap();
            let want = grads.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let got = window_square_sum_grad(&a, rows.clone(), cols.clone(), g).unwrap();
            let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "gradient over {rows:?} x {cols:?}"
            );
            let (got, want) = (
                window_square_sum(&a, rows.clone(), cols.clone()).unwrap().to_scalar::<f32>().unwrap(),
                s.to_scalar::<f32>().unwrap(),
            );
            assert!((got - want).abs() <= 1e-6 * want.abs().max(1.0), "sum over {rows:?} x {cols:?}: {got} vs {want}");
        }
        assert!(window_square_sum(&a, 0..8, 0..w).is_err(), "a window past the map");
    }

    /// The portable route (a GPU's, forced here on the CPU) gives the same gradient bits and sum.
    #[test]
    fn portable_route_agrees() {
        let data: Vec<f32> = (0..2 * 5 * 8).map(|i| ((i as f32) * 0.37).cos() * 1.5).collect();
        let a = Tensor::from_vec(data, (1, 2, 5, 8), &Device::Cpu).unwrap();
        for (rows, cols) in [(1..3, 2..7), (0..5, 0..8), (2..2, 0..8)] {
            let cpu = window_square_sum_grad(&a, rows.clone(), cols.clone(), 0.21).unwrap();
            let sum = window_square_sum(&a, rows.clone(), cols.clone()).unwrap().to_scalar::<f32>().unwrap();
            let _portable = crate::ops::portable::PathGuard::new(true);
            let port = window_square_sum_grad(&a, rows.clone(), cols.clone(), 0.21).unwrap();
            let port_sum = window_square_sum(&a, rows.clone(), cols.clone()).unwrap().to_scalar::<f32>().unwrap();
            let bits = |t: &Tensor| {
                t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            };
            assert_eq!(bits(&cpu), bits(&port), "gradient over {rows:?} x {cols:?}");
            assert!((sum - port_sum).abs() <= 1e-6 * sum.abs().max(1.0), "sum over {rows:?} x {cols:?}");
        }
    }
}
