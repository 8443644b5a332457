//! Where a dream runs: `cpu` (the hand-written kernels), `cuda` / `cuda:N` (with the `cuda`
//! feature: every op on the GPU through the portable path, see `ops::portable`), or
//! `cpu-portable` (the portable path on the CPU: the GPU's code, checkable without a GPU).
//!
//! The choice is a value ([`DeviceSpec`], opened into a [`Backend`]) that travels with the job;
//! the dream applies it on the thread that runs the ops ([`Backend::enter`]).

use crate::{Error, Result};
use candle_core::Device;

/// A device as the user names it: serialisable, part of a job's fingerprint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DeviceSpec {
    Cpu,
    CpuPortable,
    Cuda(usize),
}

impl DeviceSpec {
    /// Parses `cpu`, `cpu-portable`, `cuda` or `cuda:N`; the error names the `--device` flag.
    pub fn parse(spec: &str) -> Result<DeviceSpec> {
        let s = spec.trim().to_lowercase();
        match s.as_str() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cpu-portable" => Ok(DeviceSpec::CpuPortable),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => match s.strip_prefix("cuda:") {
                Some(n) => n
                    .parse::<usize>()
                    .map(DeviceSpec::Cuda)
                    .map_err(|_| Error::usage(format!("--device: bad '{spec}': expected cuda or cuda:N"))),
                None => {
                    Err(Error::usage(format!("--device: unknown '{spec}': expected cpu, cuda, cuda:N or cpu-portable")))
                }
            },
        }
    }

    /// Opens the device.
    pub fn open(self) -> Result<Backend> {
        let device = match self {
            DeviceSpec::Cpu | DeviceSpec::CpuPortable => Device::Cpu,
            DeviceSpec::Cuda(index) => cuda(index)?,
        };
        Ok(Backend { spec: self, device })
    }
}

/// An opened device and the op path that runs on it.
#[derive(Clone, Debug)]
pub struct Backend {
    pub spec: DeviceSpec,
    pub device: Device,
}

impl Backend {
    pub fn cpu() -> Backend {
        Backend { spec: DeviceSpec::Cpu, device: Device::Cpu }
    }

    /// Makes the ops on this thread take this backend's path until the guard drops.
    pub fn enter(&self) -> crate::ops::portable::PathGuard {
        crate::ops::portable::PathGuard::new(self.spec == DeviceSpec::CpuPortable)
    }
}

#[cfg(feature = "cuda")]
fn cuda(index: usize) -> Result<Device> {
    Device::new_cuda(index).map_err(|e| {
        Error::Unsupported(format!("cannot open CUDA device {index}: {}", e.to_string().lines().next().unwrap_or("")))
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda(_: usize) -> Result<Device> {
    Err(Error::Unsupported(
        "this build has no CUDA support; build with `--features cuda` (scripts/build-cuda.sh)".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(DeviceSpec::parse("cpu").unwrap(), DeviceSpec::Cpu);
        assert_eq!(DeviceSpec::parse("CPU-portable").unwrap(), DeviceSpec::CpuPortable);
        assert_eq!(DeviceSpec::parse("cuda:1").unwrap(), DeviceSpec::Cuda(1));
        assert!(DeviceSpec::parse("tpu").unwrap_err().to_string().contains("--device: unknown"));
        assert!(DeviceSpec::parse("cuda:x").is_err());
    }

    #[test]
    fn the_portable_path_holds_only_inside_the_guard() {
        let portable = DeviceSpec::CpuPortable.open().unwrap();
        assert!(!crate::ops::portable::forced());
        {
            let _g = portable.enter();
            assert!(crate::ops::portable::forced());
            let _inner = Backend::cpu().enter();
            assert!(!crate::ops::portable::forced());
        }
        assert!(!crate::ops::portable::forced());
    }
}
