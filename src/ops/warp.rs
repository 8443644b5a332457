//! An affine resampling of a tensor image about its centre, for the transformation
//! robustness of a dream step (a random scale and rotation each step, as Lucid's
//! `transform.random_scale` and `random_rotate`): the image the network sees is turned and
//! scaled, and the gradient is turned back by the inverse transform. Written here because
//! candle 0.11 has no `grid_sample`; it is built from `index_select` so that it runs on any
//! device, with the sampling positions computed on the host once per call.

use candle_core::{Result, Tensor};

/// A 2x2 linear map of pixel offsets from the centre: output pixel `p` samples the input at
/// `centre + m (p - centre)`.
pub type Affine = [[f64; 2]; 2];

/// The map that samples a picture scaled by `scale` and turned by `degrees`
/// counter-clockwise (the inverse is `affine(1 / scale, -degrees)`).
pub fn affine(scale: f64, degrees: f64) -> Affine {
    // Image rows run down: a positive angle turns the picture counter-clockwise as seen.
    let (s, c) = degrees.to_radians().sin_cos();
    [[c / scale, -s / scale], [s / scale, c / scale]]
}

/// `x` (`[n, c, h, w]`) resampled through `m`, bilinear, the picture mirrored beyond its edges
/// (so no black corners enter the network).
pub fn affine_sample(x: &Tensor, m: Affine) -> Result<Tensor> {
    let (n, ch, h, w) = x.dims4()?;
    let (cy, cx) = ((h as f64 - 1.0) / 2.0, (w as f64 - 1.0) / 2.0);
    let pixels = h * w;
    let mut index = vec![vec![0u32; pixels]; 4];
    let mut weight = vec![vec![0f32; pixels]; 4];
    for y in 0..h {
        for xo in 0..w {
            let (dx, dy) = (xo as f64 - cx, y as f64 - cy);
            let sx = cx + m[0][0] * dx + m[0][1] * dy;
            let sy = cy + m[1][0] * dx + m[1][1] * dy;
            let (x0, y0) = (sx.floor(), sy.floor());
            let (fx, fy) = (sx - x0, sy - y0);
            let (x0, y0) = (x0 as i64, y0 as i64);
            let p = y * w + xo;
            let corners = [
                (x0, y0, (1.0 - fx) * (1.0 - fy)),
                (x0 + 1, y0, fx * (1.0 - fy)),
                (x0, y0 + 1, (1.0 - fx) * fy),
                (x0 + 1, y0 + 1, fx * fy),
            ];
            for (k, (cx_, cy_, wt)) in corners.into_iter().enumerate() {
                index[k][p] = (mirror(cy_, h as i64) * w + mirror(cx_, w as i64)) as u32;
                weight[k][p] = wt as f32;
            }
        }
    }
    let flat = x.reshape((n * ch, pixels))?;
    let mut out: Option<Tensor> = None;
    for k in 0..4 {
        let idx = Tensor::from_vec(std::mem::take(&mut index[k]), pixels, x.device())?;
        let wt = Tensor::from_vec(std::mem::take(&mut weight[k]), (1, pixels), x.device())?;
        let term = flat.index_select(&idx, 1)?.broadcast_mul(&wt)?;
        out = Some(match out {
            Some(o) => (o + term)?,
            None => term,
        });
    }
    out.expect("four corners").reshape((n, ch, h, w))
}

/// Index `i` reflected into `0..n` (`-1` is `1`, `n` is `n - 2`), for any distance outside.
pub fn mirror(i: i64, n: i64) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n - 1);
    let m = i.rem_euclid(period);
    (if m >= n { period - m } else { m }) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn identity_keeps_the_image_and_a_turn_comes_back() {
        let x = Tensor::rand(0f32, 1f32, (1, 3, 9, 12), &Device::Cpu).unwrap();
        let same = affine_sample(&x, affine(1.0, 0.0)).unwrap();
        let diff = (same - &x).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-6, "{diff}");
        // A quarter turn of a square about its centre is exact: four turns give the input.
        let sq = Tensor::rand(0f32, 1f32, (1, 2, 7, 7), &Device::Cpu).unwrap();
        let mut t = sq.clone();
        for _ in 0..4 {
            t = affine_sample(&t, affine(1.0, 90.0)).unwrap();
        }
        let diff = (t - &sq).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5, "{diff}");
        // Counter-clockwise: the top-right corner moves to the top left.
        let quarter = affine_sample(&sq, affine(1.0, 90.0)).unwrap();
        let at = |t: &Tensor, y: usize, x: usize| {
            t.get(0).unwrap().get(0).unwrap().get(y).unwrap().get(x).unwrap().to_scalar::<f32>().unwrap()
        };
        assert!((at(&quarter, 0, 0) - at(&sq, 0, 6)).abs() < 1e-5);
        // Magnified 2x, the centre stays and a pixel one step out samples half a step out.
        // (column 6 is half a pixel right of the centre at 5.5, and samples at 5.75).
        let up = affine_sample(&x, affine(2.0, 0.0)).unwrap();
        assert!((at(&up, 4, 6) - (at(&x, 4, 5) * 0.25 + at(&x, 4, 6) * 0.75)).abs() < 1e-5);
    }
}
