//! Frame sources: a still image looped (the zoom feeds back its own frames), or a video decoded
//! by ffmpeg (`video` feature).

#[cfg(feature = "video")]
pub mod video;

use image::RgbImage;

/// A rational number: frames per second, or seconds per timestamp tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rational {
    pub num: i32,
    pub den: i32,
}

impl Rational {
    pub fn new(num: i32, den: i32) -> Self {
        Rational { num, den }
    }

    pub fn as_f64(&self) -> f64 {
        self.num as f64 / self.den as f64
    }

    pub fn inverse(&self) -> Self {
        Rational { num: self.den, den: self.num }
    }

    /// A frame rate given as `30000/1001`, `29.97` or `25`.
    pub fn parse_rate(s: &str) -> Option<Self> {
        let r = match s.split_once('/') {
            Some((n, d)) => Rational::new(n.trim().parse().ok()?, d.trim().parse().ok()?),
            None => {
                let v: f64 = s.trim().parse().ok()?;
                // Exact for integers and for the NTSC family (x * 1000/1001).
                let ntsc = (v * 1001.0 / 1000.0).round();
                if (v - v.round()).abs() < 1e-9 {
                    Rational::new(v.round() as i32, 1)
                } else if (ntsc * 1000.0 / 1001.0 - v).abs() < 0.005 {
                    Rational::new(ntsc as i32 * 1000, 1001)
                } else {
                    Rational::new((v * 1000.0).round() as i32, 1000)
                }
            }
        };
        (r.num > 0 && r.den > 0).then_some(r)
    }
}

/// One decoded frame: its position, its timestamp in the source's time base, its pixels.
pub struct Frame {
    pub index: u64,
    pub pts: i64,
    pub image: RgbImage,
}

/// What the rest of the pipeline needs to know about a source.
#[derive(Clone, Debug)]
pub struct SourceInfo {
    pub width: u32,
    pub height: u32,
    /// Nominal frames per second (kept exactly, e.g. 30000/1001).
    pub rate: Rational,
    /// Seconds per timestamp tick of `Frame::pts`.
    pub time_base: Rational,
    /// Frame count when the container knows it.
    pub frames: Option<u64>,
    pub has_audio: bool,
}

/// Output size for an input of `w` x `h` shrunk to at most `max` on the longer side.
pub fn fit(w: u32, h: u32, max: Option<u32>) -> (u32, u32) {
    match max {
        Some(m) if w.max(h) > m => {
            let s = m as f64 / w.max(h) as f64;
            (((w as f64 * s).round() as u32).max(1), ((h as f64 * s).round() as u32).max(1))
        }
        _ => (w, h),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_exactly() {
        assert_eq!(Rational::parse_rate("30000/1001"), Some(Rational::new(30000, 1001)));
        assert_eq!(Rational::parse_rate("29.97"), Some(Rational::new(30000, 1001)));
        assert_eq!(Rational::parse_rate("25"), Some(Rational::new(25, 1)));
        assert_eq!(Rational::parse_rate("12.5"), Some(Rational::new(12500, 1000)));
        assert_eq!(Rational::parse_rate("0"), None);
        assert_eq!(Rational::parse_rate("abc"), None);
    }
}
