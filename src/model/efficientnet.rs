//! EfficientNet-Lite (Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional
//! Neural Networks", 2019; the Lite variants drop squeeze-excite, use ReLU6 and fix the stem and
//! head). Weights in the layout of `efficientnet_lite_pytorch`: `_conv_stem`, `_bn0`,
//! `_blocks.N.{_expand_conv,_bn0,_depthwise_conv,_bn1,_project_conv,_bn2}`, `_conv_head`,
//! `_bn1`, `_fc`. Padding is TensorFlow "SAME" from the actual input size, so any image size
//! works. Taps: `stem`, `block0..blockN` (outputs of `_blocks.N`), `head`.

use super::Normalization;
use super::network::{Block, Chain, GlobalAvgPool, Network};
use super::weights::Weights;
use crate::ops::{Activation, ConvSpec, Padding};
use crate::{Error, Result};
use std::path::Path;

const BN_EPS: f64 = 1e-3;
/// Stride of the first block of each of the seven stages (the rest have stride 1).
const STAGE_STRIDES: [usize; 7] = [1, 2, 2, 2, 1, 2, 1];

fn spec(stride: usize, groups: usize, activation: Activation) -> ConvSpec {
    ConvSpec { stride: (stride, stride), padding: Padding::Same, groups, activation }
}

/// Conv + folded BN with the conv's shape read off the weight file.
fn conv_bn(w: &Weights, conv: &str, bn: &str, spec: ConvSpec) -> Result<crate::ops::Conv2d> {
    let dims = w.get(&format!("{conv}.weight"))?.dims4()?;
    w.conv_bn(conv, bn, BN_EPS, [dims.0, dims.1, dims.2, dims.3], spec)
}

/// Builds Lite0..Lite4 from their weights: block count, kernels, expansion and channels are
/// read off the weight shapes.
pub fn build(name: &str, w: &Weights, path: &Path) -> Result<Network> {
    let mut net = Network::new(name, Normalization::LITE);
    let stem = conv_bn(w, "_conv_stem", "_bn0", spec(2, 1, Activation::Relu6))?;
    let mut in_ch = stem.out_channels();
    net.push("stem", stem);
    let mut stage = 0;
    let mut i = 0;
    while w.contains(&format!("_blocks.{i}._project_conv.weight")) {
        let p = format!("_blocks.{i}");
        let out_ch = w.get(&format!("{p}._project_conv.weight"))?.dim(0)?;
        let starts_stage = out_ch != in_ch;
        if starts_stage && i > 0 {
            stage += 1;
        }
        let stride = if starts_stage { *STAGE_STRIDES.get(stage).unwrap_or(&1) } else { 1 };
        let mut body: Vec<Box<dyn Block>> = Vec::new();
        let mut mid = in_ch;
        if w.contains(&format!("{p}._expand_conv.weight")) {
            let expand = conv_bn(w, &format!("{p}._expand_conv"), &format!("{p}._bn0"), spec(1, 1, Activation::Relu6))?;
            mid = expand.out_channels();
            body.push(Box::new(expand));
        }
        body.push(Box::new(conv_bn(
            w,
            &format!("{p}._depthwise_conv"),
            &format!("{p}._bn1"),
            spec(stride, mid, Activation::Relu6),
        )?));
        body.push(Box::new(conv_bn(
            w,
            &format!("{p}._project_conv"),
            &format!("{p}._bn2"),
            spec(1, 1, Activation::Identity),
        )?));
        net.push_inverted_residual(format!("block{i}"), Chain(body), stride == 1 && in_ch == out_ch);
        in_ch = out_ch;
        i += 1;
    }
    if i == 0 {
        return Err(Error::Weights {
            path: path.to_owned(),
            reason: "no EfficientNet blocks (_blocks.N) found".into(),
        });
    }
    // The shapes come from the file, so another variant's weights would build too: check the
    // variant's depth and width (a Lite0 file imported as Lite1 once dreamed as Lite0).
    let expected = match name {
        "efficientnet-lite0" => Some((16, 320)),
        "efficientnet-lite1" => Some((21, 320)),
        "efficientnet-lite2" => Some((21, 352)),
        _ => None,
    };
    if let Some((blocks, width)) = expected.filter(|&e| e != (i, in_ch)) {
        return Err(Error::Weights {
            path: path.to_owned(),
            reason: format!(
                "not {name}: {i} blocks ending in {in_ch} channels, where {name} has {blocks} ending in {width}"
            ),
        });
    }
    let head = conv_bn(w, "_conv_head", "_bn1", spec(1, 1, Activation::Relu6))?;
    let features = head.out_channels();
    net.push("head", head);
    let classes = w.get("_fc.weight")?.dim(0)?;
    net.head = Some(Box::new(Chain(vec![Box::new(GlobalAvgPool), Box::new(w.linear("_fc", features, classes)?)])));
    Ok(net)
}
