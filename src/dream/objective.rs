//! What the ascent maximises.

use crate::model::{FeatureNet, Features};
use crate::{Error, Result};
use candle_core::Tensor;

/// One layer of the layer objective and its weight.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerTerm {
    pub layer: String,
    pub weight: f32,
}

/// The classic DeepDream objective: `sum_l w_l * sum(a_l^2 over non-border pixels) / numel(a_l)`.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerObjective {
    pub terms: Vec<LayerTerm>,
    /// Pixels of each activation's border left out of the sum (the recipe's 2).
    pub border: usize,
}

impl LayerObjective {
    pub fn taps(&self) -> Vec<String> {
        let mut taps: Vec<String> = self.terms.iter().map(|t| t.layer.clone()).collect();
        taps.dedup();
        taps
    }

    pub fn check(&self, net: &dyn FeatureNet) -> Result<()> {
        if self.terms.is_empty() {
            return Err(Error::usage("the objective names no layers"));
        }
        net.check_layers(&self.taps())
    }

    pub fn loss(&self, features: &Features) -> Result<Tensor> {
        let mut total: Option<Tensor> = None;
        for term in &self.terms {
            let a = features.taps.get(&term.layer).ok_or_else(|| Error::usage(format!("layer {} was not computed", term.layer)))?;
            let numel = a.elem_count() as f64;
            let inner = crop_border(a, self.border)?;
            let l = (inner.sqr()?.sum_all()? * (term.weight as f64 / numel))?;
            total = Some(match total {
                Some(t) => (t + l)?,
                None => l,
            });
        }
        total.ok_or_else(|| Error::usage("the objective names no layers"))
    }
}

/// `a[:, :, b:-b, b:-b]`, or the whole map when it is too small to lose its border.
fn crop_border(a: &Tensor, b: usize) -> Result<Tensor> {
    let (_, _, h, w) = a.dims4()?;
    let mut a = a.clone();
    if h > 2 * b {
        a = a.narrow(2, b, h - 2 * b)?;
    }
    if w > 2 * b {
        a = a.narrow(3, b, w - 2 * b)?;
    }
    Ok(a)
}
