//! The octave loop on the real default model, with small images so it stays quick.

use crate::util::{lite0, repo};
use candle_core::{Device, Tensor};
use deepdream::dream::{self, DreamParams, LayerTerm, Objective, Prepared, Quiet, loss_and_grad};
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
        tiling: Default::default(),
        original_colors: false,
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
    let (lo, hi) =
        (out.min_all().unwrap().to_scalar::<f32>().unwrap(), out.max_all().unwrap().to_scalar::<f32>().unwrap());
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

/// Cosine similarity and relative L1 distance of two gradients.
fn compare(a: &Tensor, b: &Tensor) -> (f64, f64) {
    let (a, b) =
        (a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    let dot: f64 = a.iter().zip(&b).map(|(x, y)| (x * y) as f64).sum();
    let na: f64 = a.iter().map(|x| (x * x) as f64).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (x * x) as f64).sum::<f64>().sqrt();
    let l1: f64 = a.iter().zip(&b).map(|(x, y)| (x - y).abs() as f64).sum::<f64>()
        / b.iter().map(|y| y.abs() as f64).sum::<f64>();
    (dot / (na * nb), l1)
}

#[test]
fn tiled_gradient_matches_the_whole_image_and_has_no_seams() {
    // chelsea at 451x300 with 256-pixel tiles: a 2x2 grid of windows with 32-pixel margins,
    // far smaller than the 1024 default, so the windows see little context. The loss reads a
    // little high (the zero padding at a window's inner cut excites edge detectors: measured
    // 51.3 against 44.2) but the gradient, which is what moves the image, keeps its direction
    // (measured cosine 0.995). Windows keep the layer border on their inner cuts (only the
    // image's own edges lose it): cropping there too read 34.7 and gave cosine 0.992.
    let x = lite0().normalization().apply(&small_example(451)).unwrap();
    let objective = Objective::layers(vec![LayerTerm::new("block5", 1.0), LayerTerm::new("block10", 1.0)]);
    let (whole_loss, whole) = loss_and_grad(lite0(), &objective, &x, &Prepared::default()).unwrap();
    let tiler = dream::Tiler::new(&objective, lite0(), &x, dream::Tiling::with_tile(256)).unwrap();
    assert_eq!(tiler.windows(), 4);
    let (tiled_loss, tiled) = tiler.loss_and_grad(lite0(), &objective, &x, (0, 0)).unwrap();
    let tiled_loss = tiled_loss.to_scalar::<f32>().unwrap();
    let (cos, l1) = compare(&tiled, &whole);
    eprintln!("tiled vs whole: loss {tiled_loss} vs {whole_loss}, gradient cosine {cos:.4}, relative L1 {l1:.4}");
    assert!((tiled_loss / whole_loss - 1.0).abs() < 0.25, "loss {tiled_loss} vs {whole_loss}");
    assert!(cos > 0.98 && l1 < 0.2, "cosine {cos}, relative L1 {l1}");
    // No seam: across each cut (column 226, row 150) no step between neighbouring pixels of the
    // tiled gradient stands out from the others nearby more than in the whole image's gradient.
    // Measured: blended 1.27 and 1.33 against 1.27 and 1.30 (1.41 and 1.40 when the windows
    // lost their border on inner cuts too); hard cuts (margin 0) give 2.14.
    let jumpiness = |g: &Tensor, axis: usize, at: usize| {
        let band = g.narrow(axis, at - 40, 81).unwrap();
        let n = band.dim(axis).unwrap();
        let d = (band.narrow(axis, 1, n - 1).unwrap() - band.narrow(axis, 0, n - 1).unwrap()).unwrap().abs().unwrap();
        let keep = if axis == 3 { [0, 1, 2] } else { [0, 1, 3] };
        let mut steps = d
            .sum_keepdim(keep[2])
            .unwrap()
            .sum_keepdim(keep[1])
            .unwrap()
            .sum_keepdim(keep[0])
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        steps.sort_by(f32::total_cmp);
        steps[steps.len() - 1] / steps[steps.len() / 2]
    };
    for (axis, at) in [(3, 226), (2, 150)] {
        let (t, w) = (jumpiness(&tiled, axis, at), jumpiness(&whole, axis, at));
        eprintln!("largest step across the cut on axis {axis} over the median: tiled {t:.2}, whole {w:.2}");
        assert!(t < 1.3 * w, "a seam on axis {axis}: {t} against {w}");
    }
}

#[test]
fn tiled_dream_runs_end_to_end_with_positional_targets() {
    // An L2 guide compares features position by position, so each tile needs its own window
    // of the guide's features (the whole image's would not even have the tile's shape).
    let img = small_example(451);
    let mut p = params(3, 0, 1);
    p.octaves = 1;
    p.tiling = dream::Tiling::with_tile(256);
    let guided = |guide: Tensor| dream::Guide {
        image: guide,
        layers: vec![LayerTerm::new("block5", 1.0)],
        mode: dream::GuideMode::L2,
        weight: 1.0,
    };
    // Guided by itself, every tile's features equal its target: the loss is exactly zero.
    p.objective = Objective { guides: vec![guided(img.clone())], ..Objective::layers(vec![]) };
    let own = dream::dream(lite0(), &img, &p, &mut Quiet).unwrap();
    assert!(own.losses[0].abs() < 1e-6, "tiles compared with the wrong part of the guide: {:?}", own.losses);
    // Guided by another picture, the tiled ascent closes the distance step by step.
    let coffee =
        io::to_tensor(&io::load_rgb(&repo().join("examples/coffee.jpg"), Some(451)).unwrap(), &Device::Cpu).unwrap();
    p.objective.guides = vec![guided(coffee)];
    let out = dream::dream(lite0(), &img, &p, &mut Quiet).unwrap();
    assert_eq!(out.pixels.dims(), img.dims());
    assert!(out.losses.windows(2).all(|w| w[1] > w[0]), "loss did not rise: {:?}", out.losses);
}

#[test]
fn positional_targets_roll_with_the_jitter() {
    // The jitter rolls the image; an L2 guide must roll with it, or every step compares each
    // position with the guide's features some pixels away. Guided by itself, the rolled image
    // matches its rolled targets: loss zero, whole and tiled, whatever the shift.
    let img = small_example(300);
    let guide = dream::Guide {
        image: img.clone(),
        layers: vec![LayerTerm::new("block5", 1.0)],
        mode: dream::GuideMode::L2,
        weight: 1.0,
    };
    let objective = Objective { guides: vec![guide], ..Objective::layers(vec![]) };
    let x = lite0().normalization().apply(&img).unwrap();
    for tile in [0, 128] {
        let tiling = if tile == 0 { dream::Tiling::off() } else { dream::Tiling::with_tile(tile) };
        let tiler = dream::Tiler::new(&objective, lite0(), &x, tiling).unwrap();
        for (dy, dx) in [(0, 0), (5, -7), (-12, 3)] {
            let rolled = x.roll(dy, 2).unwrap().roll(dx, 3).unwrap();
            let loss =
                tiler.loss_and_grad(lite0(), &objective, &rolled, (dy, dx)).unwrap().0.to_scalar::<f32>().unwrap();
            assert!(
                loss.abs() < 1e-6,
                "tile {tile}, shift ({dy}, {dx}): the guide did not move with the image: loss {loss}"
            );
            if (dy, dx) != (0, 0) {
                // Told no shift, the same image is compared with unrolled targets: far off.
                let stale =
                    tiler.loss_and_grad(lite0(), &objective, &rolled, (0, 0)).unwrap().0.to_scalar::<f32>().unwrap();
                assert!(stale < -0.1, "tile {tile}: a misaligned guide should cost, got {stale}");
            }
        }
    }
}

#[test]
fn dreams_at_once_in_one_thread_pool() {
    // A rayon thread waiting inside one dream's convolution picks up another queued dream and
    // runs its convolutions: each needs a scratch buffer of its own (one borrowed per thread
    // panicked "already borrowed").
    let inputs: Vec<Tensor> = [112, 96, 104, 88].into_iter().map(small_example).collect();
    let p = params(3, 4, 1);
    let alone = |x: &Tensor| dream::dream(lite0(), x, &p, &mut Quiet).unwrap().pixels;
    let diff = |p: &Tensor, q: &Tensor| (p - q).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    let together = std::sync::Mutex::new(vec![None; inputs.len()]);
    rayon::scope(|s| {
        for (i, x) in inputs.iter().enumerate() {
            let (together, alone) = (&together, &alone);
            s.spawn(move |_| together.lock().unwrap()[i] = Some(alone(x)));
        }
    });
    for (x, t) in inputs.iter().zip(together.into_inner().unwrap()) {
        assert_eq!(diff(&t.unwrap(), &alone(x)), 0.0, "a dream beside others gives what it gives alone");
    }
}

/// Every size from 1 pixel up either dreams or is refused with a clear error, never a panic:
/// narrow rows once sliced past their end in the depthwise and pooling kernels.
#[test]
fn tiny_and_narrow_inputs_dream_or_are_refused() {
    let mut nets: Vec<(&str, &dyn deepdream::model::FeatureNet, &str)> =
        vec![("efficientnet-lite0", lite0(), "block12")];
    let inception =
        crate::util::installed("inception-v3-tf2015").then(|| deepdream::model::load("inception-v3-tf2015").unwrap());
    if let Some(net) = &inception {
        nets.push(("inception-v3-tf2015", net.as_ref(), "mixed4"));
    }
    for (name, net, layer) in nets {
        for (w, h) in (1..=40).map(|w| (w, 1 + w % 7)).chain([(64, 64), (3, 70), (70, 2)]) {
            for octaves in [1, 3] {
                let p = DreamParams {
                    octaves,
                    steps: 1,
                    objective: Objective::layers(vec![LayerTerm::new(layer, 1.0)]),
                    ..params(1, 2, 0)
                };
                let x = Tensor::ones((1, 3, h, w), candle_core::DType::F32, &Device::Cpu).unwrap();
                let checked = dream::check_smallest_octave(net, &p, (h, w), &Device::Cpu);
                match checked {
                    Ok(()) => {
                        let out = dream::dream(net, &x, &p, &mut Quiet).unwrap();
                        assert_eq!(out.pixels.dims(), &[1, 3, h, w], "{name} {w}x{h}");
                    }
                    Err(e) => assert!(e.to_string().contains("too small"), "{name} {w}x{h}: {e}"),
                }
            }
        }
    }
}

#[test]
fn a_diverging_dream_is_an_error_not_a_black_image() {
    let x = Tensor::full(f32::NAN, (1, 3, 64, 64), &Device::Cpu).unwrap();
    let err = dream::dream(lite0(), &x, &params(2, 0, 0), &mut Quiet).err().expect("an error");
    assert!(err.to_string().contains("diverged"), "{err}");
}
