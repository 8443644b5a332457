//! Where weight files live, how they are read, and the import of PyTorch checkpoints into the
//! project's safetensors form.

use super::pth;
use crate::ops::{Conv2d, ConvSpec};
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The directories searched for weight files, in order: `$DEEPDREAM_MODELS`, then the user
/// cache (`$XDG_CACHE_HOME/deepdream/models`). Nothing is looked up beside the source tree the
/// binary was built from: the default model's weights are built in ([`super::load`]).
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("DEEPDREAM_MODELS").filter(|d| !d.is_empty()) {
        dirs.push(PathBuf::from(d));
    }
    dirs.extend(cache_dir());
    dirs
}

/// The user cache for imported and fetched weights, if the environment names one (never a
/// shared directory such as /tmp, where anyone could plant weights).
pub fn cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|h| !h.is_empty()).map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("deepdream").join("models"))
}

/// [`cache_dir`], or an error saying how to name one.
pub fn cache_dir_or_error() -> crate::Result<PathBuf> {
    cache_dir().ok_or_else(|| {
        crate::Error::usage("no cache directory: neither XDG_CACHE_HOME nor HOME is set; set one, or give --dir")
    })
}

pub fn find(file: &str) -> Option<PathBuf> {
    search_dirs().into_iter().map(|d| d.join(file)).find(|p| p.is_file())
}

/// Where tensors come from: a weight file, or the deterministic formula of
/// `../shared/reference/FORMULA.md` that proves an architecture without real weights.
enum Source {
    Tensors(HashMap<String, Tensor>),
    Formula,
}

/// Named tensors of one weight file, with errors that name the file and the missing key.
pub struct Weights {
    path: PathBuf,
    source: Source,
}

pub fn load_safetensors(path: &Path) -> Result<Weights> {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| Error::Weights {
        path: path.to_owned(),
        reason: format!("not a readable safetensors file: {e}"),
    })?;
    Ok(Weights { path: path.to_owned(), source: Source::Tensors(tensors) })
}

/// Checks that every value in a safetensors file is a finite number (a checkpoint of NaNs
/// builds the network and then dreams black), naming the first tensor that is not.
pub fn check_finite(path: &Path) -> Result<()> {
    let Source::Tensors(tensors) = load_safetensors(path)?.source else { return Ok(()) };
    let mut names: Vec<_> = tensors.keys().collect();
    names.sort();
    for name in names {
        let t = tensors[name].to_dtype(DType::F32)?.flatten_all()?;
        let bad = t.to_vec1::<f32>()?.iter().filter(|v| !v.is_finite()).count();
        if bad > 0 {
            return Err(Error::Weights {
                path: path.to_owned(),
                reason: format!("tensor {name} holds {bad} values that are not finite numbers (NaN or infinite)"),
            });
        }
    }
    Ok(())
}

/// The unit stream of FORMULA.md: element `i` of tensor `name`, a u in [0, 1).
pub fn formula_unit(name: &str, i: u64) -> f64 {
    let mut seed: u64 = 0xcbf29ce484222325;
    for b in name.as_bytes() {
        seed ^= *b as u64;
        seed = seed.wrapping_mul(0x100000001b3);
    }
    let mut z = (seed ^ i).wrapping_add(0x9E3779B97F4A7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
    z ^= z >> 31;
    (z >> 40) as f64 / (1u64 << 24) as f64
}

/// A tensor filled by FORMULA.md's rule for its key and shape.
pub fn formula_tensor(name: &str, shape: &[usize]) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let fan_in: usize = shape.iter().skip(1).product();
    let value = |u: f64| -> f64 {
        if name.ends_with("weight") && shape.len() >= 2 {
            (2.0 * u - 1.0) * (6.0 / fan_in as f64).sqrt()
        } else if name.ends_with("weight") {
            0.8 + 0.4 * u
        } else if name.ends_with("running_mean") {
            (2.0 * u - 1.0) * 0.1
        } else if name.ends_with("running_var") {
            0.5 + u
        } else {
            // bias, and anything else
            (2.0 * u - 1.0) * 0.05
        }
    };
    let data: Vec<f32> = (0..n as u64).map(|i| value(formula_unit(name, i)) as f32).collect();
    Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
}

/// Named tensors of a safetensors file held in memory (the built-in weights).
pub fn load_buffer(bytes: &[u8]) -> Result<Weights> {
    let path = PathBuf::from(super::BUILT_IN);
    let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
        .map_err(|e| Error::Weights { path: path.clone(), reason: format!("not a readable safetensors file: {e}") })?;
    Ok(Weights { path, source: Source::Tensors(tensors) })
}

impl Weights {
    pub fn from_map(path: &Path, tensors: HashMap<String, Tensor>) -> Self {
        Weights { path: path.to_owned(), source: Source::Tensors(tensors) }
    }

    /// Formula weights for any key and shape asked for.
    pub fn formula() -> Self {
        Weights { path: PathBuf::from("<formula weights>"), source: Source::Formula }
    }

    fn missing(&self, key: &str) -> Error {
        Error::Weights { path: self.path.clone(), reason: format!("missing tensor '{key}' (is this the right model?)") }
    }

    /// A tensor whose shape the file decides (formula weights cannot answer this).
    pub fn get(&self, key: &str) -> Result<Tensor> {
        match &self.source {
            Source::Tensors(t) => Ok(t.get(key).ok_or_else(|| self.missing(key))?.to_dtype(DType::F32)?),
            Source::Formula => Err(self.missing(key)),
        }
    }

    /// A tensor of a known shape; a file holding another shape is an error naming both.
    pub fn tensor(&self, key: &str, shape: &[usize]) -> Result<Tensor> {
        match &self.source {
            Source::Formula => formula_tensor(key, shape),
            Source::Tensors(_) => {
                let t = self.get(key)?;
                if t.dims() != shape {
                    return Err(Error::Weights {
                        path: self.path.clone(),
                        reason: format!("tensor '{key}' has shape {:?}, the architecture needs {shape:?}", t.dims()),
                    });
                }
                Ok(t)
            }
        }
    }

    pub fn contains(&self, key: &str) -> bool {
        match &self.source {
            Source::Tensors(t) => t.contains_key(key),
            Source::Formula => true,
        }
    }

    /// A plain convolution `{prefix}.weight` of shape `[co, ci / groups, kh, kw]`, with
    /// `{prefix}.bias` if `bias`.
    pub fn conv(&self, prefix: &str, shape: [usize; 4], bias: bool, spec: ConvSpec) -> Result<Conv2d> {
        let w = self.tensor(&format!("{prefix}.weight"), &shape)?;
        let b = if bias { Some(self.tensor(&format!("{prefix}.bias"), &[shape[0]])?) } else { None };
        Ok(Conv2d::new(&w, b.as_ref(), spec)?)
    }

    /// A linear layer `{prefix}.weight` `[out, in]` and `{prefix}.bias`.
    pub fn linear(&self, prefix: &str, inputs: usize, outputs: usize) -> Result<super::network::Linear> {
        Ok(super::network::Linear::new(
            self.tensor(&format!("{prefix}.weight"), &[outputs, inputs])?.t()?.contiguous()?,
            self.tensor(&format!("{prefix}.bias"), &[outputs])?,
        ))
    }

    /// A convolution followed by batch norm (`bn.weight` optional: gamma = 1), folded into one
    /// conv with bias: `w' = w * g / sqrt(var + eps)`, `b' = beta - mean * g / sqrt(var + eps)`.
    pub fn conv_bn(&self, conv: &str, bn: &str, eps: f64, shape: [usize; 4], spec: ConvSpec) -> Result<Conv2d> {
        let co = [shape[0]];
        let w = self.tensor(&format!("{conv}.weight"), &shape)?;
        let mean = self.tensor(&format!("{bn}.running_mean"), &co)?;
        let var = self.tensor(&format!("{bn}.running_var"), &co)?;
        let beta = self.tensor(&format!("{bn}.bias"), &co)?;
        let gamma = match self.contains(&format!("{bn}.weight")) {
            true => self.tensor(&format!("{bn}.weight"), &co)?,
            false => Tensor::ones_like(&beta)?,
        };
        let scale = gamma.broadcast_div(&(var + eps)?.sqrt()?)?;
        let w = w.broadcast_mul(&scale.reshape((scale.elem_count(), 1, 1, 1))?)?;
        let mut b = (beta - mean.mul(&scale)?)?;
        let conv_bias = format!("{conv}.bias");
        if matches!(self.source, Source::Tensors(_)) && self.contains(&conv_bias) {
            b = (b + self.tensor(&conv_bias, &co)?.mul(&scale)?)?;
        }
        Ok(Conv2d::new(&w, Some(&b), spec)?)
    }
}

/// Converts a PyTorch checkpoint (zip or legacy `.pth`) to safetensors at `out` (a staging
/// path: [`super::fetch::install`] proves the result before moving it into place). Returns the
/// number of tensors written. TorchScript archives of InceptionV3 TF2015 are renamed into
/// torchvision's layout.
pub fn import_pth(src: &Path, out: &Path) -> Result<usize> {
    let mut tensors: HashMap<String, Tensor> = pth::read_pth(src)?.into_iter().collect();
    if tensors.keys().any(|k| k.starts_with("net.layers.")) {
        tensors =
            tensors.into_iter().filter_map(|(k, t)| super::tf2015::torchvision_name(&k).map(|n| (n, t))).collect();
    }
    candle_core::safetensors::save(&tensors, out)
        .map_err(|e| Error::Output { path: out.to_owned(), reason: e.to_string() })?;
    Ok(tensors.len())
}
