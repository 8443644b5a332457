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
    let device = Device::new_cuda(index).map_err(|e| {
        Error::Unsupported(format!("cannot open CUDA device {index}: {}", e.to_string().lines().next().unwrap_or("")))
    })?;
    let knobs = CudaKnobs::from_env()?;
    knobs.apply(&device)?;
    Ok(device)
}

/// The CUDA settings worth an A/B on a new card, read from the environment (README, "GPU"):
///
/// - `DEEPDREAM_TF32=1`: f32 matrix products (the convolutions) on TF32 tensor cores, as
///   PyTorch's cuDNN convolutions do by default. Off by default: results then match the CPU.
/// - `DEEPDREAM_CUDA_KEEP_MEMORY=0`: give freed memory back to the driver at every
///   synchronisation (CUDA's default). On by default: the stream-ordered pool keeps what it freed,
///   as PyTorch's caching allocator does, so a step's tensors reuse the last step's memory.
/// - `DEEPDREAM_CUDA_EVENTS=1`: keep candle's per-tensor CUDA events (for work across several
///   streams). Off by default: a dream runs on one stream, and each event costs a driver call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CudaKnobs {
    pub tf32: bool,
    pub keep_memory: bool,
    pub events: bool,
}

impl CudaKnobs {
    /// Reads the knobs; a value other than 0 or 1 is refused, naming the variable.
    pub fn from_env() -> Result<CudaKnobs> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<CudaKnobs> {
        let flag = |name: &str, default: bool| -> Result<bool> {
            match get(name).as_deref().map(str::trim) {
                None | Some("") => Ok(default),
                Some("1") | Some("true") | Some("on") => Ok(true),
                Some("0") | Some("false") | Some("off") => Ok(false),
                Some(v) => Err(Error::usage(format!("{name}: bad value '{v}': expected 0 or 1"))),
            }
        };
        Ok(CudaKnobs {
            tf32: flag("DEEPDREAM_TF32", false)?,
            keep_memory: flag("DEEPDREAM_CUDA_KEEP_MEMORY", true)?,
            events: flag("DEEPDREAM_CUDA_EVENTS", false)?,
        })
    }

    #[cfg(feature = "cuda")]
    fn apply(self, device: &Device) -> Result<()> {
        use candle_core::cuda_backend::cudarc::driver::sys;
        candle_core::cuda_backend::set_gemm_reduced_precision_f32(self.tf32);
        let cuda = device.as_cuda_device()?;
        if !self.events {
            // SAFETY: every op of a dream is issued on this device's one stream, so no tensor is
            // used on another stream; candle's events only order work across streams.
            unsafe { cuda.disable_event_tracking() };
        }
        if self.keep_memory {
            let stream = cuda.cuda_stream();
            let ctx = stream.context();
            ctx.bind_to_thread().map_err(|e| Error::Unsupported(format!("CUDA: {e}")))?;
            let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
            let mut threshold: u64 = u64::MAX;
            // SAFETY: plain driver calls on the context's own device, with valid out-pointers;
            // a failure (no memory pools on this device) only leaves CUDA's default behaviour.
            unsafe {
                if sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) == sys::CUresult::CUDA_SUCCESS {
                    sys::cuMemPoolSetAttribute(
                        pool,
                        sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                        (&mut threshold as *mut u64).cast(),
                    );
                }
            }
        }
        Ok(())
    }
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
    fn cuda_knobs_read_the_environment() {
        let none = CudaKnobs::from_lookup(|_| None).unwrap();
        assert_eq!(none, CudaKnobs { tf32: false, keep_memory: true, events: false });
        let set = |k: &str| match k {
            "DEEPDREAM_TF32" => Some("1".to_string()),
            "DEEPDREAM_CUDA_KEEP_MEMORY" => Some("0".to_string()),
            _ => None,
        };
        assert_eq!(CudaKnobs::from_lookup(set).unwrap(), CudaKnobs { tf32: true, keep_memory: false, events: false });
        let bad = CudaKnobs::from_lookup(|k| (k == "DEEPDREAM_CUDA_EVENTS").then(|| "yes".to_string()));
        assert!(bad.unwrap_err().to_string().contains("DEEPDREAM_CUDA_EVENTS: bad value 'yes'"));
    }

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
