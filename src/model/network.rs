//! The one [`FeatureNet`] implementation every architecture builds: a chain of named stages
//! (each a tap an objective can use) and an optional classifier head. Architectures differ only
//! in how they build their stages.

use super::{FeatureNet, Features, Loss, Normalization};
use crate::ops::{Conv2d, Pool2d};
use crate::{Error, Result};
use candle_core::{D, DType, Tensor, Var};

/// What a block keeps from its forward pass for its own backward pass.
///
/// The networks run their own reverse pass (`Network::loss_and_grad`) instead of candle's:
/// candle's gives every node of the graph a zero-filled gradient and then adds into it (two
/// passes over each activation), and walks a graph this code already knows. Blocks without a
/// backward of their own keep their input and are differentiated by candle on a recomputed
/// forward.
pub enum Saved {
    /// The input.
    Input(Tensor),
    /// A convolution's input shape and its output (the activation's mask is read off it).
    Conv { in_dims: Vec<usize>, y: Tensor },
    /// The items of a chain, in order.
    Seq(Vec<Saved>),
    /// Each branch, and how many channels each contributed to the concatenation.
    Branches(Vec<(Saved, usize)>),
    /// A fork's stacked head and each branch (a member's tail, or its own block), with how
    /// many channels each contributed to the concatenation.
    Fork { head: Box<Saved>, branches: Vec<(Saved, usize)> },
    /// The body, the shortcut (none: identity) and, with a ReLU after the sum, its output.
    Residual { body: Box<Saved>, shortcut: Option<Box<Saved>>, y: Option<Tensor> },
}

/// A differentiable piece of a network.
pub trait Block: Send + Sync {
    fn forward(&self, x: &Tensor) -> Result<Tensor>;

    /// `forward`, keeping what `backward` needs.
    fn forward_saving(&self, x: &Tensor) -> Result<(Tensor, Saved)> {
        Ok((self.forward(x)?, Saved::Input(x.clone())))
    }

    /// The gradient with respect to the block's input, given the gradient `gy` of its output.
    fn backward(&self, saved: &Saved, gy: &Tensor) -> Result<Tensor> {
        recompute_backward(self, saved, gy)
    }
}

/// The generic backward: the forward again under candle's autograd, from the kept input.
fn recompute_backward<B: Block + ?Sized>(block: &B, saved: &Saved, gy: &Tensor) -> Result<Tensor> {
    let Saved::Input(x) = saved else { return Err(Error::internal("a block's saved state does not match it")) };
    let v = Var::from_tensor(x)?;
    let y = block.forward(v.as_tensor())?;
    let grads = (y * gy)?.sum_all()?.backward()?;
    Ok(match grads.get(v.as_tensor()) {
        Some(g) => g.clone(),
        None => x.zeros_like()?,
    })
}

impl Block for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(Conv2d::forward(self, x)?)
    }

    fn forward_saving(&self, x: &Tensor) -> Result<(Tensor, Saved)> {
        let y = Conv2d::forward(self, x)?;
        Ok((y.clone(), Saved::Conv { in_dims: x.dims().to_vec(), y }))
    }

    fn backward(&self, saved: &Saved, gy: &Tensor) -> Result<Tensor> {
        match saved {
            Saved::Conv { in_dims, y } => Ok(self.input_grad(gy, y, in_dims)?),
            _ => Err(Error::internal("a convolution's saved state does not match it")),
        }
    }
}

impl Block for Pool2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(Pool2d::forward(self, x)?)
    }

    fn backward(&self, saved: &Saved, gy: &Tensor) -> Result<Tensor> {
        match saved {
            Saved::Input(x) => Ok(self.input_grad(gy, x)?),
            _ => Err(Error::internal("a pool's saved state does not match it")),
        }
    }
}

/// `a + b` where either may be missing.
fn add_grad(acc: Option<Tensor>, g: Tensor) -> Result<Option<Tensor>> {
    Ok(Some(match acc {
        Some(a) => (a + g)?,
        None => g,
    }))
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

    fn forward_saving(&self, x: &Tensor) -> Result<(Tensor, Saved)> {
        let mut h = x.clone();
        let mut saved = Vec::with_capacity(self.0.len());
        for b in &self.0 {
            let (y, s) = b.forward_saving(&h)?;
            saved.push(s);
            h = y;
        }
        Ok((h, Saved::Seq(saved)))
    }

    fn backward(&self, saved: &Saved, gy: &Tensor) -> Result<Tensor> {
        let Saved::Seq(saved) = saved else {
            return Err(Error::internal("a chain's saved state does not match it"));
        };
        let mut g = gy.clone();
        for (b, s) in self.0.iter().zip(saved).rev() {
            g = b.backward(s, &g)?;
        }
        Ok(g)
    }
}

/// Branches on the same input, concatenated along channels (Inception modules).
pub struct Concat(pub Vec<Box<dyn Block>>);

impl Block for Concat {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let outs = self.0.iter().map(|b| b.forward(x)).collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&outs, 1)?)
    }

    fn forward_saving(&self, x: &Tensor) -> Result<(Tensor, Saved)> {
        let mut outs = Vec::with_capacity(self.0.len());
        let mut saved = Vec::with_capacity(self.0.len());
        for b in &self.0 {
            let (y, s) = b.forward_saving(x)?;
            saved.push((s, y.dim(1)?));
            outs.push(y);
        }
        Ok((crate::ops::cat_channels(&outs)?, Saved::Branches(saved)))
    }

    fn backward(&self, saved: &Saved, gy: &Tensor) -> Result<Tensor> {
        let Saved::Branches(saved) = saved else {
            return Err(Error::internal("a concat's saved state does not match it"));
        };
        let (mut gx, mut at) = (None, 0);
        for (b, (s, c)) in self.0.iter().zip(saved) {
            gx = add_grad(gx, b.backward(s, &gy.narrow(1, at, *c)?)?)?;
            at += c;
        }
        gx.ok_or_else(|| Error::internal("a concat without branches"))
    }
}

/// One branch of a [`Fork`]: a member of the stacked head (its first conv) and the blocks
/// that follow it, or a block of its own on the fork's input.
pub enum ForkBranch {
    Head(Conv2d, Vec<Box<dyn Block>>),
    Own(Box<dyn Block>),
}

enum Branch {
    /// The member's channels of the head's output, and the blocks after it.
    Head(usize, Chain),
    Own(Box<dyn Block>),
}

/// Branches on the same input, concatenated along channels, like [`Concat`], but the branches'
/// first 1x1 convolutions run as one product (a conv with their output channels stacked) and
/// each continues from its own channels of it: the input is read once and its gradient comes
/// out of one product instead of one per branch, summed.
pub struct Fork {
    head: Conv2d,
    branches: Vec<Branch>,
}

impl Fork {
    pub fn new(branches: Vec<ForkBranch>) -> Result<Self> {
        let heads: Vec<&Conv2d> =
            branches.iter().filter_map(|b| if let ForkBranch::Head(c, _) = b { Some(c) } else { None }).collect();
        let head = Conv2d::stack(&heads)?;
        let branches = branches
            .into_iter()
            .map(|b| match b {
                ForkBranch::Head(c, tail) => Branch::Head(c.out_channels(), Chain(tail)),
                ForkBranch::Own(b) => Branch::Own(b),
            })
            .collect();
        Ok(Fork { head, branches })
    }
}

impl Block for Fork {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = Conv2d::forward(&self.head, x)?;
        let mut at = 0;
        let mut outs = Vec::with_capacity(self.branches.len());
        for b in &self.branches {
            outs.push(match b {
                Branch::Head(c, tail) => {
                    let part = h.narrow(1, at, *c)?;
                    at += c;
                    tail.forward(&part)?
                }
                Branch::Own(b) => b.forward(x)?,
            });
        }
        Ok(Tensor::cat(&outs, 1)?)
    }

    fn forward_saving(&self, x: &Tensor) -> Result<(Tensor, Saved)> {
        let (h, head) = Block::forward_saving(&self.head, x)?;
        let mut at = 0;
        let (mut outs, mut saved) = (Vec::with_capacity(self.branches.len()), Vec::with_capacity(self.branches.len()));
        for b in &self.branches {
            let (y, s) = match b {
                Branch::Head(c, tail) => {
                    let part = h.narrow(1, at, *c)?;
                    at += c;
                    tail.forward_saving(&part)?
                }
                Branch::Own(b) => b.forward_saving(x)?,
            };
            saved.push((s, y.dim(1)?));
            outs.push(y);
        }
        Ok((crate::ops::cat_channels(&outs)?, Saved::Fork { head: Box::new(head), branches: saved }))
    }

    fn backward(&self, saved: &Saved, gy: &Tensor) -> Result<Tensor> {
        let Saved::Fork { head, branches: saved } = saved else {
            return Err(Error::internal("a fork's saved state does not match it"));
        };
        let (mut gx, mut head_grads, mut at) = (None, Vec::new(), 0);
        for (b, (s, c)) in self.branches.iter().zip(saved) {
            let g = gy.narrow(1, at, *c)?;
            at += c;
            match b {
                Branch::Head(_, tail) => head_grads.push(tail.backward(s, &g)?),
                Branch::Own(b) => gx = add_grad(gx, b.backward(s, &g)?)?,
            }
        }
        let gh = crate::ops::cat_channels(&head_grads)?;
        add_grad(gx, Block::backward(&self.head, head, &gh)?)?.ok_or_else(|| Error::internal("a fork without branches"))
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

    fn forward_saving(&self, x: &Tensor) -> Result<(Tensor, Saved)> {
        let (short, short_saved) = match &self.shortcut {
            Some(s) => {
                let (y, saved) = s.forward_saving(x)?;
                (y, Some(Box::new(saved)))
            }
            None => (x.clone(), None),
        };
        let (body, body_saved) = self.body.forward_saving(x)?;
        let mut y = (body + short)?;
        if self.relu_after {
            y = y.relu()?;
        }
        let kept = self.relu_after.then(|| y.clone());
        Ok((y, Saved::Residual { body: Box::new(body_saved), shortcut: short_saved, y: kept }))
    }

    fn backward(&self, saved: &Saved, gy: &Tensor) -> Result<Tensor> {
        let Saved::Residual { body, shortcut, y } = saved else {
            return Err(Error::internal("a residual block's saved state does not match it"));
        };
        let g = match y {
            // ReLU passes where its output is > 0, as PyTorch's.
            Some(y) => (gy * y.gt(0f32)?.to_dtype(DType::F32)?)?,
            None => gy.clone(),
        };
        let through = match (&self.shortcut, shortcut) {
            (Some(s), Some(saved)) => s.backward(saved, &g)?,
            (None, None) => g.clone(),
            _ => return Err(Error::internal("a residual block's saved state does not match it")),
        };
        Ok((self.body.backward(body, &g)? + through)?)
    }
}

/// A fully connected layer: `y = x w^T + b`.
pub struct Linear {
    /// `[in, out]`, on the CPU.
    weight_t: Tensor,
    /// `[out]`, on the CPU.
    bias: Tensor,
    /// The weights copied to the (non-CPU) devices the layer has run on.
    on_device: crate::ops::PerDevice<(Tensor, Tensor)>,
}

impl Linear {
    /// A layer `x @ weight_t + bias` from `weight_t` `[in, out]` and `bias` `[out]`.
    pub fn new(weight_t: Tensor, bias: Tensor) -> Self {
        Linear { weight_t, bias, on_device: Default::default() }
    }

    fn weights_on(&self, device: &candle_core::Device) -> Result<(Tensor, Tensor)> {
        if device.is_cpu() {
            return Ok((self.weight_t.clone(), self.bias.clone()));
        }
        self.on_device.get_or_make(device, || Ok((self.weight_t.to_device(device)?, self.bias.to_device(device)?)))
    }
}

impl Block for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (w, b) = self.weights_on(x.device())?;
        Ok(x.matmul(&w)?.broadcast_add(&b)?)
    }
}

/// `max(x, 0)`, its gradient passing where the output is above 0 (as PyTorch's).
pub struct Relu;

impl Block for Relu {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.relu()?)
    }

    fn forward_saving(&self, x: &Tensor) -> Result<(Tensor, Saved)> {
        let y = x.relu()?;
        // The output (where it is above 0 is where the input was), not the input.
        Ok((y.clone(), Saved::Input(y)))
    }

    fn backward(&self, saved: &Saved, gy: &Tensor) -> Result<Tensor> {
        let Saved::Input(y) = saved else { return Err(Error::internal("a ReLU's saved state does not match it")) };
        Ok((gy * y.gt(0f32)?.to_dtype(DType::F32)?)?)
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
        let name = format!("adaptive average {h}x{w}->{o}x{o}");
        let m = crate::ops::host::constant(&name, &[h * w, o * o], x.device(), || {
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
            m
        })?;
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

    /// Checks a request and plans it: the stage each tap reads, and how many stages to run
    /// (only as far as the deepest one anybody needs; all of them for the classifier).
    fn plan<'a>(&'a self, taps: &'a [String], logits: bool) -> Result<(Vec<&'a str>, usize)> {
        self.check_layers(taps)?;
        if logits && self.head.is_none() {
            return Err(Error::usage(format!("{} has no classifier (it is a feature extractor only)", self.name)));
        }
        let wanted: Vec<&str> = taps.iter().map(|t| self.stage_of(t)).collect();
        let last = match logits {
            true => self.stages.len(),
            false => self.stages.iter().rposition(|s| wanted.contains(&s.name.as_str())).map_or(0, |i| i + 1),
        };
        Ok((wanted, last))
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
        let (wanted, last) = self.plan(taps, logits)?;
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

    /// The forward pass keeps each stage's state; candle differentiates only the loss (from the
    /// taps, the head and the input), and the stages run their own backward, deepest first.
    fn loss_and_grad(
        &self,
        x: &Tensor,
        taps: &[String],
        logits: bool,
        loss: &dyn Fn(&Features, &Tensor) -> Result<Loss>,
    ) -> Result<(Tensor, Tensor)> {
        let (wanted, last) = self.plan(taps, logits)?;
        let x = x.detach();
        let input = Var::from_tensor(&x)?;
        let mut features = Features::default();
        let mut saved = Vec::with_capacity(last);
        // (stage index, tap name, the variable its output was handed to the loss as)
        let mut handed: Vec<(usize, Option<&String>, Var)> = Vec::new();
        let mut h = x;
        for (i, stage) in self.stages[..last].iter().enumerate() {
            let (y, s) = stage.block.forward_saving(&h)?;
            saved.push(s);
            h = y;
            for (tap, st) in taps.iter().zip(&wanted) {
                if *st == stage.name {
                    let v = Var::from_tensor(&h)?;
                    features.taps.insert(tap.clone(), v.as_tensor().clone());
                    handed.push((i, Some(tap), v));
                }
            }
        }
        if logits {
            let v = Var::from_tensor(&h)?;
            features.logits = Some(self.head.as_ref().expect("checked above").forward(v.as_tensor())?);
            handed.push((last - 1, None, v));
        }
        let Loss { value, direct } = loss(&features, input.as_tensor())?;
        for (tap, _) in &direct {
            if !handed.iter().any(|(_, t, _)| *t == Some(tap)) {
                return Err(Error::internal(format!("a gradient for tap {tap}, not computed")));
            }
        }
        let grads = value.backward()?;
        let mut g: Option<Tensor> = None;
        for (i, stage) in self.stages[..last].iter().enumerate().rev() {
            for (_, tap, v) in handed.iter().filter(|(at, _, _)| *at == i) {
                if let Some(gt) = grads.get(v.as_tensor()) {
                    g = add_grad(g, gt.clone())?;
                }
                for (_, gt) in direct.iter().filter(|(t, _)| Some(t) == *tap) {
                    g = add_grad(g, gt.clone())?;
                }
            }
            if let Some(gy) = &g {
                g = Some(stage.block.backward(&saved[i], gy)?);
            }
        }
        if let Some(direct) = grads.get(input.as_tensor()) {
            g = add_grad(g, direct.clone())?;
        }
        let grad = g.ok_or_else(|| {
            Error::usage("nothing to dream: the objective does not depend on the image (are all its weights 0?)")
        })?;
        Ok((value, grad))
    }
}
