//! The octave loop on the real default model, with small images so it stays quick.

use crate::util::{lite0, repo};
use candle_core::{Device, Tensor};
use deepdream::dream::{self, loss_and_grad, DreamParams, LayerTerm, Objective, Prepared, Quiet};
use deepdream::io;

fn small_example(max: u32) -> Tensor {
    io::to_tensor(&io::load_rgb(&repo().join("examples/chelsea.png"), Some(max)).unwrap(), &Device::Cpu).unwrap()
}

fn params(steps: usize, jitter: usize, seed: u64) -> DreamParams {
    DreamParams {
        objective: Objective::layers(vec![LayerTerm::new("block4", 1.0)]),
        regularize: Default::default(),
        octaves: 2,
        octave_scale: 1.4,
        steps,
        step: 0.02,
        max_loss: None,
        jitter,
        seed,
    }
}

#[test]
fn ascent_raises_the_loss_in_every_octave() {
    let out = dream::dream(lite0(), &small_example(128), &params(6, 0, 0), &mut Quiet).unwrap();
    assert_eq!(out.losses.len(), 12);
    for octave in out.losses.chunks(6) {
        assert!(octave[5] > octave[0] * 1.2, "loss did not rise: {octave:?}");
    }
}

#[test]
fn seeded_jitter_is_reproducible() {
    let x = small_example(96);
    let a = dream::dream(lite0(), &x, &params(3, 8, 1), &mut Quiet).unwrap().pixels;
    let b = dream::dream(lite0(), &x, &params(3, 8, 1), &mut Quiet).unwrap().pixels;
    let c = dream::dream(lite0(), &x, &params(3, 8, 2), &mut Quiet).unwrap().pixels;
    let diff = |p: &Tensor, q: &Tensor| (p - q).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(diff(&a, &b), 0.0, "same seed, same output");
    assert!(diff(&a, &c) > 1.0, "another seed moves the jitter");
}

#[test]
fn max_loss_stops_each_octave() {
    let x = small_example(96);
    let mut p = params(5, 0, 0);
    p.max_loss = Some(0.0);
    let out = dream::dream(lite0(), &x, &p, &mut Quiet).unwrap();
    assert!(out.losses.is_empty(), "no step passes a max_loss of 0");
    // Without steps the octaves only resize: the image comes back close to the input.
    let err = (out.pixels - &x).unwrap().abs().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(err < 6.0, "mean change {err}");
}

#[test]
fn pixels_stay_in_range() {
    let mut p = params(4, 4, 0);
    p.step = 0.5; // large steps push against the clip
    let out = dream::dream(lite0(), &small_example(64), &p, &mut Quiet).unwrap().pixels;
    let (lo, hi) = (out.min_all().unwrap().to_scalar::<f32>().unwrap(), out.max_all().unwrap().to_scalar::<f32>().unwrap());
    assert!(lo >= -1e-3 && hi <= 255.0 + 1e-3, "{lo}..{hi}");
}

/// Peak resident memory of this process, from /proc (Linux).
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<f64>().ok()? / 1024.0)
}

#[test]
fn a_1024x768_step_fits_in_memory() {
    let x = Tensor::rand(0f32, 255f32, (1, 3, 768, 1024), &Device::Cpu).unwrap();
    let x = lite0().normalization().apply(&x).unwrap();
    let objective = Objective::layers(vec![LayerTerm::new("block5", 1.0), LayerTerm::new("block10", 1.0)]);
    let (loss, grad) = loss_and_grad(lite0(), &objective, &x, &Prepared::default()).unwrap();
    assert!(loss.is_finite() && grad.dims() == [1, 3, 768, 1024]);
    if let Some(mb) = peak_rss_mb() {
        eprintln!("peak RSS after a 1024x768 step: {mb:.0} MB");
        assert!(mb < 4096.0, "peak RSS {mb:.0} MB");
    }
}
