//! Frame sinks: MP4 (H.264), WebM (VP9) and GIF through ffmpeg (`video` feature), or a PNG
//! sequence. Every sink writes to a temporary path and moves it into place in `finish`, so an
//! interrupted or failed render never leaves a broken file under the output name.

#[cfg(feature = "video")]
pub mod encode;

use crate::media::{AudioSource, FrameFormat};
use crate::{Error, Result};
use image::RgbImage;
use std::path::{Path, PathBuf};

/// Where dreamed frames go. A sink is opened, written and finished on one thread (the
/// pipeline's encode stage), so it need not be `Send`.
pub trait FrameSink {
    /// Adds a frame at `pts` (in the time base the sink was opened with).
    fn write(&mut self, frame: &RgbImage, pts: i64) -> Result<()>;
    /// Completes the output and moves it into place.
    fn finish(self: Box<Self>) -> Result<()>;
}

/// Encoder settings.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SinkOptions {
    /// x264/VP9 constant rate factor (lower is better; 18 is visually lossless).
    pub crf: u32,
    /// x264 preset (ultrafast .. veryslow).
    pub preset: String,
}

/// The x264 presets, fastest first.
pub const X264_PRESETS: &[&str] =
    &["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "placebo"];

impl Default for SinkOptions {
    fn default() -> Self {
        SinkOptions { crf: 18, preset: "medium".into() }
    }
}

/// What an output path asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkKind {
    Mp4,
    WebM,
    Gif,
    Png,
}

impl SinkKind {
    /// `.mp4`/`.mov`/`.mkv` (H.264), `.webm` (VP9), `.gif`, or a directory (no extension, or
    /// a trailing slash) for numbered PNG frames.
    pub fn from_path(path: &Path) -> Result<Self> {
        let s = path.to_string_lossy();
        if s.ends_with('/') || path.extension().is_none() {
            return Ok(SinkKind::Png);
        }
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("mp4" | "m4v" | "mov" | "mkv") => Ok(SinkKind::Mp4),
            Some("webm") => Ok(SinkKind::WebM),
            Some("gif") => Ok(SinkKind::Gif),
            _ => Err(Error::Output {
                path: path.to_owned(),
                reason: "unsupported output: use .mp4, .mov, .mkv, .webm, .gif, or a directory for PNG frames".into(),
            }),
        }
    }
}

/// Warnings for encoder flags an output ignores: `--crf` means nothing to a GIF or PNG
/// frames, `--x264-preset` nothing but to H.264 (a WebM is VP9).
pub fn ignored_flags(kind: SinkKind, crf: bool, x264_preset: bool) -> Vec<String> {
    let what = match kind {
        SinkKind::Mp4 => return Vec::new(),
        SinkKind::WebM => "a WebM (VP9)",
        SinkKind::Gif => "a GIF",
        SinkKind::Png => "PNG frames",
    };
    let mut warnings = Vec::new();
    if crf && matches!(kind, SinkKind::Gif | SinkKind::Png) {
        warnings.push(format!("--crf does nothing for {what}; it sets the quality of .mp4, .mov, .mkv and .webm"));
    }
    if x264_preset {
        warnings.push(format!("--x264-preset does nothing for {what}; it applies to H.264 (.mp4, .mov, .mkv)"));
    }
    warnings
}

/// The sink an output path asks for, checked before any work: a file output must not be an
/// existing directory, and the directory it goes in must exist.
pub fn check_output(path: &Path) -> Result<SinkKind> {
    let kind = SinkKind::from_path(path)?;
    let bad = |reason: &str| Error::Output { path: path.to_owned(), reason: reason.into() };
    if path.to_str().is_none() {
        return Err(bad("the name is not valid UTF-8, which ffmpeg needs; rename it"));
    }
    if kind != SinkKind::Png && path.is_dir() {
        return Err(bad("is a directory; give a file name, e.g. out.mp4"));
    }
    let trimmed = PathBuf::from(path.to_string_lossy().trim_end_matches('/'));
    if let Some(parent) = trimmed.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.is_dir()
    {
        return Err(bad(&format!("no such directory {}", parent.display())));
    }
    Ok(kind)
}

/// Opens the sink an output path asks for; `audio` is copied into outputs that carry sound.
pub fn open(
    path: &Path,
    format: &FrameFormat,
    opts: &SinkOptions,
    audio: Option<&AudioSource>,
) -> Result<Box<dyn FrameSink>> {
    let kind = SinkKind::from_path(path)?;
    match kind {
        SinkKind::Png => Ok(Box::new(PngSequence::create(path)?)),
        #[cfg(feature = "video")]
        _ => encode::open(kind, path, format, opts, audio),
        #[cfg(not(feature = "video"))]
        _ => {
            let _ = (format, opts, audio);
            Err(Error::Unsupported(
                "this build has no video support (built without the `video` feature); write PNG frames to a directory instead"
                    .into(),
            ))
        }
    }
}

/// A directory holding nothing but `frame_NNNNN.png` files (an earlier PNG-sequence output).
fn is_frame_dir(dir: &Path) -> bool {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries.filter_map(|e| e.ok()).all(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with("frame_") && n.ends_with(".png")
        }),
        Err(_) => false,
    }
}

/// Numbered PNG frames (`frame_00001.png`, ...) in a directory, built beside it and renamed
/// into place when complete.
pub struct PngSequence {
    dir: PathBuf,
    staged: crate::io::Staged,
    count: u64,
}

impl PngSequence {
    pub fn create(dir: &Path) -> Result<Self> {
        let dir = PathBuf::from(dir.to_string_lossy().trim_end_matches('/'));
        if dir.exists() && !is_frame_dir(&dir) {
            return Err(Error::Output {
                path: dir,
                reason: "exists and is not a directory of frame_NNNNN.png files".into(),
            });
        }
        let staged = crate::io::Staged::new(&dir);
        std::fs::create_dir_all(staged.path())
            .map_err(|e| Error::Output { path: dir.clone(), reason: e.to_string() })?;
        Ok(PngSequence { dir, staged, count: 0 })
    }
}

impl FrameSink for PngSequence {
    fn write(&mut self, frame: &RgbImage, _pts: i64) -> Result<()> {
        self.count += 1;
        let name = format!("frame_{:05}.png", self.count);
        // Errors name the frame where it will be, not in the staging directory.
        crate::io::write_png_fast(frame, &self.staged.path().join(&name)).map_err(|e| match e {
            Error::Write { reason, .. } => Error::Write { path: self.dir.join(&name), reason },
            e => e,
        })
    }

    fn finish(self: Box<Self>) -> Result<()> {
        if self.dir.exists() && is_frame_dir(&self.dir) {
            // An earlier render's frames (checked at creation): replaced as a whole.
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        self.staged.commit()
    }
}
