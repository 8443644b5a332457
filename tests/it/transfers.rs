//! Issue 15: a dream step on the portable path (the GPU's code, run on the CPU) copies nothing
//! between host and device unless the loss is wanted, and then one value. Counted by
//! `ops::host::transfers`, through which every such copy of the dream goes.

use super::util::*;
use deepdream::device::DeviceSpec;
use deepdream::dream::{self, DreamParams, LayerTerm, Objective, Progress, Quiet, StepInfo};
use deepdream::ops::host;
use deepdream::{io, model::FeatureNet};

/// A progress display that wants the loss every `every` steps.
struct Wants(usize, usize);

impl Progress for Wants {
    fn step(&mut self, info: &StepInfo) -> bool {
        self.1 += info.loss.is_some() as usize;
        true
    }
    fn loss_every(&self) -> usize {
        self.0
    }
}

fn params(steps: usize) -> DreamParams {
    let mut p = DreamParams {
        objective: Objective::layers(vec![LayerTerm::new("block4", 1.0), LayerTerm::new("block6", 0.5)]),
        regularize: Default::default(),
        octaves: 2,
        octave_scale: 1.4,
        steps,
        step: 0.02,
        max_loss: None,
        jitter: 4,
        seed: 3,
        // Two windows a side at the larger octave: the tiled path too.
        tiling: dream::Tiling::with_tile(64),
        original_colors: false,
    };
    p.regularize.laplacian = 3;
    p.regularize.grad_blur = 0.5;
    p.regularize.decorrelate = true;
    p
}

/// Host-device copies of one dream.
fn transfers(net: &dyn FeatureNet, p: &DreamParams, progress: &mut dyn Progress) -> (u64, usize) {
    let img = io::to_tensor(
        &io::load_rgb(&repo().join("examples/chelsea.png"), Some(112)).unwrap(),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let before = host::transfers();
    let out = dream::dream(net, &img, p, progress).unwrap();
    (host::transfers() - before, out.losses.len())
}

#[test]
fn a_dream_step_on_the_portable_path_stays_on_the_device() {
    let net = lite0();
    let backend = DeviceSpec::CpuPortable.open().unwrap();
    let _portable = backend.enter();
    transfers(net, &params(1), &mut Quiet); // constants made and kept
    let (few, n_few) = transfers(net, &params(2), &mut Quiet);
    let (many, n_many) = transfers(net, &params(7), &mut Quiet);
    eprintln!("quiet: {few} transfers for {n_few} steps, {many} for {n_many}");
    assert_eq!((n_few, n_many), (4, 14), "every step's loss is still reported at the end");
    assert_eq!(many, few, "a step without progress copies nothing between host and device");
    // A display that wants the loss every 3 steps: one read each time (and at octave ends).
    let mut wants = Wants(3, 0);
    let (shown, _) = transfers(net, &params(7), &mut wants);
    eprintln!("loss every 3 steps: {shown} transfers, {} losses shown", wants.1);
    assert_eq!(wants.1, 6, "steps 0, 3 and 6 of each octave");
    assert!(shown <= many + 6, "at most one read per shown loss: {shown} vs {many} + 6");
    // max_loss needs every loss at once: at most one read a step.
    let (bounded, _) = transfers(net, &DreamParams { max_loss: Some(1e9), ..params(7) }, &mut Quiet);
    assert!(bounded <= many + 14, "max_loss: {bounded} transfers for 14 steps (without: {many})");
}

#[test]
fn a_dream_on_the_portable_path_still_reports_divergence() {
    let net = lite0();
    let backend = DeviceSpec::CpuPortable.open().unwrap();
    let _portable = backend.enter();
    let img = io::to_tensor(
        &io::load_rgb(&repo().join("examples/chelsea.png"), Some(112)).unwrap(),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    // A loss that overflows, read only at the end of the dream: still an error naming the step.
    let p = DreamParams { objective: Objective::layers(vec![LayerTerm::new("block4", 3e38)]), ..params(4) };
    let err = dream::dream(net, &img, &p, &mut Quiet).err().expect("an overflowing loss diverges");
    assert!(err.to_string().contains("diverged") && err.to_string().contains("octave 1, step 1"), "{err}");
    let nan = candle_core::Tensor::full(f32::NAN, (1, 3, 64, 64), &candle_core::Device::Cpu).unwrap();
    let err = dream::dream(net, &nan, &params(2), &mut Quiet).err().expect("a NaN image diverges");
    assert!(err.to_string().contains("diverged"), "{err}");
}
