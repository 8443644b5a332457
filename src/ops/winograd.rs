//! 3x3 stride-1 convolutions by Winograd's minimal filtering F(2x2, 3x3) (Lavin and Gray,
//! "Fast Algorithms for Convolutional Neural Networks", 2015): each 2x2 block of outputs comes
//! from a 4x4 block of input through 16 products per input and output channel pair, where the
//! direct convolution spends 36 -- 2.25 times fewer multiply-adds.
//!
//! Why by hand: neither candle nor OpenBLAS has it, and the crates that do (in ONNX runtimes)
//! bring their own tensor types and thread pools. The products are the implicit-product kernel
//! of `igemm.rs` (as 1x1 convolutions over the transformed tiles); this file adds the three
//! transforms around them.
//!
//! The input is copied once into padded planes whose columns are split by parity, so that the
//! 4x4 input block of each of 16 neighbouring tiles is 16 plain vector loads. Then the tiles are
//! worked in runs, one run per task: the run's input transform `V = Bt d B` (16 planes of
//! `[c][run]`), 16 products `M = U V` with the transformed weights `U = G g Gt` (made once per
//! layer), and the output transform `Y = At M A` with bias and activation as the results are
//! written -- a run's `V` and `M` stay in the core's L2 cache.
//!
//! Accuracy: F(2x2, 3x3)'s transforms only add, subtract and halve (one consequence: an
//! infinite input meets its own negative inside a tile and gives NaN where the direct
//! convolution gives an infinity -- a dream that far gone is NaN a step later either way); against float64 its error
//! is about twice the direct float32 convolution's (mean 2.6e-7 vs 1.3e-7 of the output's
//! magnitude on 96 ReLU channels). F(4x4, 3x3) would save more products, but its error was 10
//! times the direct one's, with outliers 40 times, the size that flipped ReLU masks and failed
//! the PyTorch references in the AMX experiment (README "Speed").

use super::conv::Activation;
use super::igemm::{self, Conv, Grid, MR, NR, Out, Packed};
use rayon::prelude::*;

/// Taps of the transformed tile: 4x4.
const XI: usize = 16;

/// A layer's weights `[m, c, 3, 3]` transformed, `U = G g Gt`, as the 16 matrices `[m, c]`
/// packed for the product kernel.
pub struct Transformed {
    m: usize,
    c: usize,
    u: Vec<Packed>,
}

impl Transformed {
    /// Transforms the row-major `[m, c, 3, 3]` weights `w` (in float64, rounded once).
    pub fn new(w: &[f32], m: usize, c: usize) -> Transformed {
        assert_eq!(w.len(), m * c * 9, "winograd: weights of {m}x{c}x3x3");
        let mut u = vec![vec![0.0f32; m * c]; XI];
        // G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
        let g = |a: f64, b: f64, c: f64| [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c];
        for (oc, k) in w.chunks_exact(9).enumerate() {
            let k: Vec<f64> = k.iter().map(|v| *v as f64).collect();
            let cols: Vec<[f64; 4]> = (0..3).map(|x| g(k[x], k[3 + x], k[6 + x])).collect();
            for (i, row) in (0..4).map(|i| g(cols[0][i], cols[1][i], cols[2][i])).enumerate() {
                for (j, v) in row.iter().enumerate() {
                    u[i * 4 + j][oc] = *v as f32;
                }
            }
        }
        Transformed { m, c, u: u.iter().map(|u| Packed::new(u, m, c)).collect() }
    }
}

/// Whether this convolution takes Winograd's route: a 3x3 kernel at stride 1.
pub fn fits(job: &Conv) -> bool {
    job.kh == 3 && job.kw == 3 && job.sh == 1 && job.sw == 1 && job.oh > 0 && job.ow > 0 && job.c > 0
}

thread_local! {
    /// The padded parity planes of the input (kept between calls, as `igemm`'s padded input).
    static PLANES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// A task's transformed input tiles and their products.
    static TILES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    static PRODUCTS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Where the tiles are: `th x tw` tiles of 2x2 outputs, the padded planes (two parities of
/// `hp` rows `wq` wide per channel).
#[derive(Clone, Copy)]
struct Tiling {
    tw: usize,
    hp: usize,
    wq: usize,
}

impl Tiling {
    fn plane(&self) -> usize {
        2 * self.hp * self.wq
    }

    /// The tiles `t0..t1` (row-major) in runs of at most 16 along a row: (tile row, first
    /// column, count).
    fn chunks(&self, t0: usize, t1: usize) -> Vec<(usize, usize, usize)> {
        let mut out = Vec::new();
        let mut t = t0;
        while t < t1 {
            let (ty, tx) = (t / self.tw, t % self.tw);
            let n = 16.min(self.tw - tx).min(t1 - t);
            out.push((ty, tx, n));
            t += n;
        }
        out
    }
}

/// `y[o] = act(bias[o] + sum w[o, c, ky, kx] x[c, oy + ky - pt, ox + kx - pl])`, as
/// `igemm::conv` computes it, for a 3x3 kernel at stride 1 (see [`fits`]), as `[m, oh, ow]`.
pub fn conv(u: &Transformed, bias: Option<&[f32]>, act: Activation, job: &Conv) -> Vec<f32> {
    conv_in_runs(u, bias, act, job, None)
}

/// [`conv`], with the run length (a multiple of NR tiles) given, for the tests.
fn conv_in_runs(u: &Transformed, bias: Option<&[f32]>, act: Activation, job: &Conv, run: Option<usize>) -> Vec<f32> {
    assert!(igemm::available(), "winograd: the CPU lacks AVX-512F");
    assert!(fits(job), "winograd: not a 3x3 convolution at stride 1");
    assert_eq!(u.c, job.c, "winograd: weights for another input");
    assert_eq!(job.x.len(), job.c * job.h * job.w, "winograd: input of another size");
    let (c, m) = (u.c, u.m);
    let (th, tw) = (job.oh.div_ceil(2), job.ow.div_ceil(2));
    let tiling = Tiling { tw, hp: 2 * th + 2, wq: tw + 1 };
    let tiles = th * tw;
    let bias = bias.map_or_else(|| vec![0.0f32; m], |b| b[..m].to_vec());
    let zero = vec![0.0f32; m.div_ceil(MR) * MR];
    // Runs of whole micro-tiles (NR = 48 tiles), a run's V and M within about 768 KB, and at
    // least four runs a thread where the layer has that many tiles.
    let cached = (768 * 1024 / (XI * 4 * (c + m))).max(NR);
    let even = tiles.div_ceil(rayon::current_num_threads() * 4);
    let run = run.unwrap_or(cached.min(even).div_ceil(NR).max(1) * NR);
    assert!(run > 0 && run.is_multiple_of(NR), "winograd: runs of whole micro-tiles");
    let runs = tiles.div_ceil(run);
    let mut y: Vec<f32> = Vec::with_capacity(m * job.oh * job.ow);
    let out = Out(y.as_mut_ptr());
    super::conv::with_buffer(&PLANES, c * tiling.plane(), |planes| {
        pad(job, &tiling, planes);
        let planes = &*planes;
        (0..runs).into_par_iter().for_each(|r| {
            let (t0, t1) = (r * run, ((r + 1) * run).min(tiles));
            let n = t1 - t0;
            let chunks = tiling.chunks(t0, t1);
            let (vs, ps) = (spread(c * n), spread(m * n));
            // The same for all 16 products: tap `c` reads transformed channel `c`.
            let offsets: Vec<usize> = (0..c).map(|ch| ch * n).collect();
            super::conv::with_buffer(&TILES, XI * vs, |v| {
                super::conv::with_buffer(&PRODUCTS, XI * ps, |p| {
                    // SAFETY: AVX-512F was checked above; the transforms read and write inside
                    // the slices they are given (asserted there), and the output transform
                    // writes only the output pixels of this run's tiles.
                    unsafe {
                        input_transform(planes, c, &tiling, t0, &chunks, n, vs, v);
                        for xi in 0..XI {
                            products(&u.u[xi], &v[xi * vs..][..c * n], n, &mut p[xi * ps..][..m * n], &offsets, &zero);
                        }
                        output_transform(p, m, n, ps, t0, &chunks, job, &bias, act, out);
                    }
                })
            })
        });
    });
    // SAFETY: every output pixel lies in exactly one tile, and each tile in one run, whose
    // output transform wrote it for every channel.
    unsafe { y.set_len(m * job.oh * job.ow) };
    y
}

/// The input (masked) into the parity planes: plane `(c, p)` row `r` column `j` holds input
/// pixel `(r - pt, 2j + p - pl)`, zero outside the input.
fn pad(job: &Conv, t: &Tiling, planes: &mut [f32]) {
    let (h, w) = (job.h, job.w);
    planes.par_chunks_mut(t.plane()).enumerate().for_each(|(c, out)| {
        let src = &job.x[c * h * w..][..h * w];
        let mask = job.mask.map(|(y, act)| (&y[c * h * w..][..h * w], act));
        let mut masked = vec![0.0f32; if mask.is_some() { w } else { 0 }];
        for r in 0..t.hp {
            let iy = r as isize - job.pt as isize;
            let rows = out.chunks_exact_mut(t.hp * t.wq).map(|p| &mut p[r * t.wq..][..t.wq]);
            if iy < 0 || iy >= h as isize {
                rows.for_each(|row| row.fill(0.0));
                continue;
            }
            let mut line = &src[iy as usize * w..][..w];
            if let Some((y, act)) = mask {
                super::wide(|| super::conv::mask_into(&mut masked, line, &y[iy as usize * w..][..w], act));
                line = &masked;
            }
            for (p, row) in rows.enumerate() {
                super::conv::phase_row(row, line, 2, p, job.pl);
            }
        }
    });
}

/// The distance between the 16 planes of a run's transformed tiles (or products) of `len`
/// floats each: an odd number of 64-byte lines, so that the 16 planes' stores of one channel
/// fall in 16 different sets of the L1 cache. At `len` a multiple of 1024 floats (96 channels
/// x 96 tiles: 36 KB) all 16 landed in one set of 12 ways, and the transforms waited on L2.
fn spread(len: usize) -> usize {
    let s = len.div_ceil(16) * 16;
    if (s / 16).is_multiple_of(2) { s + 16 } else { s }
}

/// Lanes `0..n` of a vector.
#[cfg(target_arch = "x86_64")]
fn lanes(n: usize) -> u16 {
    ((1u32 << n.min(16)) - 1) as u16
}

/// `V = Bt d B` for the run's tiles (starting at tile `t0`, `n` of them) of every channel, into
/// `v[xi][c][n]` (`vs` floats from one `xi` to the next). Bt = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn input_transform(
    planes: &[f32],
    c: usize,
    t: &Tiling,
    t0: usize,
    chunks: &[(usize, usize, usize)],
    n: usize,
    vs: usize,
    v: &mut [f32],
) {
    use std::arch::x86_64::*;
    assert!(planes.len() >= c * t.plane() && vs >= c * n && v.len() >= XI * vs);
    let (pp, vp) = (planes.as_ptr(), v.as_mut_ptr());
    for ch in 0..c {
        for &(ty, tx, len) in chunks {
            let k = lanes(len);
            // d[row][col] of the 16 tiles: input row 2ty + row, column 2(tx + lane) + col, in
            // parity plane col % 2 at column tx + lane + col / 2 -- for the lanes in use always
            // inside the plane's row (wq = tw + 1 columns).
            let mut d = [[_mm512_setzero_ps(); 4]; 4];
            for (row, dr) in d.iter_mut().enumerate() {
                for (col, dv) in dr.iter_mut().enumerate() {
                    let at = ch * t.plane() + ((col % 2) * t.hp + 2 * ty + row) * t.wq + tx + col / 2;
                    // SAFETY: `at + len - 1` is inside the plane (see above).
                    *dv = unsafe { _mm512_maskz_loadu_ps(k, pp.add(at)) };
                }
            }
            let bt = |a: [__m512; 4]| {
                [
                    _mm512_sub_ps(a[0], a[2]),
                    _mm512_add_ps(a[1], a[2]),
                    _mm512_sub_ps(a[2], a[1]),
                    _mm512_sub_ps(a[1], a[3]),
                ]
            };
            // Bt along the columns (each column's four rows), then along the rows.
            let mut rows = [[_mm512_setzero_ps(); 4]; 4];
            for col in 0..4 {
                let v = bt([d[0][col], d[1][col], d[2][col], d[3][col]]);
                for (row, x) in v.iter().enumerate() {
                    rows[row][col] = *x;
                }
            }
            let at = (ty * t.tw + tx) - t0;
            for (i, r) in rows.iter().enumerate() {
                let cols = bt(*r);
                for (j, val) in cols.iter().enumerate() {
                    // SAFETY: tiles `at..at + len` of plane (i * 4 + j, ch) lie inside `v`.
                    unsafe { _mm512_mask_storeu_ps(vp.add((i * 4 + j) * vs + ch * n + at), k, *val) };
                }
            }
        }
    }
}

/// `p[o][tile] = sum_c u[o][c] v[c][tile]` for one of the 16 taps, on the product kernel
/// (`offsets[c] = c * n`; `zero`, a zero bias for every block of `u`).
fn products(u: &Packed, v: &[f32], n: usize, p: &mut [f32], offsets: &[usize], zero: &[f32]) {
    assert!(v.len() >= u.k * n && p.len() >= u.m * n && offsets.last().is_some_and(|o| o + n <= v.len()));
    let g = Grid { src: v.as_ptr(), wp: n, grid: n, oh: 1, ow: n };
    // SAFETY: AVX-512F was checked by `conv`; the tiles read `v` at `c * n + lane` for lanes
    // below `n` (asserted inside `v`), and write `p`'s `m` channels of `n` tiles.
    unsafe {
        igemm::product(
            u,
            offsets,
            &g,
            0..n.div_ceil(NR),
            0..u.m.div_ceil(MR),
            Out(p.as_mut_ptr()),
            zero,
            Activation::Identity,
        )
    };
}

/// `Y = At M A` for the run's tiles of every output channel, plus the bias, through the
/// activation, into the output `[m, oh, ow]`. At = [[1, 1, 1, 0], [0, 1, -1, -1]].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn output_transform(
    p: &[f32],
    m: usize,
    n: usize,
    ps: usize,
    t0: usize,
    chunks: &[(usize, usize, usize)],
    job: &Conv,
    bias: &[f32],
    act: Activation,
    out: Out,
) {
    use std::arch::x86_64::*;
    assert!(ps >= m * n && p.len() >= XI * ps && bias.len() >= m);
    let (oh, ow) = (job.oh, job.ow);
    let tw = ow.div_ceil(2);
    let pp = p.as_ptr();
    // Lanes 0..8 of two vectors interleaved, and lanes 8..16.
    let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    let hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    for (o, &bo) in bias[..m].iter().enumerate() {
        let b = _mm512_set1_ps(bo);
        for &(ty, tx, len) in chunks {
            let k = lanes(len);
            let at = (ty * tw + tx) - t0;
            let mut q = [[_mm512_setzero_ps(); 4]; 4];
            for (i, qr) in q.iter_mut().enumerate() {
                for (j, qv) in qr.iter_mut().enumerate() {
                    // SAFETY: tiles `at..at + len` of plane (i * 4 + j, o) lie inside `p`.
                    *qv = unsafe { _mm512_maskz_loadu_ps(k, pp.add((i * 4 + j) * ps + o * n + at)) };
                }
            }
            let at_ = |a: [__m512; 4]| {
                [_mm512_add_ps(_mm512_add_ps(a[0], a[1]), a[2]), _mm512_sub_ps(_mm512_sub_ps(a[1], a[2]), a[3])]
            };
            // At along the columns, then along the rows.
            let mut s = [[_mm512_setzero_ps(); 4]; 2];
            for col in 0..4 {
                let v = at_([q[0][col], q[1][col], q[2][col], q[3][col]]);
                (s[0][col], s[1][col]) = (v[0], v[1]);
            }
            for (i, si) in s.iter().enumerate() {
                let oy = 2 * ty + i;
                if oy >= oh {
                    break;
                }
                let [y0, y1] = at_(*si).map(|x| igemm::activate(_mm512_add_ps(x, b), act));
                // Output columns 2 tx .. 2 (tx + len), those inside the row.
                let cols = (2 * len).min(ow - 2 * tx);
                let row = out.at((o * oh + oy) * ow + 2 * tx);
                // SAFETY: columns 2tx + 0..cols of row oy of channel o are this run's pixels.
                unsafe {
                    _mm512_mask_storeu_ps(row, lanes(cols), _mm512_permutex2var_ps(y0, lo, y1));
                    if cols > 16 {
                        _mm512_mask_storeu_ps(row.add(16), lanes(cols - 16), _mm512_permutex2var_ps(y0, hi, y1));
                    }
                }
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn input_transform(
    _: &[f32],
    _: usize,
    _: &Tiling,
    _: usize,
    _: &[(usize, usize, usize)],
    _: usize,
    _: usize,
    _: &mut [f32],
) {
    unreachable!("igemm::available is false off x86_64")
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn output_transform(
    _: &[f32],
    _: usize,
    _: usize,
    _: usize,
    _: usize,
    _: &[(usize, usize, usize)],
    _: &Conv,
    _: &[f32],
    _: Activation,
    _: Out,
) {
    unreachable!("igemm::available is false off x86_64")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_definition() {
        if !igemm::available() {
            eprintln!("no AVX-512F here: the im2col route serves every convolution");
            return;
        }
        let values = |n: usize, k: f32| (0..n).map(|i| (i as f32 * k).sin() * 1.7).collect::<Vec<_>>();
        // (c, h, w, m, pt, pb, pl, pr), pb and pr may be negative: same and valid padding, odd
        // and even outputs, lopsided padding, rows of more than 16 tiles, more input channels
        // than a pass of the kernel takes (KC), runs of tiles across rows, a 1x1 output,
        // padding wider than the kernel (a valid convolution's input gradient), input rows and
        // columns past the last tile.
        let cases = [
            (3, 17, 19, 16, 1, 1, 1, 1),
            (4, 12, 10, 9, 0, 0, 0, 0),
            (2, 11, 11, 5, 0, 1, 0, 1),
            (5, 5, 70, 11, 1, 1, 1, 1),
            (130, 6, 7, 10, 1, 1, 1, 1),
            (2, 40, 37, 3, 1, 1, 1, 1),
            (3, 30, 66, 9, 1, 1, 1, 1),
            (3, 3, 3, 4, 0, 0, 0, 0),
            (3, 7, 9, 5, 2, 2, 2, 2),
            (3, 10, 8, 6, 0, -3, 2, -2),
        ];
        for (i, &(c, h, w, m, pt, pb, pl, pr)) in cases.iter().enumerate() {
            let x = values(c * h * w, 0.37 + i as f32 * 0.01);
            let y = values(c * h * w, 0.91);
            let wt = values(m * c * 9, 0.53);
            let bias = values(m, 1.3);
            let u = Transformed::new(&wt, m, c);
            let (oh, ow) = ((h + pt) as isize + pb - 2, (w + pl) as isize + pr - 2);
            let (oh, ow) = (oh as usize, ow as usize);
            for act in [Activation::Identity, Activation::Relu, Activation::Relu6] {
                for mask in [None, Some((&y[..], act))] {
                    let job = Conv { x: &x, mask, c, h, w, kh: 3, kw: 3, pt, pl, sh: 1, sw: 1, oh, ow };
                    let want = igemm::tests::naive(&wt, m, &bias, act, &job);
                    // The run length the layer picks, and runs of several micro-tiles (which a
                    // test machine's small layers would not pick).
                    for run in [None, Some(2 * NR), Some(3 * NR)] {
                        let got = conv_in_runs(&u, Some(&bias), act, &job, run);
                        assert_eq!(got.len(), want.len(), "case {i}");
                        for (k, (g, e)) in got.iter().zip(&want).enumerate() {
                            assert!(
                                (g - e).abs() < 1e-4 * (1.0 + e.abs()),
                                "case {i} {act:?} mask {} run {run:?}: [{k}] {g} vs {e}",
                                mask.is_some()
                            );
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod speed {
    use super::*;

    /// `cargo test --release --lib winograd_speed -- --ignored --nocapture`: InceptionV3's 3x3
    /// layers at 512x512 and 384x384, forward and input gradient, here and on the direct kernel.
    #[test]
    #[ignore]
    fn winograd_speed() {
        if !igemm::available() {
            return;
        }
        // (c, h, m, pad): the stem's 3x3 layers, conv5, the mixed blocks' 3x3 pairs; the input
        // gradients as the transposed convolutions.
        let shapes = [
            (32, 255, 32, 0),
            (32, 253, 64, 1),
            (80, 126, 192, 0),
            (64, 61, 96, 1),
            (96, 61, 96, 1),
            (192, 124, 80, 2),
            (96, 61, 64, 1),
            (32, 191, 32, 0),
            (80, 94, 192, 0),
            (64, 45, 96, 1),
            (96, 45, 96, 1),
            (96, 22, 96, 1),
        ];
        let only: Option<usize> = std::env::var("WINO_ONLY").ok().and_then(|v| v.parse().ok());
        for (i, &(c, h, m, p)) in shapes.iter().enumerate() {
            if only.is_some_and(|o| o != i) {
                continue;
            }
            let x: Vec<f32> = (0..c * h * h).map(|i| (i as f32 * 0.37).sin()).collect();
            let wt: Vec<f32> = (0..m * c * 9).map(|i| (i as f32 * 0.11).cos()).collect();
            let packed = Packed::new(&wt, m, c * 9);
            let u = Transformed::new(&wt, m, c);
            let o = h + 2 * p - 2;
            let job = Conv { x: &x, mask: None, c, h, w: h, kh: 3, kw: 3, pt: p, pl: p, sh: 1, sw: 1, oh: o, ow: o };
            let time = |f: &dyn Fn() -> Vec<f32>| {
                let mut dt = f64::MAX;
                for _ in 0..if only.is_some() { 200 } else { 15 } {
                    let t = std::time::Instant::now();
                    let _ = f();
                    dt = dt.min(t.elapsed().as_secs_f64());
                }
                dt
            };
            let direct =
                if only.is_some() { 1.0 } else { time(&|| igemm::conv(&packed, None, Activation::Relu, &job)) };
            let wino = time(&|| conv(&u, None, Activation::Relu, &job));
            println!(
                "c{c} {h}x{h} -> {m} pad {p}: direct {:.2} ms, winograd {:.2} ms ({:.2}x)",
                direct * 1e3,
                wino * 1e3,
                direct / wino
            );
        }
    }
}
