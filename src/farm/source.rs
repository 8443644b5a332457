//! The input as the plan saw it. A chunk decodes from the keyframe before its first frame (a
//! seek, where the source can) rather than from the start, which on a feature film would cost
//! the late chunks hours of decoding; every frame it gets is checked against the plan's frame
//! table (timestamp, and a CRC-32 of its pixels), and takes its scene cut from the table (a
//! seeked decode has not seen the frames before it). A frame that does not match stops the
//! decode and is recorded: the chunk then decodes from the start, or, if that does not match
//! either, is refused (another input, or another ffmpeg).

use super::PlannedFrame;
use crate::Result;
use crate::media::AudioSource;
use crate::source::{Frame, FrameInput, SeekTo, Source, SourceInfo};
use image::RgbImage;
use std::sync::Mutex;

/// The CRC-32 of a frame's pixels, as the frame table keeps it.
pub fn frame_crc(image: &RgbImage) -> u32 {
    crc32fast::hash(image.as_raw())
}

/// A source checked against a plan's frame table, decoding from `seek` when given.
pub struct PlannedSource<'a> {
    inner: &'a dyn Source,
    frames: &'a [PlannedFrame],
    seek: Option<SeekTo>,
    mismatch: Mutex<Option<String>>,
}

impl<'a> PlannedSource<'a> {
    pub fn new(inner: &'a dyn Source, frames: &'a [PlannedFrame], seek: Option<SeekTo>) -> Self {
        PlannedSource { inner, frames, seek, mismatch: Mutex::new(None) }
    }

    /// The first frame that did not match the plan, said for the user.
    pub fn mismatch(&self) -> Option<String> {
        self.mismatch.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether this source seeks (a mismatch then means: decode from the start instead).
    pub fn seeks(&self) -> bool {
        self.seek.is_some()
    }
}

impl Source for PlannedSource<'_> {
    fn info(&self) -> &SourceInfo {
        self.inner.info()
    }

    fn decode(&self, needed: u64, emit: &mut dyn FnMut(Frame) -> bool) -> Result<()> {
        let mut check = |mut frame: Frame| {
            let planned = self.frames.get(frame.index as usize);
            let matches =
                planned.is_some_and(|p| p.pts == frame.pts && p.crc.is_none_or(|crc| crc == frame_crc(&frame.image)));
            match (planned, matches) {
                (Some(p), true) => {
                    frame.cut = p.cut;
                    emit(frame)
                }
                _ => {
                    let what = match planned {
                        None => format!("frame {} is beyond the plan's {}", frame.index + 1, self.frames.len()),
                        Some(p) if p.pts != frame.pts => {
                            format!("frame {} has timestamp {}, the plan {}", frame.index + 1, frame.pts, p.pts)
                        }
                        Some(_) => format!("frame {} has other pixels than in the plan", frame.index + 1),
                    };
                    *self.mismatch.lock().unwrap_or_else(|e| e.into_inner()) = Some(what);
                    false
                }
            }
        };
        match self.seek {
            Some(seek) => self.inner.decode_from(seek, needed, &mut check),
            None => self.inner.decode(needed, &mut check),
        }
    }

    fn dream_input(&self, frame: Frame, previous: Option<&RgbImage>) -> FrameInput {
        self.inner.dream_input(frame, previous)
    }

    fn audio(&self) -> Option<AudioSource> {
        self.inner.audio()
    }

    fn notes(&self) -> Vec<String> {
        self.inner.notes()
    }
}
