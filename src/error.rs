//! The library's one error type. `main.rs` maps it to messages and exit codes.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The user asked for something that does not exist or cannot work (bad flag value,
    /// unknown layer, bad preset). Exit code 2.
    #[error("{0}")]
    Usage(String),

    #[error("cannot read image {path}: {reason}")]
    Image { path: PathBuf, reason: String },

    #[error("cannot write {path}: {reason}")]
    Output { path: PathBuf, reason: String },

    #[error("{path}: {reason}")]
    Weights { path: PathBuf, reason: String },

    #[error("preset {path}: {reason}")]
    Preset { path: PathBuf, reason: String },

    /// The progress callback asked to stop.
    #[error("cancelled")]
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

    /// True for mistakes in what the user asked for (exit code 2), false for internal failures.
    pub fn is_user_error(&self) -> bool {
        !matches!(self, Error::Candle(_) | Error::Cancelled)
    }
}
