//! Dense optical flow by Dense Inverse Search (Kroeger, Timofte, Dai, Van Gool, "Fast Optical
//! Flow using Dense Inverse Search", ECCV 2016), the method behind OpenCV's `DISOpticalFlow`.
//!
//! Coarse to fine over an image pyramid: at each level a grid of overlapping patches is
//! aligned by inverse-compositional Lucas-Kanade (the template's gradients and Hessian are
//! computed once per patch, so each iteration is one bilinear warp and a 2x2 solve), each
//! patch starting from the best of the coarser level's flow and its already-solved left and
//! upper neighbours (OpenCV's spatial propagation); then every pixel takes the average of the
//! patches covering it, weighted by how well each explains it (the paper's densification).
//!
//! Written here because no Rust crate computes dense flow; the `opencv` crate would tie the
//! build to OpenCV's C++ libraries and libclang. It is plain CPU code on grey planes, with no
//! dependency on the rest of the project.

use image::RgbImage;

/// A grey image, row-major, in 0..255.
#[derive(Clone, Debug)]
pub struct Plane {
    pub width: usize,
    pub height: usize,
    pub data: Vec<f32>,
}

impl Plane {
    /// Luma (BT.601 weights) of an RGB image.
    pub fn luma(img: &RgbImage) -> Plane {
        let data = img.pixels().map(|p| 0.299 * p[0] as f32 + 0.587 * p[1] as f32 + 0.114 * p[2] as f32).collect();
        Plane { width: img.width() as usize, height: img.height() as usize, data }
    }

    #[inline]
    fn at(&self, x: usize, y: usize) -> f32 {
        self.data[y * self.width + x]
    }

    /// The value at a fractional position, bilinear, with the border extended.
    #[inline]
    pub fn sample(&self, x: f32, y: f32) -> f32 {
        if self.data.is_empty() {
            return 0.0;
        }
        let (x, y) = (x.clamp(0.0, (self.width - 1) as f32), y.clamp(0.0, (self.height - 1) as f32));
        let (x0, y0) = (x as usize, y as usize);
        let (x1, y1) = ((x0 + 1).min(self.width - 1), (y0 + 1).min(self.height - 1));
        let (fx, fy) = (x - x0 as f32, y - y0 as f32);
        let top = self.at(x0, y0) + fx * (self.at(x1, y0) - self.at(x0, y0));
        let bottom = self.at(x0, y1) + fx * (self.at(x1, y1) - self.at(x0, y1));
        top + fy * (bottom - top)
    }

    /// Half the size: each pixel the mean of a 2x2 block (the last row or column repeated
    /// where the size is odd).
    fn half(&self) -> Plane {
        let (w, h) = (self.width.div_ceil(2), self.height.div_ceil(2));
        let mut data = Vec::with_capacity(w * h);
        for y in 0..h {
            let (y0, y1) = (2 * y, (2 * y + 1).min(self.height - 1));
            for x in 0..w {
                let (x0, x1) = (2 * x, (2 * x + 1).min(self.width - 1));
                data.push(0.25 * (self.at(x0, y0) + self.at(x1, y0) + self.at(x0, y1) + self.at(x1, y1)));
            }
        }
        Plane { width: w, height: h, data }
    }

    /// Central differences (one-sided at the border): `(d/dx, d/dy)`.
    fn gradients(&self) -> (Vec<f32>, Vec<f32>) {
        let (w, h) = (self.width, self.height);
        let mut gx = vec![0.0; w * h];
        let mut gy = vec![0.0; w * h];
        for y in 0..h {
            let (ya, yb) = (y.saturating_sub(1), (y + 1).min(h - 1));
            for x in 0..w {
                let (xa, xb) = (x.saturating_sub(1), (x + 1).min(w - 1));
                gx[y * w + x] = (self.at(xb, y) - self.at(xa, y)) / (xb - xa).max(1) as f32;
                gy[y * w + x] = (self.at(x, yb) - self.at(x, ya)) / (yb - ya).max(1) as f32;
            }
        }
        (gx, gy)
    }
}

/// A displacement per pixel: pixel `(x, y)` of the first image is seen at
/// `(x + u, y + v)` in the second.
#[derive(Clone, Debug, PartialEq)]
pub struct Flow {
    pub width: usize,
    pub height: usize,
    pub u: Vec<f32>,
    pub v: Vec<f32>,
}

impl Flow {
    pub fn zero(width: usize, height: usize) -> Flow {
        Flow { width, height, u: vec![0.0; width * height], v: vec![0.0; width * height] }
    }

    #[inline]
    pub fn at(&self, x: usize, y: usize) -> (f32, f32) {
        let i = y * self.width + x;
        (self.u[i], self.v[i])
    }

    /// The displacement at a fractional position, bilinear, with the border extended.
    #[inline]
    pub fn sample(&self, x: f32, y: f32) -> (f32, f32) {
        if self.u.is_empty() {
            return (0.0, 0.0);
        }
        let (x, y) = (x.clamp(0.0, (self.width - 1) as f32), y.clamp(0.0, (self.height - 1) as f32));
        let (x0, y0) = (x as usize, y as usize);
        let (x1, y1) = ((x0 + 1).min(self.width - 1), (y0 + 1).min(self.height - 1));
        let (fx, fy) = (x - x0 as f32, y - y0 as f32);
        let w = self.width;
        let lerp = |c: &[f32]| {
            let top = c[y0 * w + x0] + fx * (c[y0 * w + x1] - c[y0 * w + x0]);
            let bottom = c[y1 * w + x0] + fx * (c[y1 * w + x1] - c[y1 * w + x0]);
            top + fy * (bottom - top)
        };
        (lerp(&self.u), lerp(&self.v))
    }

    /// The flow resampled to `width` x `height`, its vectors scaled with the image.
    pub fn resized(&self, width: usize, height: usize) -> Flow {
        if (width, height) == (self.width, self.height) {
            return self.clone();
        }
        if self.u.is_empty() {
            return Flow::zero(width, height); // nothing to stretch
        }
        let (sx, sy) = (self.width as f32 / width as f32, self.height as f32 / height as f32);
        // Pixel centres line up: source position (x + 0.5) * s - 0.5. The taps and weights of
        // each output column and row are worked out once.
        let taps = |n: usize, s: f32, len: usize| -> Vec<(usize, usize, f32)> {
            (0..n)
                .map(|i| {
                    let p = ((i as f32 + 0.5) * s - 0.5).clamp(0.0, (len - 1) as f32);
                    let i0 = p as usize;
                    (i0, (i0 + 1).min(len - 1), p - i0 as f32)
                })
                .collect()
        };
        let (cols, rows) = (taps(width, sx, self.width), taps(height, sy, self.height));
        let mut out = Flow::zero(width, height);
        for (plane, target, scale) in [(&self.u, &mut out.u, 1.0 / sx), (&self.v, &mut out.v, 1.0 / sy)] {
            for (y, &(y0, y1, fy)) in rows.iter().enumerate() {
                let (r0, r1) =
                    (&plane[y0 * self.width..(y0 + 1) * self.width], &plane[y1 * self.width..(y1 + 1) * self.width]);
                for (o, &(x0, x1, fx)) in target[y * width..(y + 1) * width].iter_mut().zip(&cols) {
                    let top = r0[x0] + fx * (r0[x1] - r0[x0]);
                    let bottom = r1[x0] + fx * (r1[x1] - r1[x0]);
                    *o = (top + fy * (bottom - top)) * scale;
                }
            }
        }
        out
    }
}

/// How hard DIS works; the defaults sit between OpenCV's `FAST` and `MEDIUM` presets.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct DisParams {
    /// The finest pyramid level solved (0: full size; 1: half size, the result then upscaled).
    pub finest_scale: u32,
    /// Patch side, pixels.
    pub patch: usize,
    /// Distance between patch origins, pixels (less than `patch`, so patches overlap).
    pub stride: usize,
    /// Lucas-Kanade iterations per patch.
    pub iterations: usize,
}

impl Default for DisParams {
    fn default() -> Self {
        DisParams { finest_scale: 1, patch: 8, stride: 4, iterations: 16 }
    }
}

/// The flow from `a` to `b` (same size): `a(x) ~ b(x + flow(x))`.
pub fn dis(a: &Plane, b: &Plane, p: &DisParams) -> Flow {
    assert_eq!((a.width, a.height), (b.width, b.height), "flow between images of one size");
    let (w, h) = (a.width, a.height);
    let patch = p.patch.max(2);
    // The coarsest level's longer side is about four patches (as OpenCV chooses it); every
    // level solved must hold at least one patch each way.
    let fits = |k: u32| (w >> k) >= patch && (h >> k) >= patch;
    if !fits(0) {
        return Flow::zero(w, h);
    }
    let mut finest = p.finest_scale;
    while !fits(finest) {
        finest -= 1;
    }
    let mut coarsest = ((w.max(h) as f32 / (4 * patch) as f32).log2().round().max(0.0)) as u32;
    coarsest = coarsest.max(finest);
    while !fits(coarsest) {
        coarsest -= 1;
    }
    let (mut pa, mut pb) = (vec![a.clone()], vec![b.clone()]);
    for _ in 0..coarsest {
        pa.push(pa.last().expect("level 0").half());
        pb.push(pb.last().expect("level 0").half());
    }
    let mut flow = Flow::zero(pa[coarsest as usize].width, pa[coarsest as usize].height);
    for k in (finest..=coarsest).rev() {
        let (la, lb) = (&pa[k as usize], &pb[k as usize]);
        let init = flow.resized(la.width, la.height);
        flow = solve_level(la, lb, &init, patch, p.stride.clamp(1, patch), p.iterations);
    }
    flow.resized(w, h)
}

/// Patch origins along an axis of `len` pixels: every `stride`, and one flush with the end.
fn origins(len: usize, patch: usize, stride: usize) -> Vec<usize> {
    debug_assert!(len >= patch, "dis() only solves levels that hold a patch");
    let mut o: Vec<usize> = (0..=len - patch).step_by(stride).collect();
    if *o.last().expect("len >= patch") != len - patch {
        o.push(len - patch);
    }
    o
}

/// One pyramid level: patch flows from `init`, then densified.
fn solve_level(a: &Plane, b: &Plane, init: &Flow, patch: usize, stride: usize, iterations: usize) -> Flow {
    let (w, h) = (a.width, a.height);
    let (gx, gy) = a.gradients();
    let (xs, ys) = (origins(w, patch, stride), origins(h, patch, stride));
    let n = patch * patch;
    let mut solved: Vec<(f32, f32)> = Vec::with_capacity(xs.len() * ys.len());
    let (mut template, mut tgx, mut tgy, mut warped) = (vec![0.0; n], vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    // The mean-normalised squared difference between the template and `b` under shift `d`.
    let cost = |template: &[f32], warped: &mut [f32], px: usize, py: usize, d: (f32, f32)| -> f32 {
        warp_patch(b, px, py, patch, d, warped);
        let mean = warped.iter().sum::<f32>() / n as f32;
        warped.iter().zip(template).map(|(wv, t)| (wv - mean - t).powi(2)).sum()
    };
    let limit = (w.max(h)) as f32;
    for (j, &py) in ys.iter().enumerate() {
        for (i, &px) in xs.iter().enumerate() {
            // The template (mean-normalised) and its gradients.
            for r in 0..patch {
                let row = (py + r) * w + px;
                template[r * patch..(r + 1) * patch].copy_from_slice(&a.data[row..row + patch]);
                tgx[r * patch..(r + 1) * patch].copy_from_slice(&gx[row..row + patch]);
                tgy[r * patch..(r + 1) * patch].copy_from_slice(&gy[row..row + patch]);
            }
            let mean = template.iter().sum::<f32>() / n as f32;
            template.iter_mut().for_each(|t| *t -= mean);
            // Start from the best of the coarser level's flow and the solved neighbours.
            let centre = init.at(px + patch / 2, py + patch / 2);
            let mut candidates = vec![centre];
            if i > 0 {
                candidates.push(solved[j * xs.len() + i - 1]);
            }
            if j > 0 {
                candidates.push(solved[(j - 1) * xs.len() + i]);
            }
            let (mut start, mut start_cost) = (centre, f32::INFINITY);
            for c in candidates {
                let e = cost(&template, &mut warped, px, py, c);
                if e < start_cost {
                    (start, start_cost) = (c, e);
                }
            }
            let (hxx, hxy, hyy) = tgx
                .iter()
                .zip(&tgy)
                .fold((0.0f32, 0.0f32, 0.0f32), |(xx, xy, yy), (&dx, &dy)| (xx + dx * dx, xy + dx * dy, yy + dy * dy));
            // A little damping keeps flat or one-directional patches (an edge) from running off.
            let (hxx, hyy) = (hxx + 1e-2 * n as f32, hyy + 1e-2 * n as f32);
            let det = hxx * hyy - hxy * hxy;
            let mut d = start;
            if det > 1e-6 {
                for _ in 0..iterations {
                    warp_patch(b, px, py, patch, d, &mut warped);
                    let wmean = warped.iter().sum::<f32>() / n as f32;
                    let (mut bx, mut by) = (0.0f32, 0.0f32);
                    for k in 0..n {
                        let diff = warped[k] - wmean - template[k];
                        bx += tgx[k] * diff;
                        by += tgy[k] * diff;
                    }
                    let (du, dv) = ((hyy * bx - hxy * by) / det, (hxx * by - hxy * bx) / det);
                    d = ((d.0 - du).clamp(-limit, limit), (d.1 - dv).clamp(-limit, limit));
                    if du * du + dv * dv < 1e-4 {
                        break;
                    }
                }
                // Keep the start where the search made the patch worse, or wandered further than
                // a patch (it lost its match: a flat or repetitive patch), as OpenCV does.
                let moved = (d.0 - start.0).powi(2) + (d.1 - start.1).powi(2);
                if moved > (patch * patch) as f32 || cost(&template, &mut warped, px, py, d) > start_cost {
                    d = start;
                }
            }
            solved.push(d);
        }
    }
    densify(a, b, &xs, &ys, &solved, patch)
}

/// `b` over the patch at `(px, py)` shifted by `d`, into `out`. One shift for the whole patch
/// means one set of bilinear weights; only patches that reach past the border pay for clamping.
fn warp_patch(b: &Plane, px: usize, py: usize, patch: usize, d: (f32, f32), out: &mut [f32]) {
    let (x, y) = (px as f32 + d.0, py as f32 + d.1);
    let (x0, y0) = (x.floor(), y.floor());
    let inside =
        x0 >= 0.0 && y0 >= 0.0 && x0 + patch as f32 + 1.0 < b.width as f32 && y0 + patch as f32 + 1.0 < b.height as f32;
    if !inside {
        for r in 0..patch {
            for c in 0..patch {
                out[r * patch + c] = b.sample(x + c as f32, y + r as f32);
            }
        }
        return;
    }
    let (fx, fy) = (x - x0, y - y0);
    let (w00, w10, w01, w11) = ((1.0 - fx) * (1.0 - fy), fx * (1.0 - fy), (1.0 - fx) * fy, fx * fy);
    let w = b.width;
    let (x0, y0) = (x0 as usize, y0 as usize);
    for r in 0..patch {
        let top = &b.data[(y0 + r) * w + x0..(y0 + r) * w + x0 + patch + 1];
        let bottom = &b.data[(y0 + r + 1) * w + x0..(y0 + r + 1) * w + x0 + patch + 1];
        for (c, o) in out[r * patch..(r + 1) * patch].iter_mut().enumerate() {
            *o = w00 * top[c] + w10 * top[c + 1] + w01 * bottom[c] + w11 * bottom[c + 1];
        }
    }
}

/// Every pixel: the patches covering it, averaged with weights `1 / max(1, |b(x + d) - a(x)|)`.
fn densify(a: &Plane, b: &Plane, xs: &[usize], ys: &[usize], solved: &[(f32, f32)], patch: usize) -> Flow {
    let (w, h) = (a.width, a.height);
    let mut num_u = vec![0.0f32; w * h];
    let mut num_v = vec![0.0f32; w * h];
    let mut den = vec![0.0f32; w * h];
    let mut warped = vec![0.0; patch * patch];
    for (j, &py) in ys.iter().enumerate() {
        for (i, &px) in xs.iter().enumerate() {
            let (du, dv) = solved[j * xs.len() + i];
            warp_patch(b, px, py, patch, (du, dv), &mut warped);
            for r in 0..patch {
                let row = (py + r) * w + px;
                for c in 0..patch {
                    let k = row + c;
                    let weight = 1.0 / (warped[r * patch + c] - a.data[k]).abs().max(1.0);
                    num_u[k] += weight * du;
                    num_v[k] += weight * dv;
                    den[k] += weight;
                }
            }
        }
    }
    let u = num_u.iter().zip(&den).map(|(n, d)| n / d).collect();
    let v = num_v.iter().zip(&den).map(|(n, d)| n / d).collect();
    Flow { width: w, height: h, u, v }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A real photo shrunk to `width` (the motion tests use it too).
    pub(in crate::source) fn photo_rgb(width: u32) -> RgbImage {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/chelsea.png");
        let img = image::open(path).unwrap().to_rgb8();
        let h = (img.height() as f32 * width as f32 / img.width() as f32).round() as u32;
        image::imageops::resize(&img, width, h, image::imageops::FilterType::Triangle)
    }

    /// A textured test image: a real photo's luma, shrunk.
    fn photo(width: u32) -> Plane {
        Plane::luma(&photo_rgb(width))
    }

    /// `a` moved by `f`: `b(y) = a(y - f(y))`, so the flow from `b` back to `a` is exactly
    /// `-f` (returned as the truth).
    fn moved(a: &Plane, f: &dyn Fn(f32, f32) -> (f32, f32)) -> (Plane, Flow) {
        let (w, h) = (a.width, a.height);
        let mut b = a.clone();
        let mut truth = Flow::zero(w, h);
        for y in 0..h {
            for x in 0..w {
                let (u, v) = f(x as f32, y as f32);
                b.data[y * w + x] = a.sample(x as f32 - u, y as f32 - v);
                truth.u[y * w + x] = -u;
                truth.v[y * w + x] = -v;
            }
        }
        (b, truth)
    }

    /// Mean endpoint error over pixels at least `margin` from the border.
    fn epe(f: &Flow, truth: &Flow, margin: usize) -> f32 {
        let (mut sum, mut n) = (0.0, 0);
        for y in margin..f.height - margin {
            for x in margin..f.width - margin {
                let ((u, v), (tu, tv)) = (f.at(x, y), truth.at(x, y));
                sum += ((u - tu).powi(2) + (v - tv).powi(2)).sqrt();
                n += 1;
            }
        }
        sum / n as f32
    }

    #[test]
    fn a_shift_is_found_small_and_large() {
        let a = photo(320);
        for (du, dv) in [(0.5, -0.25), (3.0, 2.0), (-17.0, 9.0), (30.0, -24.0)] {
            let (b, truth) = moved(&a, &|_, _| (du, dv));
            let f = dis(&b, &a, &DisParams::default());
            let e = epe(&f, &truth, 40);
            assert!(e < 0.3, "shift ({du}, {dv}): mean endpoint error {e}");
        }
    }

    #[test]
    fn a_smooth_field_is_found() {
        let a = photo(320);
        let (w, h) = (a.width as f32, a.height as f32);
        // A zoom about the centre, a rotation, and a wave: up to about 12 px.
        let field = |x: f32, y: f32| {
            let (cx, cy) = (x - w / 2.0, y - h / 2.0);
            let (zoom, turn) = (0.04, 0.03);
            (zoom * cx - turn * cy + 3.0 * (y / 30.0).sin(), zoom * cy + turn * cx + 2.0 * (x / 40.0).cos())
        };
        let (b, truth) = moved(&a, &field);
        let f = dis(&b, &a, &DisParams::default());
        let e = epe(&f, &truth, 20);
        // Solved at half size (the default): about 0.3 px; at full size about 0.17.
        assert!(e < 0.4, "mean endpoint error {e}");
        let still = epe(&Flow::zero(a.width, a.height), &truth, 20);
        assert!(still > 5.0, "the field moves: {still}");
    }

    #[test]
    fn tiny_and_flat_images_give_a_finite_flow() {
        for (w, h) in [(1, 1), (7, 3), (8, 8), (9, 40), (64, 9)] {
            let a = Plane { width: w, height: h, data: (0..w * h).map(|i| (i * 37 % 255) as f32).collect() };
            let f = dis(&a, &a, &DisParams::default());
            assert_eq!((f.width, f.height), (w, h));
            assert!(f.u.iter().chain(&f.v).all(|x| x.is_finite() && x.abs() < 1e-3), "{w}x{h}");
        }
        let flat = Plane { width: 50, height: 40, data: vec![128.0; 2000] };
        let f = dis(&flat, &flat, &DisParams::default());
        assert!(f.u.iter().chain(&f.v).all(|x| *x == 0.0));
    }

    /// Mean |b(x + flow(x)) - a(x)| away from the border: how well a flow explains `b` from `a`.
    fn photometric(a: &Plane, b: &Plane, f: &Flow) -> f32 {
        let (mut sum, mut n) = (0.0, 0);
        for y in 8..a.height - 8 {
            for x in 8..a.width - 8 {
                let (u, v) = f.at(x, y);
                sum += (b.sample(x as f32 + u, y as f32 + v) - a.at(x, y)).abs();
                n += 1;
            }
        }
        sum / n as f32
    }

    #[test]
    fn agrees_with_opencv_on_real_frames() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/flow");
        for pair in 0..2 {
            let load = |name: String| Plane::luma(&image::open(dir.join(name)).unwrap().to_rgb8());
            let (a, b) = (load(format!("pair{pair}_a.png")), load(format!("pair{pair}_b.png")));
            let raw = std::fs::read(dir.join(format!("pair{pair}_opencv_medium.i16"))).unwrap();
            let values: Vec<f32> =
                raw.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]]) as f32 / 64.0).collect();
            let opencv = Flow {
                width: a.width,
                height: a.height,
                u: values.iter().step_by(2).copied().collect(),
                v: values.iter().skip(1).step_by(2).copied().collect(),
            };
            let ours = dis(&a, &b, &DisParams::for_size(a.width, a.height));
            let still = Flow::zero(a.width, a.height);
            let (e_ours, e_opencv, e_still) =
                (photometric(&a, &b, &ours), photometric(&a, &b, &opencv), photometric(&a, &b, &still));
            // Measured: pair 0 5.9 vs 7.7 (still 14.3), pair 1 10.0 vs 11.2 (18.0).
            assert!(e_ours < 1.1 * e_opencv, "pair {pair}: ours explains b to {e_ours}, OpenCV to {e_opencv}");
            assert!(e_ours < 0.75 * e_still, "pair {pair}: {e_ours} vs no motion {e_still}");

            let close = ours.u.iter().zip(&ours.v).zip(opencv.u.iter().zip(&opencv.v));
            let close = close.filter(|((u, v), (ou, ov))| (*u - *ou).powi(2) + (*v - *ov).powi(2) < 1.0).count();
            let close = close as f32 / ours.u.len() as f32;
            // Measured: pair 0 88% within 1 px (0.58 px apart on average), pair 1 79% (1.6 px:
            // the two disagree where the rabbit's ears leave the frame at the top).
            assert!(close > 0.7, "pair {pair}: {close} of pixels within 1 px of OpenCV's flow");
        }
    }

    #[test]
    fn resizing_scales_the_vectors() {
        let mut f = Flow::zero(4, 2);
        f.u.iter_mut().for_each(|u| *u = 1.5);
        f.v.iter_mut().for_each(|v| *v = -1.0);
        let g = f.resized(8, 8);
        assert!(g.u.iter().all(|&u| (u - 3.0).abs() < 1e-6) && g.v.iter().all(|&v| (v + 4.0).abs() < 1e-6));
        // Empty flows and planes stretch and sample to nothing, without a panic.
        assert_eq!(Flow::zero(0, 0).resized(3, 2), Flow::zero(3, 2));
        assert_eq!(Flow::zero(0, 0).sample(1.0, 1.0), (0.0, 0.0));
        assert_eq!(Plane { width: 0, height: 0, data: vec![] }.sample(0.5, 0.5), 0.0);
    }
}
