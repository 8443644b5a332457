//! Where weight files live, how they are read, and the import of PyTorch checkpoints into the
//! project's safetensors form.

use super::pth;
use crate::ops::{Conv2d, ConvSpec};
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The directories searched for weight files, in order: `$DEEPDREAM_MODELS`, the repository's
/// `models/`, then the user cache (`$XDG_CACHE_HOME/deepdream/models`).
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("DEEPDREAM_MODELS") {
        dirs.push(PathBuf::from(d));
    }
    dirs.push(PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/models")));
    dirs.push(cache_dir());
    dirs
}

/// The user cache for imported and fetched weights.
pub fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("deepdream").join("models")
}

pub fn find(file: &str) -> Option<PathBuf> {
    search_dirs().into_iter().map(|d| d.join(file)).find(|p| p.is_file())
}

/// Named tensors of one weight file, with errors that name the file and the missing key.
pub struct Weights {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
}

pub fn load_safetensors(path: &Path) -> Result<Weights> {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| Error::Weights { path: path.to_owned(), reason: format!("not a readable safetensors file: {e}") })?;
    Ok(Weights { path: path.to_owned(), tensors })
}

impl Weights {
    pub fn from_map(path: &Path, tensors: HashMap<String, Tensor>) -> Self {
        Weights { path: path.to_owned(), tensors }
    }

    pub fn get(&self, key: &str) -> Result<Tensor> {
        let t = self.tensors.get(key).ok_or_else(|| Error::Weights {
            path: self.path.clone(),
            reason: format!("missing tensor '{key}' (is this the right model?)"),
        })?;
        Ok(t.to_dtype(DType::F32)?)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    /// A convolution followed by batch norm (`bn.weight` optional: gamma = 1), folded into one
    /// conv with bias: `w' = w * g / sqrt(var + eps)`, `b' = beta - mean * g / sqrt(var + eps)`.
    pub fn conv_bn(&self, conv: &str, bn: &str, eps: f64, spec: ConvSpec) -> Result<Conv2d> {
        let w = self.get(&format!("{conv}.weight"))?;
        let mean = self.get(&format!("{bn}.running_mean"))?;
        let var = self.get(&format!("{bn}.running_var"))?;
        let beta = self.get(&format!("{bn}.bias"))?;
        let gamma = match self.contains(&format!("{bn}.weight")) {
            true => self.get(&format!("{bn}.weight"))?,
            false => Tensor::ones_like(&beta)?,
        };
        let scale = gamma.broadcast_div(&(var + eps)?.sqrt()?)?;
        let w = w.broadcast_mul(&scale.reshape((scale.elem_count(), 1, 1, 1))?)?;
        let mut b = (beta - mean.mul(&scale)?)?;
        let conv_bias = format!("{conv}.bias");
        if self.contains(&conv_bias) {
            b = (b + self.get(&conv_bias)?.mul(&scale)?)?;
        }
        Ok(Conv2d::new(&w, Some(&b), spec)?)
    }
}

/// Converts a PyTorch checkpoint (zip or legacy `.pth`) to safetensors at `dest`, written to a
/// temporary file first. Returns the number of tensors written.
pub fn import_pth(src: &Path, dest: &Path) -> Result<usize> {
    let tensors: HashMap<String, Tensor> = pth::read_pth(src)?.into_iter().collect();
    let count = tensors.len();
    let out_err = |e: String| Error::Output { path: dest.to_owned(), reason: e };
    if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| out_err(e.to_string()))?;
    }
    let tmp = crate::io::temp_path(dest);
    let written = candle_core::safetensors::save(&tensors, &tmp).map_err(|e| out_err(e.to_string()));
    match written.and_then(|_| std::fs::rename(&tmp, dest).map_err(|e| out_err(e.to_string()))) {
        Ok(()) => Ok(count),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}
