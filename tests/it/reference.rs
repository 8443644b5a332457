//! Reproduces ../shared/reference: PyTorch's outputs for the same weights and inputs.

use crate::util::{lite0, psnr, shared};
use candle_core::{Device, Tensor};
use deepdream::dream::{self, loss_and_grad, DreamParams, LayerObjective, LayerTerm, Quiet};
use deepdream::io;
use serde_json::Value;

/// Checks a tensor against a reference summary: shape, mean, std, and sampled values, each
/// within `1e-3 * std` (the reference's tolerance).
fn check_tensor(what: &str, t: &Tensor, r: &Value) {
    let shape: Vec<usize> = r["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    let dims = if shape.len() == 1 { vec![t.elem_count()] } else { t.dims().to_vec() };
    assert_eq!(dims, shape, "{what}: shape");
    let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let std = r["std"].as_f64().unwrap();
    let tol = 1e-3 * std;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
    assert!((mean - r["mean"].as_f64().unwrap()).abs() < tol, "{what}: mean {mean} vs {}", r["mean"]);
    let idx = r["sample_index"].as_array().unwrap();
    let want = r["sample"].as_array().unwrap();
    let mut worst = 0.0f64;
    for (i, w) in idx.iter().zip(want) {
        let got = v[i.as_u64().unwrap() as usize] as f64;
        worst = worst.max((got - w.as_f64().unwrap()).abs());
    }
    assert!(worst < tol, "{what}: worst sample error {worst:.3e} > {tol:.3e} (1e-3 of std {std:.3e})");
    let absmax = v.iter().fold(0.0f32, |m, &x| m.max(x.abs())) as f64;
    assert!((absmax - r["absmax"].as_f64().unwrap()).abs() < tol.max(1e-6 * absmax), "{what}: absmax");
}

#[test]
fn real_efficientnet_lite0_matches_pytorch() {
    let Some(shared) = shared() else { return };
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(shared.join("reference/real_efficientnet_lite0.json")).unwrap()).unwrap();
    let net = lite0();
    for case in reference["cases"].as_array().unwrap() {
        let name = case["image"].as_str().unwrap();
        let img = io::load_rgb(&shared.join("media").join(name), None).unwrap();
        let x = net.normalization().apply(&io::to_tensor(&img, &Device::Cpu).unwrap()).unwrap();
        let taps: Vec<String> = case["taps"].as_object().unwrap().keys().cloned().collect();
        let feats = net.forward(&x, &taps, true).unwrap();
        for tap in &taps {
            check_tensor(&format!("{name} {tap}"), &feats.taps[tap], &case["taps"][tap]);
        }
        check_tensor(&format!("{name} logits"), feats.logits.as_ref().unwrap(), &case["logits"]);
        let top5: Vec<usize> = dream::classify(net, &io::to_tensor(&img, &Device::Cpu).unwrap(), 5)
            .unwrap()
            .into_iter()
            .map(|(i, _)| i)
            .collect();
        let want: Vec<usize> = case["top5"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        assert_eq!(top5, want, "{name}: top-5");
        // The gradient of the reference loss, sum over loss_taps of mean(a^2) (FORMULA.md: no
        // border left out), with respect to the network input.
        let terms = case["loss_taps"].as_array().unwrap().iter().map(|t| LayerTerm { layer: t.as_str().unwrap().into(), weight: 1.0 });
        let objective = LayerObjective { terms: terms.collect(), border: 0 };
        let (loss, grad) = loss_and_grad(net, &objective, &x).unwrap();
        let want_loss = case["loss"].as_f64().unwrap();
        assert!((loss as f64 - want_loss).abs() < 1e-4 * want_loss, "{name}: loss {loss} vs {want_loss}");
        check_tensor(&format!("{name} input_grad"), &grad, &case["input_grad"]);
    }
}

fn reference_params(r: &Value) -> DreamParams {
    let terms = r["layers"].as_object().unwrap().iter().map(|(k, v)| LayerTerm { layer: k.clone(), weight: v.as_f64().unwrap() as f32 });
    DreamParams {
        objective: LayerObjective { terms: terms.collect(), border: 2 },
        octaves: r["octaves"].as_u64().unwrap() as usize,
        octave_scale: r["octave_scale"].as_f64().unwrap(),
        steps: r["steps_per_octave"].as_u64().unwrap() as usize,
        step: r["step"].as_f64().unwrap(),
        max_loss: None,
        jitter: 0,
        seed: 0,
    }
}

/// Runs the dream a reference JSON describes; returns our image, the reference image, our and
/// the reference's per-step losses.
fn run_reference(stem: &str) -> Option<(image::RgbImage, image::RgbImage, Vec<f32>, Vec<f64>)> {
    let shared = shared()?;
    let r: Value = serde_json::from_str(&std::fs::read_to_string(shared.join(format!("reference/{stem}.json"))).unwrap()).unwrap();
    let img = io::load_rgb(&shared.join("media").join(r["image"].as_str().unwrap()), None).unwrap();
    let out = dream::dream(lite0(), &io::to_tensor(&img, &Device::Cpu).unwrap(), &reference_params(&r), &mut Quiet).unwrap();
    let ours = io::to_image(&out.pixels).unwrap();
    let theirs = io::load_rgb(&shared.join(format!("reference/{stem}.png")), None).unwrap();
    let want = r["losses"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    Some((ours, theirs, out.losses, want))
}

#[test]
fn short_dream_matches_pytorch_pixels() {
    let Some((ours, theirs, losses, want)) = run_reference("dream_lite0_chelsea_short") else { return };
    let db = psnr(&ours, &theirs);
    if db < 35.0 {
        let path = std::env::temp_dir().join("dream_lite0_chelsea_short.actual.png");
        ours.save(&path).unwrap();
        panic!("PSNR {db:.1} dB < 35 dB; ours written to {}", path.display());
    }
    // Six steps: float rounding has only begun to move the losses apart.
    for (a, b) in losses.iter().zip(&want) {
        assert!((*a as f64 - b).abs() < 5e-3 * b, "loss {a} vs {b}");
    }
    eprintln!("short reference dream: PSNR {db:.1} dB");
}

#[test]
fn long_dream_losses_within_three_percent() {
    let Some((ours, theirs, losses, want)) = run_reference("dream_lite0_chelsea") else { return };
    assert_eq!(losses.len(), want.len());
    for (i, (a, b)) in losses.iter().zip(&want).enumerate() {
        assert!((*a as f64 - b).abs() <= 0.03 * b, "step {i}: loss {a} vs {b}");
    }
    eprintln!("long reference dream: PSNR {:.1} dB (not expected to match pixel for pixel)", psnr(&ours, &theirs));
}
