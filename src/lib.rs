//! deepdream: octave gradient ascent on pretrained ImageNet networks.
//!
//! Data flows one way: [`config`] resolves flags and presets into a validated [`config::Job`];
//! a [`source`] yields frames, [`dream`] runs the octave loop on a [`model::FeatureNet`]
//! through the project's own differentiable [`ops`], and a [`sink`] writes the result;
//! [`pipeline`] wires them with threads and bounded channels. The library never prints or
//! exits; progress goes through [`dream::Progress`] and [`pipeline::FrameProgress`], whose
//! return values cancel.

pub mod config;
pub mod device;
pub mod dream;
pub mod error;
pub mod farm;
pub mod io;
pub mod media;
pub mod model;
pub mod ops;
pub mod pipeline;
pub mod sink;
pub mod source;

pub use error::{Error, Result};
