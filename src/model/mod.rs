//! Feature networks: one file per architecture behind the [`FeatureNet`] trait, weight files,
//! and the ImageNet labels.

pub mod efficientnet;
pub mod labels;
pub mod pth;
pub mod weights;

use crate::{Error, Result};
use candle_core::Tensor;
use std::collections::HashMap;

/// Per-channel input normalisation in 0..255 pixel units: `input = (pixel - mean) / std`.
/// Each model owns its own, so presets never deal with it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normalization {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Normalization {
    /// `(x - 127) / 128`, the EfficientNet-Lite convention.
    pub const LITE: Normalization = Normalization { mean: [127.0; 3], std: [128.0; 3] };
    /// torchvision's ImageNet mean and std, on 0..1 inputs.
    pub const IMAGENET: Normalization = Normalization {
        mean: [0.485 * 255.0, 0.456 * 255.0, 0.406 * 255.0],
        std: [0.229 * 255.0, 0.224 * 255.0, 0.225 * 255.0],
    };

    /// Pixels (0..255, `[n, 3, h, w]`) to network input.
    pub fn apply(&self, pixels: &Tensor) -> Result<Tensor> {
        let (mean, std) = self.per_channel(pixels.device())?;
        Ok(pixels.broadcast_sub(&mean)?.broadcast_div(&std)?)
    }

    /// Network input back to pixels (not rounded or clamped).
    pub fn invert(&self, input: &Tensor) -> Result<Tensor> {
        let (mean, std) = self.per_channel(input.device())?;
        Ok(input.broadcast_mul(&std)?.broadcast_add(&mean)?)
    }

    /// The network-input values of pixel 0 and pixel 255, per channel, as `[1, 3, 1, 1]` tensors.
    pub fn valid_range(&self, device: &candle_core::Device) -> Result<(Tensor, Tensor)> {
        let lo: Vec<f32> = (0..3).map(|c| (0.0 - self.mean[c]) / self.std[c]).collect();
        let hi: Vec<f32> = (0..3).map(|c| (255.0 - self.mean[c]) / self.std[c]).collect();
        Ok((Tensor::from_vec(lo, (1, 3, 1, 1), device)?, Tensor::from_vec(hi, (1, 3, 1, 1), device)?))
    }

    fn per_channel(&self, device: &candle_core::Device) -> Result<(Tensor, Tensor)> {
        Ok((
            Tensor::from_vec(self.mean.to_vec(), (1, 3, 1, 1), device)?,
            Tensor::from_vec(self.std.to_vec(), (1, 3, 1, 1), device)?,
        ))
    }
}

/// What a forward pass returns: the requested taps by name, and logits if asked for.
#[derive(Debug, Default)]
pub struct Features {
    pub taps: HashMap<String, Tensor>,
    /// `[n, classes]`, only when the forward pass was asked for them.
    pub logits: Option<Tensor>,
}

/// A pretrained network that exposes named intermediate layers.
pub trait FeatureNet: Send + Sync {
    /// The zoo name, e.g. `efficientnet-lite0`.
    fn name(&self) -> &str;
    /// The layers an objective can use, in forward order.
    fn layer_names(&self) -> Vec<String>;
    fn normalization(&self) -> Normalization;
    /// Whether the network has an ImageNet classifier.
    fn has_classifier(&self) -> bool;
    /// Runs `x` (normalised input, `[n, 3, h, w]`) as far as needed for `taps` and, if `logits`,
    /// through the classifier. Unknown tap names are an error.
    fn forward(&self, x: &Tensor, taps: &[String], logits: bool) -> Result<Features>;

    /// Checks layer names before any work starts; the error lists the valid ones.
    fn check_layers(&self, names: &[String]) -> Result<()> {
        let valid = self.layer_names();
        for name in names {
            if !valid.contains(name) {
                return Err(Error::usage(format!(
                    "unknown layer '{name}' for {}; valid layers: {}",
                    self.name(),
                    valid.join(", ")
                )));
            }
        }
        Ok(())
    }
}

/// The models the zoo knows, with what `deepdream models` shows about them.
pub struct ModelInfo {
    pub name: &'static str,
    pub file: &'static str,
    pub about: &'static str,
}

pub const ZOO: &[ModelInfo] = &[ModelInfo {
    name: "efficientnet-lite0",
    file: "efficientnet_lite0.safetensors",
    about: "EfficientNet-Lite0, ImageNet (default; ships in models/)",
}];

pub const DEFAULT_MODEL: &str = "efficientnet-lite0";

/// Loads a zoo model by name from the first weights directory that has its file.
pub fn load(name: &str) -> Result<Box<dyn FeatureNet>> {
    let info = ZOO.iter().find(|m| m.name == name).ok_or_else(|| {
        let names: Vec<_> = ZOO.iter().map(|m| m.name).collect();
        Error::usage(format!("unknown model '{name}'; known models: {}", names.join(", ")))
    })?;
    let path = weights::find(info.file).ok_or_else(|| {
        Error::usage(format!(
            "no weights for {name}: {} is in none of {}; import them with `deepdream models import FILE --as {name}`",
            info.file,
            weights::search_dirs().iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
        ))
    })?;
    load_from(name, &path)
}

/// Loads zoo model `name` from a given safetensors file.
pub fn load_from(name: &str, path: &std::path::Path) -> Result<Box<dyn FeatureNet>> {
    let tensors = weights::load_safetensors(path)?;
    match name {
        "efficientnet-lite0" => Ok(Box::new(efficientnet::EfficientNetLite::new(name, &tensors, path)?)),
        _ => Err(Error::usage(format!("unknown model '{name}'"))),
    }
}
