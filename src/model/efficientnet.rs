//! EfficientNet-Lite (Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional
//! Neural Networks", 2019; the Lite variants drop squeeze-excite, use ReLU6 and fix the stem and
//! head). Weights in the layout of `efficientnet_lite_pytorch`: `_conv_stem`, `_bn0`,
//! `_blocks.N.{_expand_conv,_bn0,_depthwise_conv,_bn1,_project_conv,_bn2}`, `_conv_head`,
//! `_bn1`, `_fc`. Padding is TensorFlow "SAME" from the actual input size, so any image size
//! works. Taps: `stem`, `block0..blockN` (outputs of `_blocks.N`), `head`.

use super::weights::Weights;
use super::{FeatureNet, Features, Normalization};
use crate::ops::{Activation, Conv2d, ConvSpec, Padding};
use crate::{Error, Result};
use candle_core::{Tensor, D};
use std::path::Path;

const BN_EPS: f64 = 1e-3;
/// Stride of the first block of each of the seven stages (the rest have stride 1).
const STAGE_STRIDES: [usize; 7] = [1, 2, 2, 2, 1, 2, 1];

struct MbConv {
    expand: Option<Conv2d>,
    depthwise: Conv2d,
    project: Conv2d,
    residual: bool,
}

impl MbConv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut y = match &self.expand {
            Some(c) => c.forward(x)?,
            None => x.clone(),
        };
        y = self.depthwise.forward(&y)?;
        y = self.project.forward(&y)?;
        Ok(if self.residual { (y + x)? } else { y })
    }
}

pub struct EfficientNetLite {
    name: String,
    stem: Conv2d,
    blocks: Vec<MbConv>,
    head: Conv2d,
    fc_weight: Tensor,
    fc_bias: Tensor,
}

fn spec(stride: usize, groups: usize, activation: Activation) -> ConvSpec {
    ConvSpec { stride: (stride, stride), padding: Padding::Same, groups, activation }
}

impl EfficientNetLite {
    /// Builds the network from its weights; the block structure (count, kernels, expansion,
    /// channels) is read off the weight shapes, so Lite0..Lite4 all load.
    pub fn new(name: &str, w: &Weights, path: &Path) -> Result<Self> {
        let stem = w.conv_bn("_conv_stem", "_bn0", BN_EPS, spec(2, 1, Activation::Relu6))?;
        let mut blocks = Vec::new();
        let mut stage = 0;
        let mut in_ch = stem.out_channels();
        while w.contains(&format!("_blocks.{}._project_conv.weight", blocks.len())) {
            let p = format!("_blocks.{}", blocks.len());
            let project_w = w.get(&format!("{p}._project_conv.weight"))?;
            let out_ch = project_w.dim(0)?;
            let starts_stage = out_ch != in_ch;
            if starts_stage && !blocks.is_empty() {
                stage += 1;
            }
            let stride = if starts_stage { *STAGE_STRIDES.get(stage).unwrap_or(&1) } else { 1 };
            let expand = match w.contains(&format!("{p}._expand_conv.weight")) {
                true => Some(w.conv_bn(&format!("{p}._expand_conv"), &format!("{p}._bn0"), BN_EPS, spec(1, 1, Activation::Relu6))?),
                false => None,
            };
            let mid = expand.as_ref().map_or(in_ch, |c| c.out_channels());
            let depthwise =
                w.conv_bn(&format!("{p}._depthwise_conv"), &format!("{p}._bn1"), BN_EPS, spec(stride, mid, Activation::Relu6))?;
            let project = w.conv_bn(&format!("{p}._project_conv"), &format!("{p}._bn2"), BN_EPS, spec(1, 1, Activation::Identity))?;
            blocks.push(MbConv { expand, depthwise, project, residual: stride == 1 && in_ch == out_ch });
            in_ch = out_ch;
        }
        if blocks.is_empty() {
            return Err(Error::Weights { path: path.to_owned(), reason: "no EfficientNet blocks (_blocks.N) found".into() });
        }
        let head = w.conv_bn("_conv_head", "_bn1", BN_EPS, spec(1, 1, Activation::Relu6))?;
        Ok(EfficientNetLite {
            name: name.to_owned(),
            stem,
            blocks,
            head,
            fc_weight: w.get("_fc.weight")?.t()?.contiguous()?,
            fc_bias: w.get("_fc.bias")?,
        })
    }
}

impl FeatureNet for EfficientNetLite {
    fn name(&self) -> &str {
        &self.name
    }

    fn layer_names(&self) -> Vec<String> {
        let mut names = vec!["stem".to_owned()];
        names.extend((0..self.blocks.len()).map(|i| format!("block{i}")));
        names.push("head".to_owned());
        names
    }

    fn normalization(&self) -> Normalization {
        Normalization::LITE
    }

    fn has_classifier(&self) -> bool {
        true
    }

    fn forward(&self, x: &Tensor, taps: &[String], logits: bool) -> Result<Features> {
        self.check_layers(taps)?;
        let names = self.layer_names();
        let position = |t: &String| names.iter().position(|n| n == t).unwrap_or(0);
        // Stages run in `names` order: 0 = stem, 1..=blocks, blocks+1 = head.
        let last = if logits { names.len() - 1 } else { taps.iter().map(position).max().unwrap_or(0) };
        let mut out = Features::default();
        let keep = |i: usize, t: &Tensor, out: &mut Features| {
            if taps.contains(&names[i]) {
                out.taps.insert(names[i].clone(), t.clone());
            }
        };
        let mut h = self.stem.forward(x)?;
        keep(0, &h, &mut out);
        for (i, block) in self.blocks.iter().enumerate() {
            if i + 1 > last {
                return Ok(out);
            }
            h = block.forward(&h)?;
            keep(i + 1, &h, &mut out);
        }
        if last < names.len() - 1 {
            return Ok(out);
        }
        h = self.head.forward(&h)?;
        keep(names.len() - 1, &h, &mut out);
        if logits {
            let pooled = h.flatten_from(2)?.mean(D::Minus1)?;
            out.logits = Some(pooled.matmul(&self.fc_weight)?.broadcast_add(&self.fc_bias)?);
        }
        Ok(out)
    }
}
