//! Inception-v3 (Szegedy et al., "Rethinking the Inception Architecture for Computer Vision",
//! 2015) in torchvision's layout (`Conv2d_1a_3x3`, `Mixed_5b.branch1x1`, ...; eps 1e-3), in two
//! variants:
//! - `Torchvision`: torchvision's network with its classifier (`transform_input=False`);
//! - `Tf2015`: the original TensorFlow graph of 2015-12-05 (the one behind FID and the
//!   classic DeepDream recipe), imported into the same layout: pooling branches average
//!   without the padding, the last module max-pools, input `(x - 128) / 128`, no classifier.
//!
//! Taps: the stem convs and pools, and `mixed0 .. mixed10` (the Keras names of
//! `Mixed_5b .. Mixed_7c`).

use super::Normalization;
use super::network::{Block, Chain, Concat, Fork, ForkBranch, GlobalAvgPool, Network, Relu};
use super::weights::Weights;
use crate::Result;
use crate::ops::{Activation, Conv2d, ConvSpec, Padding, Pool2d};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Variant {
    Torchvision,
    Tf2015,
}

/// (torchvision module, Keras tap name)
pub const MIXED: [(&str, &str); 11] = [
    ("Mixed_5b", "mixed0"),
    ("Mixed_5c", "mixed1"),
    ("Mixed_5d", "mixed2"),
    ("Mixed_6a", "mixed3"),
    ("Mixed_6b", "mixed4"),
    ("Mixed_6c", "mixed5"),
    ("Mixed_6d", "mixed6"),
    ("Mixed_6e", "mixed7"),
    ("Mixed_7a", "mixed8"),
    ("Mixed_7b", "mixed9"),
    ("Mixed_7c", "mixed10"),
];

struct Ctx<'a> {
    w: &'a Weights,
    variant: Variant,
}

impl Ctx<'_> {
    /// BasicConv2d: conv without bias, batch norm, ReLU. `k` and `pad` as (rows, cols).
    fn conv(
        &self,
        p: &str,
        co: usize,
        ci: usize,
        k: (usize, usize),
        stride: usize,
        pad: (usize, usize),
    ) -> Result<Conv2d> {
        self.conv_then(p, co, ci, k, stride, pad, Activation::Relu)
    }

    /// [`Ctx::conv`] with the activation `act` after the batch norm.
    #[allow(clippy::too_many_arguments)]
    fn conv_then(
        &self,
        p: &str,
        co: usize,
        ci: usize,
        k: (usize, usize),
        stride: usize,
        pad: (usize, usize),
        act: Activation,
    ) -> Result<Conv2d> {
        let spec = ConvSpec {
            stride: (stride, stride),
            padding: Padding::symmetric(pad.0, pad.1),
            groups: 1,
            activation: act,
        };
        self.w.conv_bn(&format!("{p}.conv"), &format!("{p}.bn"), 1e-3, [co, ci, k.0, k.1], spec)
    }

    fn c1(&self, p: &str, co: usize, ci: usize) -> Result<Box<dyn Block>> {
        Ok(Box::new(self.conv(p, co, ci, (1, 1), 1, (0, 0))?))
    }

    /// The 3x3 stride-1 average pool in front of a pooling branch.
    fn avg(&self) -> Box<dyn Block> {
        Box::new(Pool2d::avg(3, 1, 1, false, self.variant == Variant::Torchvision))
    }

    fn chain(&self, items: Vec<Box<dyn Block>>) -> Box<dyn Block> {
        Box::new(Chain(items))
    }

    /// A pooling branch: the 3x3 stride-1 average pool, then the 1x1 BasicConv2d `p` (`co`
    /// channels from `ci`). TF2015's pool leaves the padding out of its averages, so there the
    /// branch runs as the same function in the other order, `ReLU(avgpool(conv1x1(x) + b))`:
    /// both are linear per pixel and per channel, and the average of the constant `b` over a
    /// window of real pixels is `b`. The pool then averages the branch's `co` channels instead
    /// of the block's `ci` (32-192 instead of 192-1280 in InceptionV3): at 512x512 its pools
    /// took about 8 ms of a step. Torchvision's pool counts the padding (its border averages
    /// of `b` are smaller), and keeps the order.
    fn avg_branch(&self, p: &str, co: usize, ci: usize) -> Result<Box<dyn Block>> {
        Ok(match self.variant {
            Variant::Tf2015 => self.chain(vec![
                Box::new(self.conv_then(p, co, ci, (1, 1), 1, (0, 0), Activation::Identity)?),
                self.avg(),
                Box::new(Relu),
            ]),
            Variant::Torchvision => self.chain(vec![self.avg(), self.c1(p, co, ci)?]),
        })
    }

    fn a(&self, p: &str, cin: usize, pool: usize) -> Result<Fork> {
        let n = |s: &str| format!("{p}.{s}");
        let c1 = |s: &str, co: usize| self.conv(&n(s), co, cin, (1, 1), 1, (0, 0));
        Fork::new(vec![
            ForkBranch::Head(c1("branch1x1", 64)?, vec![]),
            ForkBranch::Head(
                c1("branch5x5_1", 48)?,
                vec![Box::new(self.conv(&n("branch5x5_2"), 64, 48, (5, 5), 1, (2, 2))?)],
            ),
            ForkBranch::Head(
                c1("branch3x3dbl_1", 64)?,
                vec![
                    Box::new(self.conv(&n("branch3x3dbl_2"), 96, 64, (3, 3), 1, (1, 1))?),
                    Box::new(self.conv(&n("branch3x3dbl_3"), 96, 96, (3, 3), 1, (1, 1))?),
                ],
            ),
            ForkBranch::Own(self.avg_branch(&n("branch_pool"), pool, cin)?),
        ])
    }

    fn b(&self, p: &str, cin: usize) -> Result<Concat> {
        let n = |s: &str| format!("{p}.{s}");
        Ok(Concat(vec![
            Box::new(self.conv(&n("branch3x3"), 384, cin, (3, 3), 2, (0, 0))?),
            self.chain(vec![
                self.c1(&n("branch3x3dbl_1"), 64, cin)?,
                Box::new(self.conv(&n("branch3x3dbl_2"), 96, 64, (3, 3), 1, (1, 1))?),
                Box::new(self.conv(&n("branch3x3dbl_3"), 96, 96, (3, 3), 2, (0, 0))?),
            ]),
            Box::new(Pool2d::max(3, 2, 0, false)),
        ]))
    }

    fn c(&self, p: &str, cin: usize, c7: usize) -> Result<Fork> {
        let n = |s: &str| format!("{p}.{s}");
        let c1 = |s: &str, co: usize| self.conv(&n(s), co, cin, (1, 1), 1, (0, 0));
        let row = |name: &str, co: usize, ci: usize| -> Result<Box<dyn Block>> {
            Ok(Box::new(self.conv(&n(name), co, ci, (1, 7), 1, (0, 3))?))
        };
        let col = |name: &str, co: usize, ci: usize| -> Result<Box<dyn Block>> {
            Ok(Box::new(self.conv(&n(name), co, ci, (7, 1), 1, (3, 0))?))
        };
        Fork::new(vec![
            ForkBranch::Head(c1("branch1x1", 192)?, vec![]),
            ForkBranch::Head(c1("branch7x7_1", c7)?, vec![row("branch7x7_2", c7, c7)?, col("branch7x7_3", 192, c7)?]),
            ForkBranch::Head(
                c1("branch7x7dbl_1", c7)?,
                vec![
                    col("branch7x7dbl_2", c7, c7)?,
                    row("branch7x7dbl_3", c7, c7)?,
                    col("branch7x7dbl_4", c7, c7)?,
                    row("branch7x7dbl_5", 192, c7)?,
                ],
            ),
            ForkBranch::Own(self.avg_branch(&n("branch_pool"), 192, cin)?),
        ])
    }

    fn d(&self, p: &str, cin: usize) -> Result<Fork> {
        let n = |s: &str| format!("{p}.{s}");
        let c1 = |s: &str| self.conv(&n(s), 192, cin, (1, 1), 1, (0, 0));
        Fork::new(vec![
            ForkBranch::Head(
                c1("branch3x3_1")?,
                vec![Box::new(self.conv(&n("branch3x3_2"), 320, 192, (3, 3), 2, (0, 0))?)],
            ),
            ForkBranch::Head(
                c1("branch7x7x3_1")?,
                vec![
                    Box::new(self.conv(&n("branch7x7x3_2"), 192, 192, (1, 7), 1, (0, 3))?),
                    Box::new(self.conv(&n("branch7x7x3_3"), 192, 192, (7, 1), 1, (3, 0))?),
                    Box::new(self.conv(&n("branch7x7x3_4"), 192, 192, (3, 3), 2, (0, 0))?),
                ],
            ),
            ForkBranch::Own(Box::new(Pool2d::max(3, 2, 0, false))),
        ])
    }

    /// InceptionE; `last` is Mixed_7c, whose pooling branch max-pools in the TF2015 graph. Two
    /// of its branches split into a 1x3 and a 3x1 conv: a [`Concat`] at the end of the branch.
    fn e(&self, p: &str, cin: usize, last: bool) -> Result<Fork> {
        let n = |s: &str| format!("{p}.{s}");
        let pool = match (self.variant, last) {
            (Variant::Tf2015, true) => {
                self.chain(vec![Box::new(Pool2d::max(3, 1, 1, false)), self.c1(&n("branch_pool"), 192, cin)?])
            }
            _ => self.avg_branch(&n("branch_pool"), 192, cin)?,
        };
        let conv = |s: &str, co: usize, ci: usize, k: (usize, usize), pad: (usize, usize)| -> Result<Box<dyn Block>> {
            Ok(Box::new(self.conv(&n(s), co, ci, k, 1, pad)?))
        };
        let split = |a: &str, b: &str| -> Result<Box<dyn Block>> {
            Ok(Box::new(Concat(vec![conv(a, 384, 384, (1, 3), (0, 1))?, conv(b, 384, 384, (3, 1), (1, 0))?])))
        };
        let c1 = |s: &str, co: usize| self.conv(&n(s), co, cin, (1, 1), 1, (0, 0));
        Fork::new(vec![
            ForkBranch::Head(c1("branch1x1", 320)?, vec![]),
            ForkBranch::Head(c1("branch3x3_1", 384)?, vec![split("branch3x3_2a", "branch3x3_2b")?]),
            ForkBranch::Head(
                c1("branch3x3dbl_1", 448)?,
                vec![conv("branch3x3dbl_2", 384, 448, (3, 3), (1, 1))?, split("branch3x3dbl_3a", "branch3x3dbl_3b")?],
            ),
            ForkBranch::Own(pool),
        ])
    }
}

pub fn build(name: &str, w: &Weights, variant: Variant) -> Result<Network> {
    let norm = match variant {
        Variant::Torchvision => Normalization::IMAGENET,
        Variant::Tf2015 => Normalization { mean: [128.0; 3], std: [128.0; 3] },
    };
    let cx = Ctx { w, variant };
    let mut net = Network::new(name, norm);
    net.push("Conv2d_1a_3x3", cx.conv("Conv2d_1a_3x3", 32, 3, (3, 3), 2, (0, 0))?);
    net.push("Conv2d_2a_3x3", cx.conv("Conv2d_2a_3x3", 32, 32, (3, 3), 1, (0, 0))?);
    net.push("Conv2d_2b_3x3", cx.conv("Conv2d_2b_3x3", 64, 32, (3, 3), 1, (1, 1))?);
    net.push("maxpool1", Pool2d::max(3, 2, 0, false));
    net.push("Conv2d_3b_1x1", cx.conv("Conv2d_3b_1x1", 80, 64, (1, 1), 1, (0, 0))?);
    net.push("Conv2d_4a_3x3", cx.conv("Conv2d_4a_3x3", 192, 80, (3, 3), 1, (0, 0))?);
    net.push("maxpool2", Pool2d::max(3, 2, 0, false));
    net.push("mixed0", cx.a("Mixed_5b", 192, 32)?);
    net.push("mixed1", cx.a("Mixed_5c", 256, 64)?);
    net.push("mixed2", cx.a("Mixed_5d", 288, 64)?);
    net.push("mixed3", cx.b("Mixed_6a", 288)?);
    net.push("mixed4", cx.c("Mixed_6b", 768, 128)?);
    net.push("mixed5", cx.c("Mixed_6c", 768, 160)?);
    net.push("mixed6", cx.c("Mixed_6d", 768, 160)?);
    net.push("mixed7", cx.c("Mixed_6e", 768, 192)?);
    net.push("mixed8", cx.d("Mixed_7a", 768)?);
    net.push("mixed9", cx.e("Mixed_7b", 1280, false)?);
    net.push("mixed10", cx.e("Mixed_7c", 2048, true)?);
    if variant == Variant::Torchvision {
        net.head = Some(Box::new(Chain(vec![Box::new(GlobalAvgPool), Box::new(w.linear("fc", 2048, 1000)?)])));
    }
    Ok(net)
}
