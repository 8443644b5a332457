//! The fractal-zoom step between frames: scale about the centre (a crop of the border scaled
//! back up), an optional rotation and pan, with bilinear sampling at sub-pixel positions.
//! Each frame's transform is computed exactly from its parameters, so nothing rounds or drifts.
//! Where the view leaves the picture (zooming out, a rotation's corners, a pan) it sees the
//! picture mirrored at its edges, which the next dream paints over like any other content;
//! clamped edges would smear the border pixels into streaks that grow every frame.

use image::RgbImage;

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct ZoomTransform {
    /// Magnification per frame (1.04 = 4% closer each frame).
    pub zoom: f64,
    /// Rotation per frame, degrees counter-clockwise.
    pub rotate_deg: f64,
    /// Pan per frame in output pixels (positive x moves the view right, y down).
    pub pan: (f64, f64),
}

impl ZoomTransform {
    /// A per-second rate turned into the per-frame one at `fps`.
    pub fn per_second(zoom_per_second: f64, rotate_per_second: f64, pan_per_second: (f64, f64), fps: f64) -> Self {
        ZoomTransform {
            zoom: zoom_per_second.powf(1.0 / fps),
            rotate_deg: rotate_per_second / fps,
            pan: (pan_per_second.0 / fps, pan_per_second.1 / fps),
        }
    }

    pub fn is_identity(&self) -> bool {
        self.zoom == 1.0 && self.rotate_deg == 0.0 && self.pan == (0.0, 0.0)
    }

    /// The next frame seen through this transform: output pixel p samples the input at
    /// `centre + pan + R^-1 (p - centre) / zoom`, the picture mirrored beyond its edges.
    pub fn apply(&self, img: &RgbImage) -> RgbImage {
        if self.is_identity() {
            return img.clone();
        }
        let (w, h) = img.dimensions();
        let (cx, cy) = ((w as f64 - 1.0) / 2.0, (h as f64 - 1.0) / 2.0);
        // Image rows run down: a positive angle turns the picture counter-clockwise as seen.
        let (s, c) = self.rotate_deg.to_radians().sin_cos();
        let raw = img.as_raw();
        let mut out = vec![0u8; raw.len()];
        // Rows in parallel: on a GPU render this is the dream thread's main work between frames.
        use rayon::prelude::*;
        out.par_chunks_mut(w as usize * 3).enumerate().for_each(|(y, row)| {
            for (x, p) in row.chunks_exact_mut(3).enumerate() {
                let (dx, dy) = ((x as f64 - cx) / self.zoom, (y as f64 - cy) / self.zoom);
                let sx = cx + self.pan.0 + c * dx - s * dy;
                let sy = cy + self.pan.1 + s * dx + c * dy;
                let (x0, y0) = (sx.floor(), sy.floor());
                let (fx, fy) = (sx - x0, sy - y0);
                let (x0, y0) = (x0 as i64, y0 as i64);
                // The four neighbours' offsets, mirrored once for all three channels.
                let at = |x: i64, y: i64| (mirror(y, h as i64) * w as usize + mirror(x, w as i64)) * 3;
                let (a, b, c2, d) = (at(x0, y0), at(x0 + 1, y0), at(x0, y0 + 1), at(x0 + 1, y0 + 1));
                for ch in 0..3 {
                    let v = |o: usize| raw[o + ch] as f64;
                    let top = v(a) * (1.0 - fx) + v(b) * fx;
                    let bottom = v(c2) * (1.0 - fx) + v(d) * fx;
                    p[ch] = (top * (1.0 - fy) + bottom * fy).round().clamp(0.0, 255.0) as u8;
                }
            }
        });
        RgbImage::from_raw(w, h, out).expect("the input's size")
    }
}

use crate::ops::warp::mirror;

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 255 / (w - 1)) as u8, (y * 255 / (h - 1)) as u8, 128]))
    }

    #[test]
    fn identity_and_centre_are_fixed() {
        let img = gradient(31, 21);
        assert_eq!(ZoomTransform { zoom: 1.0, rotate_deg: 0.0, pan: (0.0, 0.0) }.apply(&img), img);
        let z = ZoomTransform { zoom: 1.5, rotate_deg: 0.0, pan: (0.0, 0.0) }.apply(&img);
        assert_eq!(z.get_pixel(15, 10), img.get_pixel(15, 10), "the centre stays put");
        // Magnified 1.5x, a horizontal ramp is stretched: 1/1.5 of the slope.
        let slope = |i: &RgbImage| i.get_pixel(18, 10)[0] as f64 - i.get_pixel(12, 10)[0] as f64;
        assert!((slope(&z) / slope(&img) - 1.0 / 1.5).abs() < 0.05, "{} vs {}", slope(&z), slope(&img));
    }

    #[test]
    fn zooming_out_mirrors_the_picture_beyond_its_edges() {
        let img = gradient(41, 21);
        let out = ZoomTransform { zoom: 0.8, rotate_deg: 0.0, pan: (0.0, 0.0) }.apply(&img);
        // Column 0 samples x = 20 - 20 / 0.8 = -5, the mirror of column 5.
        assert_eq!(out.get_pixel(0, 10)[0], img.get_pixel(5, 10)[0]);
        assert!(out.get_pixel(0, 10)[0] > out.get_pixel(2, 10)[0], "the ramp runs back toward the edge");
        assert_eq!(
            (super::mirror(-1, 5), super::mirror(5, 5), super::mirror(-9, 5), super::mirror(0, 1)),
            (1, 3, 1, 0)
        );
    }

    #[test]
    fn a_positive_rotation_turns_counter_clockwise_as_seen() {
        let mut img = RgbImage::new(7, 7);
        img.put_pixel(6, 0, image::Rgb([255, 0, 0])); // top right
        let turned = ZoomTransform { zoom: 1.0, rotate_deg: 90.0, pan: (0.0, 0.0) }.apply(&img);
        assert_eq!(turned.get_pixel(0, 0)[0], 255, "the top right turns to the top left");
    }

    #[test]
    fn sub_pixel_pan_moves_by_fractions() {
        let img = gradient(41, 11);
        let half = ZoomTransform { zoom: 1.0, rotate_deg: 0.0, pan: (0.5, 0.0) }.apply(&img);
        // Column 20 now shows the value halfway between columns 20 and 21.
        let want = (img.get_pixel(20, 5)[0] as f64 + img.get_pixel(21, 5)[0] as f64) / 2.0;
        assert!((half.get_pixel(20, 5)[0] as f64 - want).abs() <= 0.5);
    }

    #[test]
    fn per_second_rate_is_fps_independent() {
        let a = ZoomTransform::per_second(2.0, 10.0, (0.0, 0.0), 25.0);
        let b = ZoomTransform::per_second(2.0, 10.0, (0.0, 0.0), 50.0);
        assert!((a.zoom.powi(25) - 2.0).abs() < 1e-9 && (b.zoom.powi(50) - 2.0).abs() < 1e-9);
        assert!((a.rotate_deg * 25.0 - b.rotate_deg * 50.0).abs() < 1e-12);
    }
}
