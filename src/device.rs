//! Where a dream runs: `cpu` (the hand-written kernels), `cuda` / `cuda:N` (with the `cuda`
//! feature: every op on the GPU through the portable path, see `ops::portable`), or
//! `cpu-portable` (the portable path on the CPU: the GPU's code, checkable without a GPU).

use crate::{Error, Result};
use candle_core::Device;

/// The device named by `spec`. `cpu-portable` also switches this thread's ops to the portable
/// path, so call it on the thread that will dream.
pub fn select(spec: &str) -> Result<Device> {
    let spec = spec.trim().to_lowercase();
    crate::ops::portable::force_on_this_thread(spec == "cpu-portable");
    match spec.as_str() {
        "cpu" | "cpu-portable" => Ok(Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let index = match s.strip_prefix("cuda:") {
                Some(n) => n
                    .parse::<usize>()
                    .map_err(|_| Error::usage(format!("bad --device '{spec}': expected cuda or cuda:N")))?,
                None => 0,
            };
            cuda(index)
        }
        _ => Err(Error::usage(format!("unknown --device '{spec}': expected cpu, cuda, cuda:N or cpu-portable"))),
    }
}

/// Values made once per device and kept (a layer's weights copied to the devices it has run
/// on).
pub(crate) struct PerDevice<T>(std::sync::Mutex<Vec<(Device, T)>>);

impl<T> Default for PerDevice<T> {
    fn default() -> Self {
        PerDevice(Default::default())
    }
}

impl<T: Clone> PerDevice<T> {
    /// The value for `device`, made by `make` the first time.
    pub(crate) fn get_or_make<E>(
        &self,
        device: &Device,
        make: impl FnOnce() -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        let mut cache = self.0.lock().expect("per-device cache lock");
        if let Some((_, v)) = cache.iter().find(|(d, _)| d.same_device(device)) {
            return Ok(v.clone());
        }
        let v = make()?;
        cache.push((device.clone(), v.clone()));
        Ok(v)
    }
}

#[cfg(feature = "cuda")]
fn cuda(index: usize) -> Result<Device> {
    Device::new_cuda(index).map_err(|e| {
        Error::usage(format!("cannot open CUDA device {index}: {}", e.to_string().lines().next().unwrap_or("")))
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda(_: usize) -> Result<Device> {
    Err(Error::usage("this build has no CUDA support; build with `--features cuda` (scripts/build-cuda.sh)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(select("cpu").unwrap().is_cpu());
        assert!(select("CPU-portable").unwrap().is_cpu());
        select("cpu").unwrap(); // and back
        assert!(select("tpu").unwrap_err().to_string().contains("unknown --device"));
        assert!(select("cuda:x").is_err());
    }
}
