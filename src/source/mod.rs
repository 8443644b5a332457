//! Frame sources, one trait: a still image looped (the zoom feeds back its own dreamed frames)
//! or a video decoded by ffmpeg (`video` feature). The pipeline runs [`Source::decode`] on its
//! decode stage and [`Source::dream_input`] on its dream stage; a source never sees a thread.

#[cfg(feature = "video")]
pub mod audio;
pub mod flow;
pub mod motion;
pub mod scenes;
#[cfg(feature = "video")]
pub mod video;

use crate::dream::ZoomTransform;
use crate::dream::animation::Animation;
use crate::media::{AudioSource, Rational};
use crate::{Error, Result};
use image::RgbImage;

/// One decoded frame: its position, its timestamp in the source's time base, its pixels, and
/// (for a video dreamed along the optical flow) its motion from the previous frame.
pub struct Frame {
    pub index: u64,
    pub pts: i64,
    pub image: RgbImage,
    pub motion: Option<Box<motion::Motion>>,
    /// The frame starts a new shot ([`scenes::CutDetector`]): the temporal history restarts.
    pub cut: bool,
}

/// A frame to start decoding at: its index, and its timestamp as [`Frame::pts`] gives it.
#[derive(Clone, Copy, Debug)]
pub struct SeekTo {
    pub index: u64,
    pub pts: i64,
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
    /// Length in seconds when the container knows it.
    pub seconds: Option<f64>,
    pub has_audio: bool,
}

/// The image the dream stage works on for one frame, and whether it continues the previous
/// dreamed frame (then it gets the job's continuing-frame settings) or starts afresh.
pub struct FrameInput {
    pub image: RgbImage,
    pub continues: bool,
}

/// Where frames come from.
pub trait Source: Sync {
    fn info(&self) -> &SourceInfo;
    /// Hands every frame, in order, to `emit` until it returns false (the decode stage).
    /// Frames before `needed` (already rendered, on a resume) are handed on too, but need
    /// not carry their motion.
    fn decode(&self, needed: u64, emit: &mut dyn FnMut(Frame) -> bool) -> Result<()>;
    /// [`Source::decode`] from about frame `from.index` (a farm chunk's): a source that can
    /// seek starts there, with the indices and timestamps a decode from the start gives, and
    /// no scene cuts known for its first frames; the others decode from the start.
    fn decode_from(&self, from: SeekTo, needed: u64, emit: &mut dyn FnMut(Frame) -> bool) -> Result<()> {
        let _ = from;
        self.decode(needed, emit)
    }
    /// What to dream for `frame`, given the previous dreamed frame (none for the first).
    fn dream_input(&self, frame: Frame, previous: Option<&RgbImage>) -> FrameInput;
    /// Audio to carry into the output.
    fn audio(&self) -> Option<AudioSource> {
        None
    }
    /// What the user should know after decoding (damaged data skipped, ...).
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }
}

/// A still image dreamed into `frames` frames of fractal zoom: each frame after the first is
/// the previous dreamed frame, transformed.
pub struct StillLoop {
    image: RgbImage,
    transform: ZoomTransform,
    /// Keyframed zoom, turn and pan (over `transform`).
    animation: Animation,
    /// A sound track for the output.
    sound: Option<AudioSource>,
    info: SourceInfo,
}

impl StillLoop {
    pub fn new(image: RgbImage, frames: u64, rate: Rational, transform: ZoomTransform) -> Result<StillLoop> {
        if frames == 0 {
            return Err(Error::internal("a zoom of zero frames"));
        }
        let info = SourceInfo {
            width: image.width(),
            height: image.height(),
            rate,
            time_base: rate.inverse(),
            frames: Some(frames),
            seconds: Some(frames as f64 / rate.as_f64()),
            has_audio: false,
        };
        Ok(StillLoop { image, transform, animation: Animation::default(), sound: None, info })
    }

    /// Frame k is made from frame k - 1 with the transform the timelines give at k.
    pub fn with_animation(self, animation: Animation) -> StillLoop {
        StillLoop { animation, ..self }
    }

    /// A sound track the output carries.
    pub fn with_audio(mut self, sound: Option<AudioSource>) -> StillLoop {
        self.info.has_audio = sound.is_some();
        StillLoop { sound, ..self }
    }
}

impl Source for StillLoop {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn decode(&self, _needed: u64, emit: &mut dyn FnMut(Frame) -> bool) -> Result<()> {
        for index in 0..self.info.frames.unwrap_or(0) {
            // Only the first frame reads the still; the others are made from the dream.
            let image = if index == 0 { self.image.clone() } else { RgbImage::new(0, 0) };
            if !emit(Frame { index, pts: index as i64, image, motion: None, cut: false }) {
                break;
            }
        }
        Ok(())
    }

    fn audio(&self) -> Option<AudioSource> {
        self.sound.clone()
    }

    fn dream_input(&self, frame: Frame, previous: Option<&RgbImage>) -> FrameInput {
        match previous {
            None if frame.index == 0 => FrameInput { image: frame.image, continues: false },
            None => FrameInput { image: self.image.clone(), continues: false },
            Some(prev) => {
                let transform = self.animation.transform(frame.index, self.transform);
                FrameInput { image: transform.apply(prev), continues: true }
            }
        }
    }
}

/// `(1 - w) * a + w * b`, per pixel.
pub fn blend_images(a: &RgbImage, b: &RgbImage, w: f64) -> RgbImage {
    let mut out = a.clone();
    for (o, &q) in out.iter_mut().zip(b.as_raw().iter()) {
        *o = ((1.0 - w) * *o as f64 + w * q as f64).round().clamp(0.0, 255.0) as u8;
    }
    out
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
