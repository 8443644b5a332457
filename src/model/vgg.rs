//! VGG16 and VGG19 (Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale
//! Image Recognition", 2014), torchvision's layout: `features.N`, `classifier.{0,3,6}`.
//! Taps `conv1_1 .. conv5_4` are taken after the ReLU; `pool1 .. pool5` after each max pool.

use super::Normalization;
use super::network::{AdaptiveAvgPoolFlat, Block, Chain, Network, Relu};
use super::weights::Weights;
use crate::Result;
use crate::ops::{Activation, ConvSpec, Padding, Pool2d};

/// Convolutions per block: VGG16 and VGG19.
pub const VGG16: [usize; 5] = [2, 2, 3, 3, 3];
pub const VGG19: [usize; 5] = [2, 2, 4, 4, 4];
const WIDTHS: [usize; 5] = [64, 128, 256, 512, 512];

pub fn build(name: &str, w: &Weights, blocks: [usize; 5]) -> Result<Network> {
    let mut net = Network::new(name, Normalization::IMAGENET);
    let spec = ConvSpec { padding: Padding::symmetric(1, 1), activation: Activation::Relu, ..Default::default() };
    let (mut idx, mut in_ch) = (0, 3);
    for (b, (&n, &width)) in blocks.iter().zip(&WIDTHS).enumerate() {
        for k in 0..n {
            net.push(
                format!("conv{}_{}", b + 1, k + 1),
                w.conv(&format!("features.{idx}"), [width, in_ch, 3, 3], true, spec)?,
            );
            idx += 2; // conv, relu
            in_ch = width;
        }
        net.push(format!("pool{}", b + 1), Pool2d::max(2, 2, 0, false));
        idx += 1;
    }
    let head: Vec<Box<dyn Block>> = vec![
        Box::new(AdaptiveAvgPoolFlat { out: 7 }),
        Box::new(w.linear("classifier.0", 512 * 7 * 7, 4096)?),
        Box::new(Relu),
        Box::new(w.linear("classifier.3", 4096, 4096)?),
        Box::new(Relu),
        Box::new(w.linear("classifier.6", 4096, 1000)?),
    ];
    net.head = Some(Box::new(Chain(head)));
    Ok(net)
}
