//! The types both ends of the pipeline share, so that neither sources nor sinks depend on
//! each other: exact frame rates and time bases, and the audio a render carries over.

use std::path::PathBuf;

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

/// The frames a sink receives: their size, nominal rate, and the time base of their
/// timestamps (seconds per tick).
#[derive(Clone, Copy, Debug)]
pub struct FrameFormat {
    pub width: u32,
    pub height: u32,
    pub rate: Rational,
    pub time_base: Rational,
}

/// Audio to copy from a source file into the output: from `start` seconds for `duration`.
#[derive(Clone, Debug)]
pub struct AudioSource {
    pub path: PathBuf,
    pub start: f64,
    pub duration: Option<f64>,
}

/// A path as ffmpeg must be given it: as a file, never as a URL (`take1:2.mp4` would name
/// the protocol `take1`).
#[cfg(feature = "video")]
pub(crate) fn ffmpeg_path(path: &std::path::Path) -> PathBuf {
    match path.to_string_lossy().contains(':') {
        true => PathBuf::from(format!("file:{}", path.display())),
        false => path.to_owned(),
    }
}

/// Initialises ffmpeg once (both the decoder and the encoders call it).
#[cfg(feature = "video")]
pub(crate) fn init_ffmpeg() -> crate::Result<()> {
    ffmpeg_next::init().map_err(|e| crate::Error::Unsupported(format!("cannot initialise ffmpeg: {e}")))?;
    // Quiet: every failure comes back as an error that deepdream reports in its one line.
    ffmpeg_next::log::set_level(ffmpeg_next::log::Level::Quiet);
    Ok(())
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
