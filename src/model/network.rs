//! The one [`FeatureNet`] implementation every architecture builds: a chain of named stages
//! (each a tap an objective can use) and an optional classifier head. Architectures differ only
//! in how they build their stages.

use super::{FeatureNet, Features, Normalization};
use crate::ops::{Conv2d, Pool2d};
use crate::Result;
use candle_core::{Tensor, D};

/// A differentiable piece of a network.
pub trait Block: Send + Sync {
    fn forward(&self, x: &Tensor) -> Result<Tensor>;
}

impl Block for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(Conv2d::forward(self, x)?)
    }
}

impl Block for Pool2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(Pool2d::forward(self, x)?)
    }
}

/// Blocks run one after the other.
pub struct Chain(pub Vec<Box<dyn Block>>);

impl Block for Chain {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for b in &self.0 {
            h = b.forward(&h)?;
        }
        Ok(h)
    }
}

/// Branches on the same input, concatenated along channels (Inception modules).
pub struct Concat(pub Vec<Box<dyn Block>>);

impl Block for Concat {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let outs = self.0.iter().map(|b| b.forward(x)).collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&outs, 1)?)
    }
}

/// `body(x) + shortcut(x)` (identity shortcut when `None`).
pub struct Residual {
    pub body: Box<dyn Block>,
    pub shortcut: Option<Box<dyn Block>>,
    pub relu_after: bool,
}

impl Block for Residual {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let short = match &self.shortcut {
            Some(s) => s.forward(x)?,
            None => x.clone(),
        };
        let y = (self.body.forward(x)? + short)?;
        Ok(if self.relu_after { y.relu()? } else { y })
    }
}

/// A fully connected layer: `y = x w^T + b`.
pub struct Linear {
    pub weight_t: Tensor,
    pub bias: Tensor,
}

impl Block for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.matmul(&self.weight_t)?.broadcast_add(&self.bias)?)
    }
}

pub struct Relu;

impl Block for Relu {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.relu()?)
    }
}

/// Mean over height and width: `[n, c, h, w]` -> `[n, c]`.
pub struct GlobalAvgPool;

impl Block for GlobalAvgPool {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.flatten_from(2)?.mean(D::Minus1)?)
    }
}

/// PyTorch's `adaptive_avg_pool2d` to `out` x `out`, then flattened to `[n, c * out * out]`:
/// a product with a fixed averaging matrix, so it is differentiable.
pub struct AdaptiveAvgPoolFlat {
    pub out: usize,
}

impl Block for AdaptiveAvgPoolFlat {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let o = self.out;
        let mut m = vec![0f32; h * w * o * o];
        let bounds = |i: usize, len: usize| (i * len / o, ((i + 1) * len).div_ceil(o));
        for oy in 0..o {
            let (y0, y1) = bounds(oy, h);
            for ox in 0..o {
                let (x0, x1) = bounds(ox, w);
                let share = 1.0 / ((y1 - y0) * (x1 - x0)) as f32;
                for y in y0..y1 {
                    for xx in x0..x1 {
                        m[(y * w + xx) * o * o + oy * o + ox] = share;
                    }
                }
            }
        }
        let m = Tensor::from_vec(m, (h * w, o * o), x.device())?;
        let pooled = x.reshape((n * c, h * w))?.matmul(&m)?;
        Ok(pooled.reshape((n, c * o * o))?)
    }
}

/// One named stage of a network.
pub struct Stage {
    pub name: String,
    pub block: Box<dyn Block>,
}

/// A network: named stages, then (if it has one) a classifier from the last stage's output.
pub struct Network {
    pub name: String,
    pub normalization: Normalization,
    pub stages: Vec<Stage>,
    /// Extra names for stages (`layer3` for the last block of ResNet's layer3): (alias, stage).
    pub aliases: Vec<(String, String)>,
    pub head: Option<Box<dyn Block>>,
}

impl Network {
    pub fn new(name: &str, normalization: Normalization) -> Self {
        Network { name: name.to_owned(), normalization, stages: Vec::new(), aliases: Vec::new(), head: None }
    }

    pub fn push(&mut self, name: impl Into<String>, block: impl Block + 'static) {
        self.stages.push(Stage { name: name.into(), block: Box::new(block) });
    }

    /// An inverted-residual stage (MobileNetV2, EfficientNet): `body`, plus its input when the
    /// block keeps the shape (`identity_skip`).
    pub fn push_inverted_residual(&mut self, name: impl Into<String>, body: Chain, identity_skip: bool) {
        if identity_skip {
            self.push(name, Residual { body: Box::new(body), shortcut: None, relu_after: false });
        } else {
            self.push(name, body);
        }
    }

    /// Names the most recently pushed stage `alias` as well.
    pub fn alias_last(&mut self, alias: impl Into<String>) {
        let last = self.stages.last().expect("a stage to alias").name.clone();
        self.aliases.push((alias.into(), last));
    }

    fn stage_of<'a>(&'a self, tap: &'a str) -> &'a str {
        self.aliases.iter().find(|(a, _)| a == tap).map_or(tap, |(_, s)| s.as_str())
    }
}

impl FeatureNet for Network {
    fn name(&self) -> &str {
        &self.name
    }

    fn layer_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for s in &self.stages {
            names.extend(self.aliases.iter().filter(|(_, st)| *st == s.name).map(|(a, _)| a.clone()));
            names.push(s.name.clone());
        }
        names
    }

    fn normalization(&self) -> Normalization {
        self.normalization
    }

    fn has_classifier(&self) -> bool {
        self.head.is_some()
    }

    fn forward(&self, x: &Tensor, taps: &[String], logits: bool) -> Result<Features> {
        self.check_layers(taps)?;
        if logits && self.head.is_none() {
            return Err(crate::Error::usage(format!("{} has no classifier (it is a feature extractor only)", self.name)));
        }
        let wanted: Vec<&str> = taps.iter().map(|t| self.stage_of(t)).collect();
        // Run only as far as the deepest stage anybody needs.
        let last = match logits {
            true => self.stages.len(),
            false => self.stages.iter().rposition(|s| wanted.contains(&s.name.as_str())).map_or(0, |i| i + 1),
        };
        let mut out = Features::default();
        let mut h = x.clone();
        for stage in &self.stages[..last] {
            h = stage.block.forward(&h)?;
            for (tap, st) in taps.iter().zip(&wanted) {
                if *st == stage.name {
                    out.taps.insert(tap.clone(), h.clone());
                }
            }
        }
        if logits {
            out.logits = Some(self.head.as_ref().expect("checked above").forward(&h)?);
        }
        Ok(out)
    }
}
