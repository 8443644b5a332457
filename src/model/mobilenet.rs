//! MobileNetV2 (Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
//! 2018), torchvision's layout: `features.0` .. `features.18`, `classifier.1`. ReLU6, BN eps
//! 1e-5, ImageNet mean/std. Taps: `features.N`.

use super::Normalization;
use super::network::{Block, Chain, GlobalAvgPool, Network};
use super::weights::Weights;
use crate::Result;
use crate::ops::{Activation, ConvSpec, Padding};

const EPS: f64 = 1e-5;
/// (expansion t, output channels c, repeats n, first stride s), from the paper's Table 2.
const SETTINGS: [(usize, usize, usize, usize); 7] =
    [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)];

fn spec(k: usize, stride: usize, groups: usize, act: Activation) -> ConvSpec {
    ConvSpec { stride: (stride, stride), padding: Padding::symmetric(k / 2, k / 2), groups, activation: act }
}

pub fn build(name: &str, w: &Weights) -> Result<Network> {
    let mut net = Network::new(name, Normalization::IMAGENET);
    net.push(
        "features.0",
        w.conv_bn("features.0.0", "features.0.1", EPS, [32, 3, 3, 3], spec(3, 2, 1, Activation::Relu6))?,
    );
    let mut in_ch = 32;
    let mut idx = 1;
    for (t, c, n, s) in SETTINGS {
        for r in 0..n {
            let stride = if r == 0 { s } else { 1 };
            let p = format!("features.{idx}.conv");
            let hidden = in_ch * t;
            let mut body: Vec<Box<dyn Block>> = Vec::new();
            let mut j = 0;
            if t != 1 {
                body.push(Box::new(w.conv_bn(
                    &format!("{p}.0.0"),
                    &format!("{p}.0.1"),
                    EPS,
                    [hidden, in_ch, 1, 1],
                    spec(1, 1, 1, Activation::Relu6),
                )?));
                j = 1;
            }
            body.push(Box::new(w.conv_bn(
                &format!("{p}.{j}.0"),
                &format!("{p}.{j}.1"),
                EPS,
                [hidden, 1, 3, 3],
                spec(3, stride, hidden, Activation::Relu6),
            )?));
            body.push(Box::new(w.conv_bn(
                &format!("{p}.{}", j + 1),
                &format!("{p}.{}", j + 2),
                EPS,
                [c, hidden, 1, 1],
                spec(1, 1, 1, Activation::Identity),
            )?));
            net.push_inverted_residual(format!("features.{idx}"), Chain(body), stride == 1 && in_ch == c);
            in_ch = c;
            idx += 1;
        }
    }
    net.push(
        format!("features.{idx}"),
        w.conv_bn(
            &format!("features.{idx}.0"),
            &format!("features.{idx}.1"),
            EPS,
            [1280, in_ch, 1, 1],
            spec(1, 1, 1, Activation::Relu6),
        )?,
    );
    net.head = Some(Box::new(Chain(vec![Box::new(GlobalAvgPool), Box::new(w.linear("classifier.1", 1280, 1000)?)])));
    Ok(net)
}
