//! Every copy between the host and the device that a dream step makes goes through here, and
//! is counted (per thread): on a GPU each one stalls the queue, so the dream keeps them out of
//! its steps, and a test holds it to that on the portable path (`tests/it/transfers.rs`).
//!
//! Constant tensors (resize and blur matrices, pooling divisors, tile weights, colour matrices)
//! are made once per device, name and shape and kept ([`constant`]): a step then uploads
//! nothing. candle has no such cache, nor a hook to count transfers, hence this module.

use candle_core::{Device, Result, Tensor};
use std::cell::Cell;
use std::sync::Mutex;

thread_local! {
    static TRANSFERS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    TRANSFERS.with(|c| c.set(c.get() + 1));
}

/// Host-device copies made on this thread so far.
pub fn transfers() -> u64 {
    TRANSFERS.with(|c| c.get())
}

/// Copies `data` to `device` as a tensor of `shape`.
pub fn upload(data: Vec<f32>, shape: &[usize], device: &Device) -> Result<Tensor> {
    count();
    Tensor::from_vec(data, shape, device)
}

/// Reads a one-element tensor back to the host.
pub fn read_scalar(t: &Tensor) -> Result<f32> {
    count();
    t.flatten_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1::<f32>()?
        .first()
        .copied()
        .ok_or_else(|| candle_core::Error::Msg("read_scalar: an empty tensor".into()))
}

/// Reads a tensor back to the host, flattened.
pub fn read_vec(t: &Tensor) -> Result<Vec<f32>> {
    count();
    t.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()
}

/// Kept constants: (name, device, tensor). Names carry the shape and parameters.
static CONSTANTS: Mutex<Vec<(String, Device, Tensor)>> = Mutex::new(Vec::new());
/// More than this many kept constants (a video whose frame size keeps changing, say) and the
/// cache starts over: each is small, but they should not grow without bound.
const MAX_CONSTANTS: usize = 512;

/// The constant named `name` of `shape` on `device`, made by `make` (row-major values) and
/// uploaded the first time, then kept. `name` must say everything the values depend on.
pub fn constant(name: &str, shape: &[usize], device: &Device, make: impl FnOnce() -> Vec<f32>) -> Result<Tensor> {
    {
        let kept = CONSTANTS.lock().expect("constants lock");
        if let Some((_, _, t)) = kept.iter().find(|(n, d, t)| n == name && d.same_device(device) && t.dims() == shape) {
            return Ok(t.clone());
        }
    }
    let values = make();
    let t = upload(values, shape, device)?;
    let mut kept = CONSTANTS.lock().expect("constants lock");
    if kept.len() >= MAX_CONSTANTS {
        kept.clear();
    }
    kept.push((name.to_owned(), device.clone(), t.clone()));
    Ok(t)
}

/// Whether reading a value back from tensors on `device` costs a wait: on a GPU, and on the
/// portable path that stands in for it on the CPU (so that tests see what a GPU would do).
pub fn reads_stall(device: &Device) -> bool {
    !device.is_cpu() || super::portable::forced()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_constant_is_made_once_per_name_and_shape() {
        let before = transfers();
        let mut made = 0;
        for _ in 0..3 {
            constant("test-ones-2x3", &[2, 3], &Device::Cpu, || {
                made += 1;
                vec![1.0; 6]
            })
            .unwrap();
        }
        assert_eq!((made, transfers() - before), (1, 1));
        let t = constant("test-ones-2x3", &[3, 2], &Device::Cpu, || vec![2.0; 6]).unwrap();
        assert_eq!(read_vec(&t).unwrap(), vec![2.0; 6]);
        assert_eq!(transfers() - before, 3);
    }
}
