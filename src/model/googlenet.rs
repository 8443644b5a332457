//! GoogLeNet (Szegedy et al., "Going Deeper with Convolutions", 2014), torchvision's layout
//! and quirks: batch-normed `BasicConv2d`s (eps 1e-3), a 3x3 conv in the "5x5" branch, max
//! pools with ceil_mode. Built with `transform_input=False` and without the aux heads.
//! Taps: `conv1`, `pool1`, `conv2`, `conv3`, `pool2`, `inception3a` .. `inception5b`,
//! `pool3`, `pool4`.

use super::Normalization;
use super::network::{Chain, Fork, ForkBranch, GlobalAvgPool, Network};
use super::weights::Weights;
use crate::Result;
use crate::ops::{Activation, Conv2d, ConvSpec, Padding, Pool2d};

fn basic(w: &Weights, p: &str, co: usize, ci: usize, k: usize, stride: usize) -> Result<Conv2d> {
    let spec = ConvSpec {
        stride: (stride, stride),
        padding: Padding::symmetric(k / 2, k / 2),
        groups: 1,
        activation: Activation::Relu,
    };
    w.conv_bn(&format!("{p}.conv"), &format!("{p}.bn"), 1e-3, [co, ci, k, k], spec)
}

/// (name, in, 1x1, 3x3 reduce, 3x3, "5x5" reduce, "5x5", pool proj)
const MODULES: [(&str, [usize; 7]); 9] = [
    ("inception3a", [192, 64, 96, 128, 16, 32, 32]),
    ("inception3b", [256, 128, 128, 192, 32, 96, 64]),
    ("inception4a", [480, 192, 96, 208, 16, 48, 64]),
    ("inception4b", [512, 160, 112, 224, 24, 64, 64]),
    ("inception4c", [512, 128, 128, 256, 24, 64, 64]),
    ("inception4d", [512, 112, 144, 288, 32, 64, 64]),
    ("inception4e", [528, 256, 160, 320, 32, 128, 128]),
    ("inception5a", [832, 256, 160, 320, 32, 128, 128]),
    ("inception5b", [832, 384, 192, 384, 48, 128, 128]),
];

/// The module, its three 1x1 convs on the input run as one product ([`Fork`]).
fn inception(w: &Weights, p: &str, c: [usize; 7]) -> Result<Fork> {
    let [cin, c1, c3r, c3, c5r, c5, cp] = c;
    let b = |s: &str| format!("{p}.{s}");
    Fork::new(vec![
        ForkBranch::Head(basic(w, &b("branch1"), c1, cin, 1, 1)?, vec![]),
        ForkBranch::Head(
            basic(w, &b("branch2.0"), c3r, cin, 1, 1)?,
            vec![Box::new(basic(w, &b("branch2.1"), c3, c3r, 3, 1)?)],
        ),
        ForkBranch::Head(
            basic(w, &b("branch3.0"), c5r, cin, 1, 1)?,
            vec![Box::new(basic(w, &b("branch3.1"), c5, c5r, 3, 1)?)],
        ),
        ForkBranch::Own(Box::new(Chain(vec![
            Box::new(Pool2d::max(3, 1, 1, true)),
            Box::new(basic(w, &b("branch4.1"), cp, cin, 1, 1)?),
        ]))),
    ])
}

pub fn build(name: &str, w: &Weights) -> Result<Network> {
    let mut net = Network::new(name, Normalization::IMAGENET);
    net.push("conv1", basic(w, "conv1", 64, 3, 7, 2)?);
    net.push("pool1", Pool2d::max(3, 2, 0, true));
    net.push("conv2", basic(w, "conv2", 64, 64, 1, 1)?);
    net.push("conv3", basic(w, "conv3", 192, 64, 3, 1)?);
    net.push("pool2", Pool2d::max(3, 2, 0, true));
    for (name, c) in MODULES {
        net.push(name, inception(w, name, c)?);
        match name {
            "inception3b" => net.push("pool3", Pool2d::max(3, 2, 0, true)),
            "inception4e" => net.push("pool4", Pool2d::max(2, 2, 0, true)),
            _ => {}
        }
    }
    net.head = Some(Box::new(Chain(vec![Box::new(GlobalAvgPool), Box::new(w.linear("fc", 1024, 1000)?)])));
    Ok(net)
}
