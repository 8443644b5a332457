//! `classify`, `layers` and `bench`: look at a model rather than dream with it.

use deepdream::config::{Origin, Rule, Sourced, parse_layers, parse_size};
use deepdream::device::DeviceSpec;
use deepdream::dream::{self, LayerTerm, Objective};
use deepdream::model::{self, FeatureNet, weights};
use deepdream::{Result, io, ops};
use std::path::Path;
use std::time::Instant;

/// Refuses a model name the zoo does not know, blaming `--model`.
fn known_model(name: &str) -> Result<()> {
    model::info(name).map(|_| ()).map_err(|e| Origin::Flag("--model").blame(e))
}

/// Refuses an input too small for `net` to reach `taps`, saying what would work.
fn fits(net: &dyn FeatureNet, taps: &[String], logits: bool, size: (usize, usize), what: &str) -> Result<()> {
    let cpu = candle_core::Device::Cpu;
    match model::reaches(net, taps, logits, size, &cpu)? {
        true => Ok(()),
        false => Err(model::too_small(net, taps, logits, size, what, &cpu)),
    }
}

pub fn classify(input: &Path, top: usize, model_name: &str, max_size: Option<u32>) -> Result<()> {
    let top = Sourced::flag("--top", top).check(Rule::Between(1.0, 1000.0))?;
    let max_size = max_size.map(|m| Sourced::flag("--max-size", m).check(Rule::Between(16.0, 65_536.0))).transpose()?;
    known_model(model_name)?;
    let img = match max_size {
        Some(m) => io::load_rgb(input, Some(m))?,
        None => io::center_crop(&io::load_rgb(input, None)?, model::input_side(model_name) as u32),
    };
    let net = model::load(model_name)?;
    let size = (img.height() as usize, img.width() as usize);
    let what = if max_size.is_some() { "the image, shrunk to --max-size," } else { "the centre crop" };
    fits(net.as_ref(), &[], true, size, what)?;
    let pixels = io::to_tensor(&img, &candle_core::Device::Cpu)?;
    let labels = model::labels::imagenet();
    for (i, p) in dream::classify(net.as_ref(), &pixels, top)? {
        say!("{:6.2}%  {:4}  {}", p * 100.0, i, labels.get(i).copied().unwrap_or("?"));
    }
    Ok(())
}

pub fn layers(model_name: &str, size: &str) -> Result<()> {
    let (w, h) = Sourced::flag("--size", size.to_owned()).parse(parse_size)?;
    known_model(model_name)?;
    let net = model::load(model_name)?;
    let names = net.layer_names();
    fits(net.as_ref(), &names, false, (h, w), "--size")?;
    let x = candle_core::Tensor::zeros((1, 3, h, w), candle_core::DType::F32, &candle_core::Device::Cpu)?;
    let feats = net.forward(&x, &names, false)?;
    say!("layers of {} at {w}x{h} (channels x height x width):", net.name());
    for name in names {
        let d = feats.taps[&name].dims().to_vec();
        say!("  {name:<10} {}x{}x{}", d[1], d[2], d[3]);
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct BenchArgs {
    /// The model (`deepdream models` lists them).
    #[arg(long, default_value = model::DEFAULT_MODEL)]
    model: String,
    /// Image size, WxH.
    #[arg(long, default_value = "512x512")]
    size: String,
    /// Layers to dream on (default: the deepest layer, so the whole trunk runs).
    #[arg(long)]
    layers: Option<String>,
    /// Timed steps (after one warm-up step).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Use deterministic formula weights: timing without the real weights installed.
    #[arg(long)]
    formula_weights: bool,
    /// cpu, cuda, cuda:N or cpu-portable (see `dream --help`).
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// Medians of the timed steps, in seconds, and the FLOPs of one forward and one whole step.
struct Timings {
    forward: f64,
    step: f64,
    resize: f64,
    forward_flops: u64,
    step_flops: u64,
}

pub fn bench(a: &BenchArgs) -> Result<()> {
    let backend = DeviceSpec::parse(&a.device)?.open()?;
    let (w, h) = Sourced::flag("--size", a.size.clone()).parse(parse_size)?;
    let steps = Sourced::flag("--steps", a.steps).check(Rule::Between(1.0, 10_000.0))?;
    known_model(&a.model)?;
    let net = match a.formula_weights {
        true => model::build(&a.model, &weights::Weights::formula(), Path::new("formula")).map_err(|_| {
            deepdream::Error::usage(format!(
                "--formula-weights: {} has no formula weights (they exist for the torchvision architectures); \
                 run without it",
                a.model
            ))
        })?,
        false => model::load(&a.model)?,
    };
    let terms = match &a.layers {
        Some(spec) => Sourced::flag("--layers", spec.clone()).parse(|s| parse_layers(s).map_err(|e| e.to_string()))?,
        None => vec![LayerTerm::new(&net.layer_names().last().cloned().unwrap_or_default(), 1.0)],
    };
    let objective = Objective::layers(terms);
    objective.check(net.as_ref())?;
    let _ops = backend.enter();
    fits(net.as_ref(), &objective.taps(), false, (h, w), "--size")?;
    let t = time_steps(net.as_ref(), &objective, &backend.device, (h, w), steps)?;
    let layers: Vec<_> = objective.layers.iter().map(|t| t.layer.as_str()).collect();
    let threads = rayon::current_num_threads();
    let products =
        if backend.device.is_cpu() { format!(", {}", deepdream::ops::gemm::backend()) } else { String::new() };
    say!("{} {w}x{h} layers {} ({steps} steps, medians, {threads} threads{products})", a.model, layers.join(","));
    let gf = |flops: u64| flops as f64 / 1e9;
    let (bwd, bwd_flops) = ((t.step - t.forward).max(1e-9), t.step_flops.saturating_sub(t.forward_flops));
    for (what, secs, flops) in [("forward", t.forward, t.forward_flops), ("backward", bwd, bwd_flops)] {
        say!("  {what:<9} {:8.1} ms  {:7.2} GFLOP  {:6.1} GFLOP/s", secs * 1e3, gf(flops), gf(flops) / secs);
    }
    say!("  resize    {:8.1} ms  (upscale from the octave below, x1.4)", t.resize * 1e3);
    say!("  step      {:8.1} ms  (forward + backward)", t.step * 1e3);
    Ok(())
}

fn time_steps(
    net: &dyn FeatureNet,
    objective: &Objective,
    device: &candle_core::Device,
    (h, w): (usize, usize),
    steps: usize,
) -> Result<Timings> {
    let x = candle_core::Tensor::rand(-1f32, 1f32, (1, 3, h, w), device)?;
    let prepared = objective.prepare(net, &x)?;
    let small = dream::resize_for_octave(&x, 1.4)?;
    dream::loss_and_grad(net, objective, &x, &prepared)?; // warm-up
    let (mut fwd, mut step, mut resize) = (Vec::new(), Vec::new(), Vec::new());
    let (mut forward_flops, mut step_flops) = (0u64, 0u64);
    for _ in 0..steps {
        let (t, f) = (Instant::now(), ops::flops::total());
        ops::host::read_scalar(&objective.loss(net, &x, &prepared)?)?; // waits for the forward
        fwd.push(t.elapsed().as_secs_f64());
        let (t, f2) = (Instant::now(), ops::flops::total());
        forward_flops = f2 - f;
        dream::loss_and_grad(net, objective, &x, &prepared)?;
        device.synchronize()?; // a GPU runs asynchronously: wait before reading the clock
        step.push(t.elapsed().as_secs_f64());
        step_flops = ops::flops::total() - f2;
        let t = Instant::now();
        ops::resize_bilinear(&small, h, w)?;
        device.synchronize()?;
        resize.push(t.elapsed().as_secs_f64());
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok(Timings { forward: median(fwd), step: median(step), resize: median(resize), forward_flops, step_flops })
}

/// `check-kernels`: each fused op (`ops::fused`) on random inputs, on `device` against the CPU
/// version; one line per case, and an error if any differs by more than 1e-5 of its scale.
pub fn check_kernels(device: &str) -> Result<()> {
    use deepdream::ops::Activation;
    use deepdream::ops::fused::{self, Depthwise};
    let backend = DeviceSpec::parse(device)?.open()?;
    let dev = &backend.device;
    let cpu = candle_core::Device::Cpu;
    let rand = |shape: &[usize]| candle_core::Tensor::rand(-2f32, 2f32, shape, &cpu);
    let mut worst = 0f32;
    let mut compare = |what: &str, a: &candle_core::Tensor, b: &candle_core::Tensor| -> Result<()> {
        let b = b.to_device(&cpu)?;
        let scale = a.abs()?.max_all()?.to_scalar::<f32>()?.max(1.0);
        let diff = (a - &b)?.abs()?.max_all()?.to_scalar::<f32>()? / scale;
        worst = worst.max(diff);
        say!("{what:<60} relative difference {diff:.2e}");
        Ok(())
    };
    let acts = [Activation::Identity, Activation::Relu, Activation::Relu6];
    // (n, c, h, w, kernel, stride, pad top/left): EfficientNet's 3x3 and 5x5 layers, TF "SAME"
    // padding (0 before at stride 2 on even sizes), a crop, and odd sizes.
    let cases = [
        (1, 32, 57, 43, 3, 1, 1),
        (2, 24, 56, 40, 3, 2, 0),
        (1, 40, 29, 31, 5, 2, 1),
        (1, 16, 12, 9, 5, 1, 2),
        (1, 8, 9, 9, 3, 1, -1),
    ];
    for (i, &(n, c, h, w, k, s, p)) in cases.iter().enumerate() {
        let act = acts[i % 3];
        let oh = (h as isize + 2 * p.max(0) - k as isize) / s as isize + 1;
        let ow = (w as isize + 2 * p.max(0) - k as isize) / s as isize + 1;
        let g = Depthwise { n, c, h, w, oh: oh as usize, ow: ow as usize, kh: k, kw: k, s, pt: p, pl: p, act };
        let (x, wt, b) = (rand(&[n, c, h, w])?, rand(&[c, k * k])?, rand(&[c])?);
        let y = fused::depthwise_fwd(&x, &wt, &b, g)?;
        let on = |t: &candle_core::Tensor| t.to_device(dev);
        compare(
            &format!("depthwise forward {n}x{c}x{h}x{w} k{k} s{s} p{p} {act:?}"),
            &y,
            &fused::depthwise_fwd(&on(&x)?, &on(&wt)?, &on(&b)?, g)?,
        )?;
        let gy = rand(y.dims())?;
        let gx = fused::depthwise_bwd(&gy, &y, &wt, g)?;
        compare(
            &format!("depthwise input gradient {n}x{c}x{h}x{w} k{k} s{s} p{p} {act:?}"),
            &gx,
            &fused::depthwise_bwd(&on(&gy)?, &on(&y)?, &on(&wt)?, g)?,
        )?;
        let ya = fused::bias_act(&x, &b, act)?;
        compare(
            &format!("bias and activation {n}x{c}x{h}x{w} {act:?}"),
            &ya,
            &fused::bias_act(&on(&x)?, &on(&b)?, act)?,
        )?;
        let m = fused::act_mask(&gy, &y, act)?;
        compare(
            &format!("activation mask {n}x{c}x{}x{} {act:?}", oh, ow),
            &m,
            &fused::act_mask(&on(&gy)?, &on(&y)?, act)?,
        )?;
    }
    // Max pools: InceptionV3's 3x3 stride 2 (odd and even sizes), a padded stride-1 pool, on
    // whole-number inputs (tied maxima).
    let pools: [(usize, usize, usize, usize, usize, usize, usize); 3] =
        [(1, 16, 35, 35, 3, 2, 0), (2, 8, 20, 17, 3, 2, 0), (1, 8, 14, 14, 3, 1, 1)];
    for (n, c, h, w, k, st, p) in pools {
        let (oh, ow) = ((h + 2 * p - k).div_ceil(st) + 1, (w + 2 * p - k).div_ceil(st) + 1);
        let g = fused::MaxPool { n, c, h, w, oh, ow, kh: k, kw: k, sh: st, sw: st, pt: p as isize, pl: p as isize };
        let x = (rand(&[n, c, h, w])? * 3.0)?.round()?;
        let gy = rand(&[n, c, oh, ow])?;
        let gx = fused::maxpool_bwd(&gy, &x, g)?;
        let on = |t: &candle_core::Tensor| t.to_device(dev);
        compare(
            &format!("max pool input gradient {n}x{c}x{h}x{w} k{k} s{st} p{p}"),
            &gx,
            &fused::maxpool_bwd(&on(&gy)?, &on(&x)?, g)?,
        )?;
    }
    if worst > 1e-5 {
        return Err(deepdream::Error::internal(format!(
            "the fused kernels on {device} differ from the CPU's by {worst:.2e}"
        )));
    }
    say!("the fused kernels on {device} agree with the CPU's (worst {worst:.2e})");
    Ok(())
}
