//! deepdream: octave gradient ascent on pretrained ImageNet networks.
//!
//! Data flows one way: an image becomes a tensor ([`io`]), [`dream`] runs the octave loop on a
//! [`model::FeatureNet`] through the project's own differentiable [`ops`], and the result is
//! written back. The library never prints or exits; progress goes through [`dream::Progress`].

pub mod config;
pub mod device;
pub mod dream;
pub mod error;
pub mod io;
pub mod model;
pub mod ops;
pub mod pipeline;
pub mod sink;
pub mod source;

pub use error::{Error, Result};
