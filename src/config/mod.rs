//! Presets (TOML, unknown keys rejected) and command-line flags, resolved into one validated,
//! serialisable [`Job`] before any work starts. Every setting's default and range check lives
//! here once ([`job`]), and every error names its origin: the flag the user typed, or the
//! preset file, line and key ([`origin`]).

pub mod flags;
pub mod job;
pub mod origin;
pub mod parse;
pub mod preset;
pub mod settings;

pub use flags::{DreamFlags, EncodeFlags, VideoFlags, ZoomFlags};
pub use job::{Job, VideoPlan, Work, ZoomPlan};
pub use origin::{Origin, Rule, Sourced};
pub use parse::{parse_classes, parse_layers, parse_size};
pub use preset::{BUILTIN_PRESETS, DEFAULT_PRESET, PresetFile, VIDEO_PRESET, ZOOM_PRESET, parse_preset};
pub use settings::flag;

#[cfg(test)]
mod tests;
