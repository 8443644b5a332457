//! Finite-difference gradient tests for every op, on odd, non-square sizes.

use super::*;
use candle_core::{Device, Tensor, Var};
use rand::{Rng, SeedableRng, rngs::StdRng};

fn random(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

fn tensor(data: Vec<f32>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

/// `sum(f(x) * r)` computed in f64 on the host, so rounding does not swamp the difference.
fn weighted_sum(y: &Tensor, r: &[f32]) -> f64 {
    let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(y.len(), r.len());
    y.iter().zip(r).map(|(&a, &b)| a as f64 * b as f64).sum()
}

/// Compares the op's backward with central differences at `probes` random coordinates.
/// `kink(x_minus, x_plus)` says a coordinate's step crosses a non-differentiable point; such
/// coordinates are not compared (and most must be comparable).
fn gradcheck(
    f: &dyn Fn(&Tensor) -> Tensor,
    x: Vec<f32>,
    shape: &[usize],
    eps: f32,
    kink: &dyn Fn(&Tensor, &Tensor) -> bool,
) {
    let mut rng = StdRng::seed_from_u64(7);
    let xt = tensor(x.clone(), shape);
    let y = f(&xt);
    let r = random(&mut rng, y.elem_count(), 1.0);
    let var = Var::from_tensor(&xt).unwrap();
    let loss = (f(var.as_tensor()) * tensor(r.clone(), y.dims())).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let g = grads.get(var.as_tensor()).expect("no gradient reached the input");
    assert_eq!(g.dims(), shape);
    let g = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let (mut compared, probes) = (0, 60);
    for _ in 0..probes {
        let i = rng.random_range(0..x.len());
        let (mut xp, mut xm) = (x.clone(), x.clone());
        xp[i] += eps;
        xm[i] -= eps;
        let (xp, xm) = (tensor(xp, shape), tensor(xm, shape));
        if kink(&xm, &xp) {
            continue;
        }
        let fd = (weighted_sum(&f(&xp), &r) - weighted_sum(&f(&xm), &r)) / (2.0 * eps as f64);
        let tol = 2e-3 + 5e-3 * fd.abs();
        assert!((g[i] as f64 - fd).abs() < tol, "coordinate {i}: backward {} vs finite difference {fd}", g[i]);
        compared += 1;
    }
    assert!(compared > probes * 3 / 4, "only {compared} of {probes} coordinates were smooth");
}

fn conv_case(shape: [usize; 4], co: usize, k: (usize, usize), spec: ConvSpec) {
    let mut rng = StdRng::seed_from_u64(shape.iter().sum::<usize>() as u64 + co as u64);
    let cig = shape[1] / spec.groups;
    let fan_in = (cig * k.0 * k.1) as f32;
    let w = tensor(random(&mut rng, co * cig * k.0 * k.1, 2.0 / fan_in.sqrt()), &[co, cig, k.0, k.1]);
    let b = tensor(random(&mut rng, co, 1.0), &[co]);
    let conv = Conv2d::new(&w, Some(&b), spec).unwrap();
    let linear = Conv2d::new(&w, Some(&b), ConvSpec { activation: Activation::Identity, ..spec }).unwrap();
    let x = random(&mut rng, shape.iter().product(), 2.0);
    // A step crosses a kink when some pre-activation changes side of 0 (or 6).
    let kink = |xm: &Tensor, xp: &Tensor| {
        let (a, b) = (linear.forward(xm).unwrap(), linear.forward(xp).unwrap());
        let (a, b) =
            (a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        a.iter().zip(&b).any(|(&u, &v)| (u > 0.0) != (v > 0.0) || (u < 6.0) != (v < 6.0))
    };
    gradcheck(&|t| conv.forward(t).unwrap(), x, &shape, 1e-2, &kink);
}

fn no_kink(_: &Tensor, _: &Tensor) -> bool {
    false
}

#[test]
fn conv_dense_stride2_odd_sizes() {
    let spec = ConvSpec { stride: (2, 2), padding: Padding::symmetric(1, 1), ..Default::default() };
    conv_case([2, 3, 9, 14], 5, (3, 3), spec);
    // H and W of different parity: candle's own backward fails here.
    conv_case([1, 3, 10, 7], 4, (3, 3), spec);
}

#[test]
fn conv_same_padding_asymmetric_kernel() {
    let spec = ConvSpec { stride: (2, 2), padding: Padding::Same, activation: Activation::Relu6, ..Default::default() };
    conv_case([1, 4, 11, 8], 3, (5, 3), spec);
    let spec = ConvSpec { padding: Padding::Explicit { top: 0, bottom: 3, left: 3, right: 0 }, ..Default::default() };
    conv_case([1, 2, 7, 6], 3, (1, 7), spec);
}

/// The stride-1 cases again on the im2col route (the one CPUs without AVX-512 or AVX2 take).
#[test]
fn conv_stride1_on_the_im2col_route() {
    super::conv::on_im2col_route(|| {
        let spec =
            ConvSpec { padding: Padding::Explicit { top: 0, bottom: 3, left: 3, right: 0 }, ..Default::default() };
        conv_case([1, 2, 7, 6], 3, (1, 7), spec);
        conv_case([2, 6, 5, 9], 7, (1, 1), ConvSpec { activation: Activation::Relu, ..Default::default() });
        let spec = ConvSpec { padding: Padding::Same, activation: Activation::Relu6, ..Default::default() };
        conv_case([1, 3, 8, 9], 4, (3, 3), spec);
    });
}

#[test]
fn conv_pointwise_with_relu() {
    let spec = ConvSpec { activation: Activation::Relu, ..Default::default() };
    conv_case([2, 6, 5, 9], 7, (1, 1), spec);
}

#[test]
fn conv_depthwise_and_grouped() {
    for stride in [1, 2] {
        let spec =
            ConvSpec { stride: (stride, stride), padding: Padding::Same, groups: 6, activation: Activation::Relu6 };
        conv_case([1, 6, 13, 10], 6, (3, 3), spec);
        conv_case([1, 6, 9, 12], 12, (5, 5), spec); // channel multiplier 2
        conv_case([1, 6, 8, 11], 6, (3, 3), spec); // odd width: rows regroup unevenly at stride 2
    }
    let spec = ConvSpec { stride: (3, 3), padding: Padding::Same, groups: 4, activation: Activation::Relu };
    conv_case([1, 4, 10, 13], 4, (3, 3), spec);
    let spec = ConvSpec { padding: Padding::symmetric(1, 0), groups: 2, ..Default::default() };
    conv_case([1, 4, 7, 5], 6, (3, 2), spec);
}

#[test]
fn conv_matches_direct_sum() {
    // One output value by hand: a 2x2 kernel over a 3x3 input, padding 1, stride 2.
    let x = tensor((0..9).map(|v| v as f32).collect(), &[1, 1, 3, 3]);
    let w = tensor(vec![1.0, 2.0, 3.0, 4.0], &[1, 1, 2, 2]);
    let spec = ConvSpec { stride: (2, 2), padding: Padding::symmetric(1, 1), ..Default::default() };
    let y = Conv2d::new(&w, None, spec).unwrap().forward(&x).unwrap();
    assert_eq!(y.dims(), &[1, 1, 2, 2]);
    // y[0,0] = 4*x[0,0]; y[1,1] = 1*x[1,1] + 2*x[1,2] + 3*x[2,1] + 4*x[2,2]
    let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(y, vec![0.0, 3.0 * 1.0 + 4.0 * 2.0, 2.0 * 3.0 + 4.0 * 6.0, 4.0 + 10.0 + 21.0 + 32.0]);
}

/// Distinct values at least 0.01 apart, so a 1e-3 step never changes which one is the maximum.
fn distinct(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut v: Vec<f32> = (0..n).map(|i| i as f32 * 0.01).collect();
    for i in (1..n).rev() {
        v.swap(i, rng.random_range(0..=i));
    }
    v
}

#[test]
fn max_pool_gradient_is_one_at_the_maximum() {
    for (k, s, p, ceil) in [(3, 2, 0, true), (3, 2, 1, false), (2, 2, 0, true), (3, 1, 1, false)] {
        let shape = [1, 2, 11, 8];
        let pool = Pool2d::max(k, s, p, ceil);
        gradcheck(&|t| pool.forward(t).unwrap(), distinct(176, k as u64), &shape, 1e-3, &no_kink);
    }
}

#[test]
fn avg_pool_gradient_stays_inside() {
    for (k, s, p, ceil, inc) in
        [(3, 2, 1, true, true), (3, 2, 1, true, false), (2, 2, 0, false, true), (3, 1, 1, false, false)]
    {
        let shape = [2, 2, 9, 7];
        let pool = Pool2d::avg(k, s, p, ceil, inc);
        gradcheck(&|t| pool.forward(t).unwrap(), distinct(252, 3), &shape, 1e-2, &no_kink);
    }
}

#[test]
fn pool_output_sizes_match_pytorch() {
    let x = Tensor::zeros((1, 1, 148, 148), candle_core::DType::F32, &Device::Cpu).unwrap();
    // torchvision GoogLeNet: MaxPool2d(3, 2, ceil_mode=True) on 112 -> 56, on 148 -> 73 floor / 74 ceil.
    assert_eq!(Pool2d::max(3, 2, 0, true).forward(&x).unwrap().dims(), &[1, 1, 74, 74]);
    assert_eq!(Pool2d::max(3, 2, 0, false).forward(&x).unwrap().dims(), &[1, 1, 73, 73]);
    let x = Tensor::zeros((1, 1, 14, 14), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert_eq!(Pool2d::max(2, 2, 0, true).forward(&x).unwrap().dims(), &[1, 1, 7, 7]);
    assert_eq!(Pool2d::max(3, 2, 1, true).forward(&x).unwrap().dims(), &[1, 1, 8, 8]);
}

#[test]
fn avg_pool_divisor_with_padding() {
    let x = Tensor::ones((1, 1, 3, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
    let inc = Pool2d::avg(3, 1, 1, false, true).forward(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let exc = Pool2d::avg(3, 1, 1, false, false).forward(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!((inc[0] - 4.0 / 9.0).abs() < 1e-6 && (inc[4] - 1.0).abs() < 1e-6);
    assert!(exc.iter().all(|v| (v - 1.0).abs() < 1e-6));
}

#[test]
fn max_pool_ties_go_to_the_first_position_in_row_major_order() {
    // PyTorch: a window of equal values sends its gradient to its top-left element. With
    // MaxPool2d(3, 2) on a 5x5 plane of ones the four windows start at (0,0), (0,2), (2,0), (2,2).
    let x = Var::from_tensor(&Tensor::ones((1, 1, 5, 5), candle_core::DType::F32, &Device::Cpu).unwrap()).unwrap();
    let y = Pool2d::max(3, 2, 0, false).forward(x.as_tensor()).unwrap();
    let g = y.sum_all().unwrap().backward().unwrap();
    let gx = g.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mut want = vec![0.0f32; 25];
    for i in [0, 2, 10, 12] {
        want[i] = 1.0;
    }
    assert_eq!(gx, want);
}
