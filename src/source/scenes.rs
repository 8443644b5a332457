//! Hard cuts between shots, found from the source frames alone, so that a farm's plan and
//! every renderer (one machine or a chunk) find the same ones: the temporal history of a
//! video render restarts there, and a farm cuts its chunks there without a seam.
//!
//! The score is that of ffmpeg's `scdet` filter: the mean absolute difference of two
//! consecutive frames on a 0..100 scale, less the previous frame's difference (so a steady
//! pan or a flickering light does not count as a cut), compared with a threshold. It runs on
//! a luma thumbnail about 64 pixels wide, a few microseconds a frame. Written here because
//! the one crate that detects scenes (`av-scenechange`) drags in an AV1 encoder.

use image::RgbImage;

/// The thumbnail's longer side: large enough to tell two shots apart, small enough to ignore
/// noise and compression artefacts.
const THUMB: u32 = 64;

/// Finds hard cuts in a sequence of frames handed to it in order.
pub struct CutDetector {
    threshold: f64,
    previous: Option<Vec<f32>>,
    previous_difference: f64,
}

impl CutDetector {
    /// `threshold` on the 0..100 scale (ffmpeg's default is 10); 0 finds none.
    pub fn new(threshold: f64) -> CutDetector {
        CutDetector { threshold, previous: None, previous_difference: 0.0 }
    }

    /// Whether `frame` starts a new shot (never the first frame).
    pub fn next(&mut self, frame: &RgbImage) -> bool {
        if self.threshold <= 0.0 {
            return false;
        }
        let thumb = thumbnail(frame);
        let cut = match &self.previous {
            Some(prev) if prev.len() == thumb.len() => {
                let mafd = prev.iter().zip(&thumb).map(|(a, b)| (a - b).abs() as f64).sum::<f64>()
                    / thumb.len().max(1) as f64
                    * (100.0 / 255.0);
                let score = mafd.min((mafd - self.previous_difference).abs());
                self.previous_difference = mafd;
                score >= self.threshold
            }
            _ => false,
        };
        self.previous = Some(thumb);
        cut
    }
}

/// The frame's luma averaged over cells, about [`THUMB`] on the longer side.
fn thumbnail(frame: &RgbImage) -> Vec<f32> {
    let (w, h) = frame.dimensions();
    let scale = (w.max(h) as f64 / THUMB as f64).max(1.0);
    let (tw, th) = (((w as f64 / scale).round() as u32).max(1), ((h as f64 / scale).round() as u32).max(1));
    let mut sum = vec![0f32; (tw * th) as usize];
    let mut count = vec![0u32; (tw * th) as usize];
    for (x, y, p) in frame.enumerate_pixels() {
        let cell = ((y * th / h) * tw + x * tw / w) as usize;
        sum[cell] += 0.299 * p[0] as f32 + 0.587 * p[1] as f32 + 0.114 * p[2] as f32;
        count[cell] += 1;
    }
    sum.iter().zip(&count).map(|(s, &c)| s / c.max(1) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(v: u8) -> RgbImage {
        RgbImage::from_pixel(80, 45, image::Rgb([v, v, v]))
    }

    #[test]
    fn a_new_picture_is_a_cut_and_a_steady_change_is_not() {
        let mut d = CutDetector::new(10.0);
        // A steady brightening, 20 levels a frame (8 on the 0..100 scale): no cut.
        let cuts: Vec<bool> = (0..5).map(|i| d.next(&flat(20 * i))).collect();
        assert_eq!(cuts, [false; 5]);
        // Then another picture altogether.
        let mut other = flat(80);
        for (x, _, p) in other.enumerate_pixels_mut() {
            *p = image::Rgb(if x < 40 { [250, 250, 250] } else { [0, 0, 0] });
        }
        assert!(d.next(&other));
        assert!(!d.next(&other), "the frame after a cut continues the new shot");
        assert!(!CutDetector::new(0.0).next(&other));
    }
}
