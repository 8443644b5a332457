//! ResNet-50 (He et al., "Deep Residual Learning for Image Recognition", 2015), torchvision's
//! layout (stride on the 3x3 conv, "v1.5"): `conv1`, `bn1`, `layerN.M.{conv1..3,bn1..3,
//! downsample}`, `fc`. Taps: `stem` (after the max pool), `layer1 .. layer4`, and each block
//! `layerN.M`.

use super::Normalization;
use super::network::{Chain, GlobalAvgPool, Network, Residual};
use super::weights::Weights;
use crate::Result;
use crate::ops::{Activation, ConvSpec, Padding, Pool2d};

const EPS: f64 = 1e-5;
const BLOCKS: [usize; 4] = [3, 4, 6, 3];

fn spec(k: usize, stride: usize, act: Activation) -> ConvSpec {
    ConvSpec { stride: (stride, stride), padding: Padding::symmetric(k / 2, k / 2), groups: 1, activation: act }
}

pub fn build(name: &str, w: &Weights) -> Result<Network> {
    let mut net = Network::new(name, Normalization::IMAGENET);
    let conv1 = w.conv_bn("conv1", "bn1", EPS, [64, 3, 7, 7], spec(7, 2, Activation::Relu))?;
    net.push("stem", Chain(vec![Box::new(conv1), Box::new(Pool2d::max(3, 2, 1, false))]));
    let mut in_ch = 64;
    for (l, &n) in BLOCKS.iter().enumerate() {
        let width = 64 << l;
        for b in 0..n {
            let p = format!("layer{}.{b}", l + 1);
            let stride = if b == 0 && l > 0 { 2 } else { 1 };
            let body = Chain(vec![
                Box::new(w.conv_bn(
                    &format!("{p}.conv1"),
                    &format!("{p}.bn1"),
                    EPS,
                    [width, in_ch, 1, 1],
                    spec(1, 1, Activation::Relu),
                )?),
                Box::new(w.conv_bn(
                    &format!("{p}.conv2"),
                    &format!("{p}.bn2"),
                    EPS,
                    [width, width, 3, 3],
                    spec(3, stride, Activation::Relu),
                )?),
                Box::new(w.conv_bn(
                    &format!("{p}.conv3"),
                    &format!("{p}.bn3"),
                    EPS,
                    [width * 4, width, 1, 1],
                    spec(1, 1, Activation::Identity),
                )?),
            ]);
            let shortcut = match b {
                0 => Some(Box::new(w.conv_bn(
                    &format!("{p}.downsample.0"),
                    &format!("{p}.downsample.1"),
                    EPS,
                    [width * 4, in_ch, 1, 1],
                    spec(1, stride, Activation::Identity),
                )?) as _),
                _ => None,
            };
            net.push(p, Residual { body: Box::new(body), shortcut, relu_after: true });
            in_ch = width * 4;
        }
        net.alias_last(format!("layer{}", l + 1));
    }
    net.head = Some(Box::new(Chain(vec![Box::new(GlobalAvgPool), Box::new(w.linear("fc", 2048, 1000)?)])));
    Ok(net)
}
