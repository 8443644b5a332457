//! What the optical flow says about a video frame: where each of its pixels was in the
//! previous frame, which of them can be trusted, and whether the frame starts a new shot.
//!
//! The trust mask is the forward-backward consistency check of Sundaram, Brox and Keutzer
//! (2010) as Ruder, Dosovitskiy and Brox use it for video style transfer (2016): a pixel is
//! occluded when following the backward flow and then the forward flow does not lead back to
//! it, on a motion boundary when the flow changes sharply around it, and lost when the flow
//! leads out of the frame. The thresholds are theirs (and the temporal metric's).

use super::flow::{DisParams, Flow, Plane, dis};
use image::RgbImage;

/// How a video frame continues the previous dreamed frame.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub enum Continuation {
    /// The previous dreamed frame is carried along the optical flow onto this frame and mixed
    /// in with weight `warp` where the flow can be trusted ([`continue_from`]); then a light
    /// dream. A frame matching fewer than `cut` of its pixels starts a new shot: the source
    /// alone, the full dream.
    Flow { warp: f64, cut: f64 },
    /// `blend` of the previous dreamed frame mixed into every pixel, then the full dream (the
    /// 2015 look; the dream stays where it is on the screen).
    Blend { blend: f64 },
}

/// The motion from the previous source frame to this one.
#[derive(Clone, Debug)]
pub struct Motion {
    /// Flow from this frame back to the previous one: pixel `x` here was at `x + back(x)`.
    pub back: Flow,
    /// 1 where the pixel was seen in the previous frame (consistent, inside), else 0.
    pub mask: Vec<f32>,
    /// The fraction of pixels with mask 1.
    pub matched: f64,
}

impl DisParams {
    /// The settings for frames of `width` x `height`: the finest level solved is about 320 to
    /// 640 pixels on its longer side (finer costs more than the dream gains from it).
    pub fn for_size(width: usize, height: usize) -> DisParams {
        let side = width.max(height).max(1) as f64;
        let finest_scale = (side / 320.0).log2().floor().clamp(0.0, 4.0) as u32;
        DisParams { finest_scale, ..DisParams::default() }
    }
}

/// The motion from `previous` to `current` (two source frames of one size).
pub fn motion(previous: &Plane, current: &Plane, params: &DisParams) -> Motion {
    let back = dis(current, previous, params);
    let forward = dis(previous, current, params);
    let (w, h) = (back.width, back.height);
    let mut mask = vec![0.0f32; w * h];
    let mut matched = 0usize;
    for y in 0..h {
        for x in 0..w {
            let (u, v) = back.at(x, y);
            let (px, py) = (x as f32 + u, y as f32 + v);
            if px < 0.0 || py < 0.0 || px > (w - 1) as f32 || py > (h - 1) as f32 {
                continue; // came from outside the frame
            }
            let (fu, fv) = forward.sample(px, py);
            let there_and_back = (fu + u).powi(2) + (fv + v).powi(2);
            if there_and_back > 0.01 * (fu * fu + fv * fv + u * u + v * v) + 0.5 {
                continue; // occluded
            }
            let (ux, vx) = difference(&back, x, y, 1, 0);
            let (uy, vy) = difference(&back, x, y, 0, 1);
            if ux * ux + uy * uy + vx * vx + vy * vy > 0.01 * (u * u + v * v) + 0.002 {
                continue; // a motion boundary
            }
            mask[y * w + x] = 1.0;
            matched += 1;
        }
    }
    Motion { back, mask, matched: matched as f64 / (w * h).max(1) as f64 }
}

/// The flow's forward difference at `(x, y)` along `(dx, dy)` (zero at the far border).
fn difference(f: &Flow, x: usize, y: usize, dx: usize, dy: usize) -> (f32, f32) {
    let (nx, ny) = ((x + dx).min(f.width - 1), (y + dy).min(f.height - 1));
    let ((u0, v0), (u1, v1)) = (f.at(x, y), f.at(nx, ny));
    (u1 - u0, v1 - v0)
}

/// `image` (a previous frame) moved onto the current one: pixel `x` takes `image(x + back(x))`,
/// bilinear, the border extended.
pub fn warp(image: &RgbImage, back: &Flow) -> RgbImage {
    let mut out = RgbImage::new(image.width(), image.height());
    warp_each(image, back, |i, rgb| {
        for (o, v) in out.as_mut()[3 * i..3 * i + 3].iter_mut().zip(rgb) {
            *o = (v + 0.5).clamp(0.0, 255.0) as u8;
        }
    });
    out
}

/// Calls `f(pixel index, [r, g, b])` with `image` sampled at `x + back(x)` for every pixel.
fn warp_each(image: &RgbImage, back: &Flow, mut f: impl FnMut(usize, [f32; 3])) {
    assert_eq!((image.width() as usize, image.height() as usize), (back.width, back.height));
    let (w, h) = (back.width, back.height);
    let src = image.as_raw();
    let (xmax, ymax) = ((w - 1) as f32, (h - 1) as f32);
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            let (sx, sy) = ((x as f32 + back.u[i]).clamp(0.0, xmax), (y as f32 + back.v[i]).clamp(0.0, ymax));
            let (x0, y0) = (sx as usize, sy as usize);
            let (dx, dy) = (usize::from(x0 + 1 < w), usize::from(y0 + 1 < h));
            let (fx, fy) = (sx - x0 as f32, sy - y0 as f32);
            let (a, b) = (3 * (y0 * w + x0), 3 * ((y0 + dy) * w + x0));
            let mut rgb = [0.0f32; 3];
            for (c, v) in rgb.iter_mut().enumerate() {
                let (p00, p10) = (src[a + c] as f32, src[a + 3 * dx + c] as f32);
                let (p01, p11) = (src[b + c] as f32, src[b + 3 * dx + c] as f32);
                let top = p00 + fx * (p10 - p00);
                let bottom = p01 + fx * (p11 - p01);
                *v = top + fy * (bottom - top);
            }
            f(i, rgb);
        }
    }
}

/// Where a continuing frame's dream starts: on trusted pixels the previous dreamed frame
/// carried along the flow, mixed with the source as `(1 - weight) * source + weight * warped`;
/// elsewhere (occlusions, newly revealed areas) the source itself.
pub fn continue_from(source: &RgbImage, previous_dream: &RgbImage, motion: &Motion, weight: f64) -> RgbImage {
    assert_eq!(source.dimensions(), previous_dream.dimensions(), "a continuing frame keeps the video's size");
    let mut out = source.clone();
    let weight = weight as f32;
    warp_each(previous_dream, &motion.back, |i, rgb| {
        let m = motion.mask[i] * weight;
        for (c, carried) in rgb.into_iter().enumerate() {
            let o = &mut out.as_mut()[3 * i + c];
            *o = ((1.0 - m) * *o as f32 + m * carried + 0.5).clamp(0.0, 255.0) as u8;
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::source::flow::tests::photo_rgb as photo;

    /// `img` shifted right by `dx` and down by `dy` whole pixels, the revealed strip grey.
    fn shifted(img: &RgbImage, dx: u32, dy: u32) -> RgbImage {
        RgbImage::from_fn(img.width(), img.height(), |x, y| match (x.checked_sub(dx), y.checked_sub(dy)) {
            (Some(sx), Some(sy)) => *img.get_pixel(sx, sy),
            _ => image::Rgb([128, 128, 128]),
        })
    }

    #[test]
    fn a_pan_is_followed_and_the_revealed_strip_is_not_trusted() {
        let a = photo(240);
        let b = shifted(&a, 6, 3);
        let m = motion(&Plane::luma(&a), &Plane::luma(&b), &DisParams::for_size(240, 160));
        let w = a.width() as usize;
        // Inside: found, trusted, and the warp of the previous frame reproduces the current one.
        let (u, v) = m.back.at(120, 80);
        assert!((u + 6.0).abs() < 0.3 && (v + 3.0).abs() < 0.3, "({u}, {v})");
        assert_eq!(m.mask[80 * w + 120], 1.0);
        let warped = warp(&a, &m.back);
        let err: f64 = (20..140)
            .flat_map(|y| (20..220).map(move |x| (x, y)))
            .map(|(x, y)| (warped.get_pixel(x, y)[1] as f64 - b.get_pixel(x, y)[1] as f64).abs())
            .sum::<f64>()
            / (120.0 * 200.0);
        assert!(err < 3.0, "mean warp error {err}");
        // The strip the pan revealed (left 6 columns) came from outside: not trusted.
        let strip = (20..140).filter(|&y| m.mask[y * w + 2] == 1.0).count();
        assert!(strip < 10, "{strip} revealed pixels trusted");
        assert!(m.matched > 0.8, "{}", m.matched);
    }

    #[test]
    fn a_new_shot_matches_little() {
        let a = photo(240);
        let other = image::imageops::flip_vertical(&image::imageops::rotate180(&photo(240)));
        let other = image::imageops::resize(&other, 240, a.height(), image::imageops::FilterType::Triangle);
        let cut =
            motion(&Plane::luma(&a), &Plane::luma(&image::imageops::huerotate(&other, 90)), &DisParams::default());
        let same = motion(&Plane::luma(&a), &Plane::luma(&a), &DisParams::default());
        assert!(same.matched > 0.95, "{}", same.matched);
        assert!(cut.matched < 0.2, "{}", cut.matched);
    }

    #[test]
    fn continuing_mixes_only_trusted_pixels() {
        let source = RgbImage::from_pixel(20, 10, image::Rgb([100, 100, 100]));
        let dream = RgbImage::from_pixel(20, 10, image::Rgb([200, 0, 50]));
        let mut mask = vec![1.0; 200];
        mask[..100].iter_mut().for_each(|m| *m = 0.0);
        let m = Motion { back: Flow::zero(20, 10), mask, matched: 0.5 };
        let out = continue_from(&source, &dream, &m, 0.9);
        assert_eq!(out.get_pixel(3, 2).0, [100, 100, 100], "untrusted: the source");
        assert_eq!(out.get_pixel(3, 7).0, [190, 10, 55], "trusted: 0.1 source + 0.9 dream");
    }
}
