//! The library's one error type. `main.rs` maps it to messages and exit codes through
//! [`Error::exit_code`]: 2 means "the input or the flags are wrong" and nothing else.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The user asked for something that does not exist or cannot work (bad flag value,
    /// unknown layer). The message names the flag. Exit code 2.
    #[error("{0}")]
    Usage(String),

    /// A preset file is malformed or holds a bad value; `reason` names the line and key.
    #[error("preset {path}: {reason}")]
    Preset { path: PathBuf, reason: String },

    /// An input image cannot be read.
    #[error("cannot read image {path}: {reason}")]
    Image { path: PathBuf, reason: String },

    /// An input video cannot be read.
    #[error("cannot read video {path}: {reason}")]
    Video { path: PathBuf, reason: String },

    /// The output path cannot be used (bad extension, missing directory, not writable).
    #[error("cannot write {path}: {reason}")]
    Output { path: PathBuf, reason: String },

    /// Writing failed after the output was accepted (disk full, an encoder error). Exit code 1.
    #[error("writing {path} failed: {reason}")]
    Write { path: PathBuf, reason: String },

    /// A weights file is missing, or is not the model it claims to be.
    #[error("{path}: {reason}")]
    Weights { path: PathBuf, reason: String },

    /// This build or this ffmpeg cannot do what was asked (no CUDA, no encoder). Exit code 1.
    #[error("{0}")]
    Unsupported(String),

    /// A download failed (the network, the server, or a checksum). Exit code 1.
    #[error("download of {url} failed: {reason}")]
    Network { url: String, reason: String },

    /// A broken invariant: a bug in deepdream, never the user's doing. Exit code 1.
    #[error("internal error (a bug in deepdream): {0}")]
    Internal(String),

    /// A progress callback asked to stop (Ctrl-C). Exit code 130.
    #[error("interrupted")]
    Cancelled,

    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn usage(msg: impl Into<String>) -> Self {
        Error::Usage(msg.into())
    }

    pub fn internal(msg: impl Into<String>) -> Self {
        Error::Internal(msg.into())
    }

    /// True for mistakes in what the user asked for or gave (exit code 2).
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            Error::Usage(_)
                | Error::Preset { .. }
                | Error::Image { .. }
                | Error::Video { .. }
                | Error::Output { .. }
                | Error::Weights { .. }
        )
    }

    /// The message as one line for a terminal: candle's errors keep only their first line (a
    /// backtrace can follow it); every other message is kept whole, with its control
    /// characters escaped (see [`printable`]).
    pub fn one_line(&self) -> String {
        let msg = self.to_string();
        match self {
            Error::Candle(_) => printable(msg.lines().next().unwrap_or("unknown error")).into_owned(),
            _ => printable(&msg).into_owned(),
        }
    }

    /// The process exit code for this error: 2 for user mistakes, 130 for an interruption,
    /// 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Cancelled => 130,
            e if e.is_user_error() => 2,
            _ => 1,
        }
    }
}

/// `text` with control characters escaped (`\n`, `\u{1b}`): a file name holding a newline
/// or a terminal escape sequence is shown, not obeyed, and a message stays one line.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    text.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

/// A number as a person reads it: `0.5`, `25`, and `1e-320` or `1e308` rather than hundreds
/// of digits.
pub fn number(v: f64) -> String {
    if v != 0.0 && v.is_finite() && !(1e-4..1e15).contains(&v.abs()) { format!("{v:e}") } else { format!("{v}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_stay_short() {
        assert_eq!(number(0.5), "0.5");
        assert_eq!(number(25.0), "25");
        assert_eq!(number(1e-320), "1e-320");
        assert_eq!(number(-1e308), "-1e308");
        assert_eq!(number(f64::INFINITY), "inf");
    }

    #[test]
    fn control_characters_are_shown_not_obeyed() {
        assert_eq!(printable("plain name.png"), "plain name.png");
        assert_eq!(printable("a\nb\x1b[31m.png\t"), "a\\nb\\u{1b}[31m.png\\t");
        let e = Error::Image { path: "x\ny.png".into(), reason: "gone".into() };
        assert_eq!(e.one_line(), "cannot read image x\\ny.png: gone");
    }
}
