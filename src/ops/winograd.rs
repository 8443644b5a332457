//! 3x3 stride-1 convolutions, and the input gradients of 5x5, 1x7 and 7x1 ones (on AVX2 without
//! AVX-512, their forward passes too), by Winograd's
//! minimal filtering (Lavin and Gray, "Fast Algorithms
//! for Convolutional Neural Networks", 2015): F(2x2, 3x3) makes each 2x2 block of outputs from a
//! 4x4 block of input through 16 products per input and output channel pair, where the direct
//! convolution spends 36 (2.25 times fewer multiply-adds); F(4x4, 3x3) each 4x4 block from a 6x6
//! block through 36 products, where the direct one spends 144 (4 times fewer); F(2x2, 5x5) each
//! 2x2 block of a 5x5 kernel's outputs from a 6x6 block, 36 products against 100; F(2, 7) two
//! outputs of a 1x7 (7x1) kernel from 8 pixels of a row (column), 8 products against 14.
//!
//! Why by hand: neither candle nor OpenBLAS has it, and the crates that do (in ONNX runtimes)
//! bring their own tensor types and thread pools. The products are the implicit-product kernel
//! of `igemm.rs` (as 1x1 convolutions over the transformed tiles); this file adds the three
//! transforms around them.
//!
//! The input is copied once into padded planes whose columns are split by their remainder
//! modulo the tile's width, so that the input block of each of 16 neighbouring tiles is 16
//! (4x4 blocks), 36 (6x6) or 8 (1x8, 8x1) plain vector loads. Then the tiles are worked in runs, one run per task: the
//! run's input transform `V = Bt d B` (planes of `[c][run]`, one per tap of the transformed
//! tile), the products `M = U V` with the transformed weights `U = G g Gt` (made once per
//! layer), and the output transform `Y = At M A` with bias and activation as the results are
//! written -- a run's `V` and `M` stay in the core's L2 cache.
//!
//! On a CPU with AVX2 and no AVX-512 all of them run: F(2x2, 3x3)'s transforms written over
//! 16-lane arrays and compiled for AVX2 (`input_transform_avx2`, `output_transform_avx2`), the
//! 6x6 and F(2, 7) ones in 8-lane intrinsics (`input_transform6_avx2`, `input_transform8_avx2`
//! and their output transforms: over the arrays the compiler kept spilling them in 4-lane
//! pieces), the products on `igemm`'s AVX2 kernel.
//!
//! Accuracy: F(2x2, 3x3)'s transforms only add, subtract and halve (one consequence: an
//! infinite input meets its own negative inside a tile and gives NaN where the direct
//! convolution gives an infinity -- a dream that far gone is NaN a step later either way);
//! against float64 its error is about twice the direct float32 convolution's (mean 2.6e-7 vs
//! 1.3e-7 of the output's magnitude on 96 ReLU channels). F(4x4, 3x3) and F(2x2, 5x5) multiply
//! by up to 8 and their errors are 7.5 to 10 times the direct one's (numpy against float64, by
//! point set and channels), F(2, 7)'s 5.5 times: the input gradients take them (see
//! [`Tile::for_gradients`]), the forward passes all three on AVX2, F(2x2, 3x3) on AVX-512 (see
//! [`Tile::for_forward`]).

use super::conv::Activation;
use super::igemm::{self, Conv, Grid, MR, Out, Packed};
use rayon::prelude::*;

/// The output tile and kernel: F(2x2, 3x3), F(4x4, 3x3), F(2x2, 5x5), or F(2, 7) along the
/// row of a 1x7 kernel or the column of a 7x1 one.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Tile {
    /// 2x2 outputs of a 3x3 kernel from a 4x4 input block, 16 products.
    F2,
    /// 4x4 outputs of a 3x3 kernel from a 6x6 input block, 36 products.
    F4,
    /// 2x2 outputs of a 5x5 kernel from a 6x6 input block, 36 products (the direct
    /// convolution's 100).
    F2k5,
    /// 1x2 outputs of a 1x7 kernel from a 1x8 input block, 8 products (the direct one's 14).
    F2k7Row,
    /// 2x1 outputs of a 7x1 kernel from an 8x1 input block, 8 products.
    F2k7Col,
}

/// `DEEPDREAM_WINOGRAD=2`: F(2x2, 3x3) for every 3x3 kernel, no other tile (for comparing).
fn f2_only() -> bool {
    static F2_ONLY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *F2_ONLY.get_or_init(|| std::env::var("DEEPDREAM_WINOGRAD").is_ok_and(|v| v.trim() == "2"))
}

impl Tile {
    /// Outputs along the tile's rows and columns.
    fn rows_cols(self) -> (usize, usize) {
        match self {
            Tile::F2 | Tile::F2k5 => (2, 2),
            Tile::F4 => (4, 4),
            Tile::F2k7Row => (1, 2),
            Tile::F2k7Col => (2, 1),
        }
    }

    /// The kernel's rows and columns.
    fn kernel(self) -> (usize, usize) {
        match self {
            Tile::F2 | Tile::F4 => (3, 3),
            Tile::F2k5 => (5, 5),
            Tile::F2k7Row => (1, 7),
            Tile::F2k7Col => (7, 1),
        }
    }

    /// The input block's rows and columns, `r + k - 1` each way.
    fn block(self) -> (usize, usize) {
        let ((ry, rx), (kh, kw)) = (self.rows_cols(), self.kernel());
        (ry + kh - 1, rx + kw - 1)
    }

    /// Taps of the transformed tile: the block's pixels.
    fn xi(self) -> usize {
        let (nh, nw) = self.block();
        nh * nw
    }

    /// The tile of a forward pass: for 3x3 kernels F(4x4, 3x3) on a CPU with AVX2 and no
    /// AVX-512, where it took 0.55-0.7 of the im2col route's time on InceptionV3's 3x3 layers
    /// against F(2x2)'s 0.65-0.95 (`cargo test --release --lib route_speed -- --ignored
    /// --nocapture`, alternating builds, Zen 3), and F(2x2, 3x3) on AVX-512 (F(4x4) not measured
    /// in the forward there) and with `DEEPDREAM_WINOGRAD=2`; for 5x5 kernels F(2x2, 5x5) on
    /// AVX2 (48 -> 64 at 61x61: 0.62-0.76 of the im2col time, where the same route against
    /// itself reads 0.87 in that test), none on AVX-512 (the direct kernel there); for 1x7 and
    /// 7x1 kernels F(2, 7) on AVX2 (after its transforms moved to 8-lane intrinsics: 128 -> 128
    /// 1x7 and 128 -> 192 7x1 at 30x30 0.7-0.8 of the im2col time, 160 channels at 21x21 and
    /// 14x14 0.78-1.0; before, with partial chunks copied through `memcpy`, 1.1-1.2), none on
    /// AVX-512. Its rounding
    /// decides which ReLU passes and which max-pool pixel wins downstream; the references allow
    /// for that (`tests/it/reference.rs`).
    pub fn for_forward(kh: usize, kw: usize) -> Option<Tile> {
        match (kh, kw) {
            (3, 3) => Some(if igemm::avx512() || f2_only() { Tile::F2 } else { Tile::F4 }),
            (5, 5) if !igemm::avx512() && !f2_only() => Some(Tile::F2k5),
            (1, 7) if !igemm::avx512() && !f2_only() => Some(Tile::F2k7Row),
            (7, 1) if !igemm::avx512() && !f2_only() => Some(Tile::F2k7Col),
            _ => None,
        }
    }

    /// The tile of the input gradients: F(4x4, 3x3), or F(2x2, 3x3) with `DEEPDREAM_WINOGRAD=2`
    /// (for comparing). In an input gradient the error stays an error of the values (the
    /// InceptionV3 reference's worst sample 6e-7, 0.1% of the spread).
    ///
    /// For a `kh x kw` kernel: 3x3 as above; 5x5 takes F(2x2, 5x5) (the same six points, so the
    /// same error), 1x7 and 7x1 F(2, 7) along their taps (eight points, 5.5 times the direct
    /// error), neither with `DEEPDREAM_WINOGRAD=2`; other kernels none.
    pub fn for_gradients(kh: usize, kw: usize) -> Option<Tile> {
        match (kh, kw, f2_only()) {
            (3, 3, true) => Some(Tile::F2),
            (3, 3, false) => Some(Tile::F4),
            (5, 5, false) => Some(Tile::F2k5),
            (1, 7, false) => Some(Tile::F2k7Row),
            (7, 1, false) => Some(Tile::F2k7Col),
            _ => None,
        }
    }

    /// `G t` for the taps `t` of a kernel column or row, in float64 (a single tap: itself). F2:
    /// G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]] (points 0, 1, -1 and
    /// infinity). The others (points 0, 1, -1, 2, -2 and infinity; F(2, 7) also 1/2 and -1/2):
    /// row i is `t` at the point `p` (`sum t_j p^j`) over the product of `p - q` for the other
    /// finite points `q` (4, -6, -6, 24, 24; F(2, 7): -1, -9/2, -9/2, 90, 90, 45/32, 45/32), the
    /// last row the last tap.
    fn g(self, t: &[f64]) -> Vec<f64> {
        let (kh, kw) = self.kernel();
        assert!(t.len() == kh || t.len() == kw, "winograd: {} taps for a {kh}x{kw} kernel", t.len());
        if t.len() == 1 {
            return t.to_vec();
        }
        if self == Tile::F2 {
            let [a, b, c] = [t[0], t[1], t[2]];
            return vec![a, 0.5 * (a + b + c), 0.5 * (a - b + c), c];
        }
        let points: &[f64] = match self {
            Tile::F2k7Row | Tile::F2k7Col => &[0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5],
            _ => &[0.0, 1.0, -1.0, 2.0, -2.0],
        };
        let at = |p: f64| t.iter().rev().fold(0.0, |acc, v| acc * p + v);
        let den = |p: f64| points.iter().filter(|&&q| q != p).map(|q| p - q).product::<f64>();
        points.iter().map(|&p| at(p) / den(p)).chain([t[t.len() - 1]]).collect()
    }
}

/// A layer's weights `[m, c, kh, kw]` transformed, `U = G g Gt`, as the `xi` matrices `[m, c]`
/// packed for the product kernel.
pub struct Transformed {
    m: usize,
    c: usize,
    tile: Tile,
    u: Vec<Packed>,
}

impl Transformed {
    /// Transforms the row-major `[m, c, kh, kw]` weights `w` (in float64, rounded once) for
    /// `tile`.
    pub fn new(w: &[f32], m: usize, c: usize, tile: Tile) -> Transformed {
        let ((kh, kw), (nh, nw)) = (tile.kernel(), tile.block());
        assert_eq!(w.len(), m * c * kh * kw, "winograd: weights of {m}x{c}x{kh}x{kw}");
        let mut u = vec![vec![0.0f32; m * c]; tile.xi()];
        for (oc, k) in w.chunks_exact(kh * kw).enumerate() {
            let k: Vec<f64> = k.iter().map(|v| *v as f64).collect();
            // G along each kernel column (cols[x][i]), then along the rows of the result.
            let cols: Vec<Vec<f64>> =
                (0..kw).map(|x| tile.g(&(0..kh).map(|y| k[y * kw + x]).collect::<Vec<_>>())).collect();
            for i in 0..nh {
                for (j, v) in tile.g(&cols.iter().map(|col| col[i]).collect::<Vec<_>>()).iter().enumerate() {
                    u[i * nw + j][oc] = *v as f32;
                }
            }
        }
        Transformed { m, c, tile, u: u.iter().map(|u| Packed::new(u, m, c)).collect() }
    }
}

/// Whether this convolution can take `tile`'s route: the tile's kernel at stride 1.
pub fn fits(job: &Conv, tile: Tile) -> bool {
    (job.kh, job.kw) == tile.kernel() && job.sh == 1 && job.sw == 1 && job.oh > 0 && job.ow > 0 && job.c > 0
}

thread_local! {
    /// The padded phase planes of the input (kept between calls, as `igemm`'s padded input).
    static PLANES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// A task's transformed input tiles and their products.
    static TILES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    static PRODUCTS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Where the tiles are: `th x tw` tiles of `ry x r` outputs, the padded planes (`r` column
/// phases of `hp` rows `wq` wide per channel).
#[derive(Clone, Copy)]
struct Tiling {
    r: usize,
    ry: usize,
    tw: usize,
    hp: usize,
    wq: usize,
}

impl Tiling {
    fn plane(&self) -> usize {
        self.r * self.hp * self.wq
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
/// `igemm::conv` computes it, for `u`'s kernel at stride 1 (see [`fits`]), as `[m, oh, ow]`.
pub fn conv(u: &Transformed, bias: Option<&[f32]>, act: Activation, job: &Conv) -> Vec<f32> {
    conv_in_runs(u, bias, act, job, None)
}

/// [`conv`], with the run length (a multiple of `isa.nr()` tiles) given, for the tests.
fn conv_in_runs(u: &Transformed, bias: Option<&[f32]>, act: Activation, job: &Conv, run: Option<usize>) -> Vec<f32> {
    let isa = igemm::isa_here();
    assert!(fits(job, u.tile), "winograd: not a {:?} convolution at stride 1", u.tile.kernel());
    assert_eq!(u.c, job.c, "winograd: weights for another input");
    assert_eq!(job.x.len(), job.c * job.h * job.w, "winograd: input of another size");
    let (c, m, xi) = (u.c, u.m, u.tile.xi());
    let ((ry, r), (kh, _), (_, nw)) = (u.tile.rows_cols(), u.tile.kernel(), u.tile.block());
    let (th, tw) = (job.oh.div_ceil(ry), job.ow.div_ceil(r));
    // Reads reach kh - 1 rows past a tile's last output row, and (nw - 1) / r columns of a
    // phase plane past its tile's.
    let tiling = Tiling { r, ry, tw, hp: ry * th + kh - 1, wq: tw + (nw - 1) / r };
    let tiles = th * tw;
    let bias = bias.map_or_else(|| vec![0.0f32; m], |b| b[..m].to_vec());
    let zero = vec![0.0f32; m.div_ceil(MR) * MR];
    // Runs of whole micro-tiles (`isa.nr()` tiles: 48 on AVX-512, 16 on AVX2), a run's V and M
    // within the core's L2 cache, and at least four runs a thread where the layer has that
    // many tiles. The budget: about 768 KB on AVX-512 (Intel's server cores, 1-2 MB of L2);
    // 256 KB on AVX2 (Zen 3 has 512 KB, and the weights' transforms share it): there runs of
    // 16-32 tiles took 0.72-0.9 of the time runs of 48-96 did on the layers with many channels
    // or few tiles, and as long on the rest (`cargo test --release --lib run_speed -- --ignored
    // --nocapture`, interleaved in one process).
    let nr = isa.nr();
    let budget = match isa {
        igemm::Isa::Avx512 => 768 * 1024,
        igemm::Isa::Avx2 => 256 * 1024,
    };
    let cached = (budget / (xi * 4 * (c + m))).max(nr);
    let even = tiles.div_ceil(rayon::current_num_threads() * 4);
    let run = run.unwrap_or(cached.min(even).div_ceil(nr).max(1) * nr);
    assert!(run > 0 && run.is_multiple_of(isa.nr()), "winograd: runs of whole micro-tiles");
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
            // The same for all `xi` products: tap `c` reads transformed channel `c`.
            let offsets: Vec<usize> = (0..c).map(|ch| ch * n).collect();
            super::conv::with_buffer(&TILES, xi * vs, |v| {
                super::conv::with_buffer(&PRODUCTS, xi * ps, |p| {
                    // SAFETY: `isa` runs on this CPU (`isa_here`); the transforms read and write
                    // inside the slices they are given (asserted there), and the output
                    // transform writes only the output pixels of this run's tiles.
                    unsafe {
                        transform_in(isa, u.tile, planes, c, &tiling, t0, &chunks, n, vs, v);
                        for x in 0..xi {
                            let (vx, px) = (&v[x * vs..][..c * n], &mut p[x * ps..][..m * n]);
                            products(&u.u[x], vx, n, px, &offsets, &zero, isa);
                        }
                        transform_out(isa, u.tile, p, m, n, ps, t0, &chunks, &tiling, job, &bias, act, out);
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

/// The 1-D steps of the transforms over vectors of either width, written once for the AVX-512
/// and AVX2 versions (so both do the same operations in the same order, and give the same
/// bits): `$ops` names the width's `[set1, add, sub, mul, fmadd, fnmadd]` intrinsics. Macros,
/// not generic functions: the intrinsics must expand inside the caller's `target_feature`
/// code (through a function of its own, without FMA, each lane became a library `fmaf` call).
///
/// `bt4!`: `Bt d` for F(4x4, 3x3) and F(2x2, 5x5) along six values: Bt = [[4, 0, -5, 0, 1, 0],
/// [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0,
/// 4, 0, -5, 0, 1]].
macro_rules! bt4 {
    ($d:expr, [$set1:path, $add:path, $sub:path, $mul:path, $fmadd:path, $fnmadd:path]) => {{
        let c = $set1;
        let [d0, d1, d2, d3, d4, d5] = $d;
        let (a, b) = ($sub(d4, d2), $sub(d3, d1));
        [
            $fmadd(c(4.0), d0, $fnmadd(c(5.0), d2, d4)),
            $fnmadd(c(4.0), $add(d1, d2), $add(d3, d4)),
            $fmadd(c(4.0), $sub(d1, d2), $sub(d4, d3)),
            $fmadd(c(2.0), b, a),
            $fnmadd(c(2.0), b, a),
            $fmadd(c(4.0), d1, $fnmadd(c(5.0), d3, d5)),
        ]
    }};
}

/// `At m` for F(4x4, 3x3) along six values (see [`bt4!`]): At = [[1, 1, 1, 1, 1, 0], [0, 1,
/// -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]].
macro_rules! at4 {
    ($m:expr, [$set1:path, $add:path, $sub:path, $mul:path, $fmadd:path, $fnmadd:path]) => {{
        let c = $set1;
        let [m0, m1, m2, m3, m4, m5] = $m;
        let (s12, d12, s34, d34) = ($add(m1, m2), $sub(m1, m2), $add(m3, m4), $sub(m3, m4));
        [
            $add($add(m0, s12), s34),
            $fmadd(c(2.0), d34, d12),
            $fmadd(c(4.0), s34, s12),
            $add($fmadd(c(8.0), d34, d12), m5),
        ]
    }};
}

/// `At m` for F(2x2, 5x5) along six values (see [`bt4!`]): At = [[1, 1, 1, 1, 1, 0], [0, 1,
/// -1, 2, -2, 1]].
macro_rules! at26 {
    ($m:expr, [$set1:path, $add:path, $sub:path, $mul:path, $fmadd:path, $fnmadd:path]) => {{
        let c = $set1;
        let [m0, m1, m2, m3, m4, m5] = $m;
        [$add($add(m0, $add(m1, m2)), $add(m3, m4)), $add($fmadd(c(2.0), $sub(m3, m4), $sub(m1, m2)), m5)]
    }};
}

/// `Bt d` for F(2, 7) along eight values (see [`bt4!`]; points 0, 1, -1, 2, -2, 1/2, -1/2 and
/// infinity): Bt = [[-1, 0, 21/4, 0, -21/4, 0, 1, 0], [0, 1, 1, -17/4, -17/4, 1, 1, 0], [0,
/// -1, 1, 17/4, -17/4, -1, 1, 0], [0, 1/2, 1/4, -5/2, -5/4, 2, 1, 0], [0, -1/2, 1/4, 5/2,
/// -5/4, -2, 1, 0], [0, 2, 4, -5/2, -5, 1/2, 1, 0], [0, -2, 4, 5/2, -5, -1/2, 1, 0], [0, -1, 0,
/// 21/4, 0, -21/4, 0, 1]].
macro_rules! bt8 {
    ($d:expr, [$set1:path, $add:path, $sub:path, $mul:path, $fmadd:path, $fnmadd:path]) => {{
        let c = $set1;
        let [d0, d1, d2, d3, d4, d5, d6, d7] = $d;
        // Even and odd halves of rows 1-2, 3-4 and 5-6.
        let e1 = $fnmadd(c(4.25), d4, $add(d2, d6));
        let o1 = $fnmadd(c(4.25), d3, $add(d1, d5));
        let e3 = $fmadd(c(0.25), d2, $fnmadd(c(1.25), d4, d6));
        let o3 = $fmadd(c(0.5), d1, $fmadd(c(2.0), d5, $mul(c(-2.5), d3)));
        let e5 = $fmadd(c(4.0), d2, $fnmadd(c(5.0), d4, d6));
        let o5 = $fmadd(c(2.0), d1, $fmadd(c(0.5), d5, $mul(c(-2.5), d3)));
        [
            $fmadd(c(5.25), $sub(d2, d4), $sub(d6, d0)),
            $add(e1, o1),
            $sub(e1, o1),
            $add(e3, o3),
            $sub(e3, o3),
            $add(e5, o5),
            $sub(e5, o5),
            $fmadd(c(5.25), $sub(d3, d5), $sub(d7, d1)),
        ]
    }};
}

/// `At m` for F(2, 7) along eight values (see [`bt4!`]): At = [[1, 1, 1, 1, 1, 1, 1, 0], [0, 1,
/// -1, 2, -2, 1/2, -1/2, 1]].
macro_rules! at8 {
    ($m:expr, [$set1:path, $add:path, $sub:path, $mul:path, $fmadd:path, $fnmadd:path]) => {{
        let c = $set1;
        let [m0, m1, m2, m3, m4, m5, m6, m7] = $m;
        let y0 = $add($add($add(m0, $add(m1, m2)), $add(m3, m4)), $add(m5, m6));
        let y1 = $fmadd(c(0.5), $sub(m5, m6), $fmadd(c(2.0), $sub(m3, m4), $add($sub(m1, m2), m7)));
        [y0, y1]
    }};
}

/// The AVX-512 intrinsics for the transforms' macros ([`bt4!`]).
macro_rules! w16 {
    ($mac:ident, $x:expr) => {
        $mac!(
            $x,
            [
                std::arch::x86_64::_mm512_set1_ps,
                std::arch::x86_64::_mm512_add_ps,
                std::arch::x86_64::_mm512_sub_ps,
                std::arch::x86_64::_mm512_mul_ps,
                std::arch::x86_64::_mm512_fmadd_ps,
                std::arch::x86_64::_mm512_fnmadd_ps
            ]
        )
    };
}

/// The AVX2 intrinsics for the transforms' macros ([`bt4!`]).
macro_rules! w8 {
    ($mac:ident, $x:expr) => {
        $mac!(
            $x,
            [
                std::arch::x86_64::_mm256_set1_ps,
                std::arch::x86_64::_mm256_add_ps,
                std::arch::x86_64::_mm256_sub_ps,
                std::arch::x86_64::_mm256_mul_ps,
                std::arch::x86_64::_mm256_fmadd_ps,
                std::arch::x86_64::_mm256_fnmadd_ps
            ]
        )
    };
}

/// `tile`'s input transform on `isa`'s version of it (see the functions it calls).
///
/// # Safety
/// The CPU runs `isa`; the rest is asserted by the transforms.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn transform_in(
    isa: igemm::Isa,
    tile: Tile,
    planes: &[f32],
    c: usize,
    t: &Tiling,
    t0: usize,
    chunks: &[(usize, usize, usize)],
    n: usize,
    vs: usize,
    v: &mut [f32],
) {
    // SAFETY: the caller's.
    unsafe {
        match (isa, tile) {
            (igemm::Isa::Avx512, Tile::F2) => input_transform(planes, c, t, t0, chunks, n, vs, v),
            (igemm::Isa::Avx512, Tile::F4 | Tile::F2k5) => input_transform6(planes, c, t, t0, chunks, n, vs, v),
            (igemm::Isa::Avx512, Tile::F2k7Row | Tile::F2k7Col) => input_transform8(planes, c, t, t0, chunks, n, vs, v),
            (igemm::Isa::Avx2, Tile::F2) => input_transform_avx2(planes, c, t, t0, chunks, n, vs, v),
            (igemm::Isa::Avx2, Tile::F4 | Tile::F2k5) => input_transform6_avx2(planes, c, t, t0, chunks, n, vs, v),
            (igemm::Isa::Avx2, Tile::F2k7Row | Tile::F2k7Col) => {
                input_transform8_avx2(planes, c, t, t0, chunks, n, vs, v)
            }
        }
    }
}

/// `tile`'s output transform on `isa`'s version of it (see the functions it calls).
///
/// # Safety
/// The CPU runs `isa`; the run's tiles' output pixels are the caller's to write; the rest is
/// asserted by the transforms.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn transform_out(
    isa: igemm::Isa,
    tile: Tile,
    p: &[f32],
    m: usize,
    n: usize,
    ps: usize,
    t0: usize,
    chunks: &[(usize, usize, usize)],
    t: &Tiling,
    job: &Conv,
    bias: &[f32],
    act: Activation,
    out: Out,
) {
    // SAFETY: the caller's.
    unsafe {
        match (isa, tile) {
            (igemm::Isa::Avx512, Tile::F2) => output_transform(p, m, n, ps, t0, chunks, job, bias, act, out),
            (igemm::Isa::Avx512, Tile::F4) => output_transform4(p, m, n, ps, t0, chunks, job, bias, act, out),
            (igemm::Isa::Avx512, Tile::F2k5) => output_transform26(p, m, n, ps, t0, chunks, job, bias, act, out),
            (igemm::Isa::Avx512, Tile::F2k7Row | Tile::F2k7Col) => {
                output_transform8(p, m, n, ps, t0, chunks, t, job, bias, act, out)
            }
            (igemm::Isa::Avx2, Tile::F2) => output_transform_avx2(p, m, n, ps, t0, chunks, job, bias, act, out),
            (igemm::Isa::Avx2, Tile::F4) => output_transform6_avx2::<4>(p, m, n, ps, t0, chunks, job, bias, act, out),
            (igemm::Isa::Avx2, Tile::F2k5) => output_transform6_avx2::<2>(p, m, n, ps, t0, chunks, job, bias, act, out),
            (igemm::Isa::Avx2, Tile::F2k7Row | Tile::F2k7Col) => {
                output_transform8_avx2(p, m, n, ps, t0, chunks, t, job, bias, act, out)
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn transform_in(
    _: igemm::Isa,
    _: Tile,
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
unsafe fn transform_out(
    _: igemm::Isa,
    _: Tile,
    _: &[f32],
    _: usize,
    _: usize,
    _: usize,
    _: usize,
    _: &[(usize, usize, usize)],
    _: &Tiling,
    _: &Conv,
    _: &[f32],
    _: Activation,
    _: Out,
) {
    unreachable!("igemm::available is false off x86_64")
}

/// The input (masked) into the phase planes: plane `(c, p)` row `i` column `j` holds input
/// pixel `(i - pt, r j + p - pl)`, zero outside the input.
fn pad(job: &Conv, t: &Tiling, planes: &mut [f32]) {
    let (h, w) = (job.h, job.w);
    // Entry `j` of phase `p`'s row is padded column `r j + p` (input column `r j + p - pl`):
    // the padded row, `r wq` long, split by column remainder. The row is built once (zero margins,
    // the input row masked into its middle) and split into its `r` phases in one pass; phase by
    // phase (each reading the whole row again, at stride 4 for F(4x4)) took 5-10% of a 3x3
    // layer's time on AVX2.
    let len = t.r * t.wq;
    let (pl, n) = (job.pl.min(len), w.min(len.saturating_sub(job.pl)));
    planes.par_chunks_mut(t.plane()).enumerate().for_each(|(c, out)| {
        let src = &job.x[c * h * w..][..h * w];
        let mask = job.mask.map(|(y, act)| (&y[c * h * w..][..h * w], act));
        let mut row = vec![0.0f32; len];
        for i in 0..t.hp {
            let iy = i as isize - job.pt as isize;
            let mut rows: [&mut [f32]; 4] = Default::default();
            for (k, p) in out.chunks_exact_mut(t.hp * t.wq).enumerate() {
                rows[k] = &mut p[i * t.wq..][..t.wq];
            }
            let rows = &mut rows[..t.r];
            if iy < 0 || iy >= h as isize {
                rows.iter_mut().for_each(|row| row.fill(0.0));
                continue;
            }
            let line = &src[iy as usize * w..][..n];
            match mask {
                Some((y, act)) => {
                    super::wide(|| super::conv::mask_into(&mut row[pl..pl + n], line, &y[iy as usize * w..][..n], act))
                }
                None => row[pl..pl + n].copy_from_slice(line),
            }
            split_phases(&row, rows);
        }
    });
}

/// `dst[p][j] = src[r j + p]` for the `r = dst.len()` phases (1, 2 or 4), rows of equal
/// length `n` (`r n` at most `src`'s).
fn split_phases(src: &[f32], dst: &mut [&mut [f32]]) {
    let r = dst.len();
    let n = dst.first().map_or(0, |d| d.len());
    assert!(dst.iter().all(|d| d.len() == n), "winograd: phase rows of different lengths");
    assert!(r * n <= src.len(), "winograd: phase rows past the padded row");
    let mut j = 0;
    #[cfg(target_arch = "x86_64")]
    if matches!(r, 2 | 4) && igemm::available() {
        // SAFETY: the CPU has AVX2 (AVX-512F or AVX2 with FMA, `available`).
        j = unsafe { split_phases_avx2(src, dst, n) };
    }
    if r == 1 {
        dst[0][..n].copy_from_slice(&src[..n]);
        j = n;
    }
    for j in j..n {
        for (p, d) in dst.iter_mut().enumerate() {
            d[j] = src[r * j + p];
        }
    }
}

/// [`split_phases`] for 2 or 4 phases, 8 entries of each at a time, while whole; returns how
/// many entries it did. Four phases: the 32 values as eight groups of four (two to a load), a
/// 4x4 transpose within each 128-bit half, then the halves' entries in order.
///
/// # Safety
/// The CPU has AVX2; `dst.len()` is 2 or 4 and `r n <= src.len()`, each `dst[p]` at least `n`
/// long.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn split_phases_avx2(src: &[f32], dst: &mut [&mut [f32]], n: usize) -> usize {
    use std::arch::x86_64::*;
    let r = dst.len();
    let sp = src.as_ptr();
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let mut j = 0;
    while j + 8 <= n {
        // SAFETY: src[r j..r j + 8 r] is inside `src` (r n <= src.len()), dst[p][j..j + 8] inside
        // each phase row.
        unsafe {
            let at = |k: usize| _mm256_loadu_ps(sp.add(r * j + 8 * k));
            if r == 2 {
                let (a, b) = (at(0), at(1));
                // a0 a2 b0 b2 | a4 a6 b4 b6 and the odd ones, then the 64-bit pairs in order.
                let fix = |v: __m256| _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(v)));
                _mm256_storeu_ps(dst[0].as_mut_ptr().add(j), fix(_mm256_shuffle_ps::<0x88>(a, b)));
                _mm256_storeu_ps(dst[1].as_mut_ptr().add(j), fix(_mm256_shuffle_ps::<0xDD>(a, b)));
            } else {
                let (a, b, c, d) = (at(0), at(1), at(2), at(3));
                // Per 128-bit half: rows g0 g2 g4 g6 (low) and g1 g3 g5 g7 (high) of four.
                let (t0, t1) = (_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
                let (t2, t3) = (_mm256_unpacklo_ps(c, d), _mm256_unpackhi_ps(c, d));
                let p0 = _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(t0), _mm256_castps_pd(t2)));
                let p1 = _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(t0), _mm256_castps_pd(t2)));
                let p2 = _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(t1), _mm256_castps_pd(t3)));
                let p3 = _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(t1), _mm256_castps_pd(t3)));
                for (p, v) in [p0, p1, p2, p3].into_iter().enumerate() {
                    _mm256_storeu_ps(dst[p].as_mut_ptr().add(j), _mm256_permutevar8x32_ps(v, order));
                }
            }
        }
        j += 8;
    }
    j
}

/// The distance between the planes (8, 16 or 36) of a run's transformed tiles (or products) of
/// `len` floats each: an odd number of 64-byte lines, so that the planes' stores of one channel
/// fall in different sets of the L1 cache. At `len` a multiple of 1024 floats (96 channels x 96
/// tiles: 36 KB) all 16 of F(2x2, 3x3) landed in one set of 12 ways, and the transforms waited
/// on L2.
fn spread(len: usize) -> usize {
    let s = len.div_ceil(16) * 16;
    if (s / 16).is_multiple_of(2) { s + 16 } else { s }
}

/// How many channels ahead the AVX2 transforms fetch the rows they will read or write.
const AHEAD: usize = 2;

/// Fetches into the L1 cache the cache lines of `rows` rows of `len` floats from `p`, `stride`
/// floats apart: the rows a transform will read, or the output rows it will write. Read
/// prefetches (`prefetcht0`) both: `prefetchw` needs the `prfchw` target feature, which the
/// build does not enable (LLVM turned `_MM_HINT_ET0` into `prefetcht0` anyway), and the
/// measured gains are with these. A prefetch never faults, wherever it points.
#[cfg(target_arch = "x86_64")]
#[inline]
fn prefetch_rows(p: *const f32, rows: usize, stride: usize, len: usize) {
    use std::arch::x86_64::*;
    if len == 0 {
        return;
    }
    for row in 0..rows {
        let start = p.wrapping_add(row * stride) as usize;
        let (first, last) = (start & !63, (start + 4 * len - 1) & !63);
        for line in (first..=last).step_by(64) {
            // SAFETY: prefetches have no architectural effect and never fault.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(line as *const i8) }
        }
    }
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
    assert!(t.r == 2 && t.ry == 2 && planes.len() >= c * t.plane() && vs >= c * n && v.len() >= 16 * vs);
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

/// `p[o][tile] = sum_c u[o][c] v[c][tile]` for one of the `xi` taps, on the product kernel
/// (`offsets[c] = c * n`; `zero`, a zero bias for every block of `u`).
///
/// # Safety
/// The CPU runs `isa`.
unsafe fn products(u: &Packed, v: &[f32], n: usize, p: &mut [f32], offsets: &[usize], zero: &[f32], isa: igemm::Isa) {
    assert!(v.len() >= u.k * n && p.len() >= u.m * n && offsets.last().is_some_and(|o| o + n <= v.len()));
    let g = Grid { src: v.as_ptr(), wp: n, grid: n, oh: 1, ow: n };
    // SAFETY: the caller's; the tiles read `v` at `c * n + lane` for lanes below `n` (asserted
    // inside `v`), and write `p`'s `m` channels of `n` tiles.
    unsafe {
        igemm::product(
            u,
            offsets,
            &g,
            0..n.div_ceil(isa.nr()),
            0..u.m.div_ceil(MR),
            Out(p.as_mut_ptr()),
            zero,
            Activation::Identity,
            isa,
        )
    };
}

/// 16 lanes, for F(2x2, 3x3)'s AVX2 transforms (only with `DEEPDREAM_WINOGRAD=2` there): plain
/// arrays the compiler makes 8-lane vector operations (the other tiles' AVX2 transforms are
/// intrinsics: over these arrays the compiler spilled the 6x6 ones in 4-lane pieces).
#[cfg(target_arch = "x86_64")]
type Lanes = [f32; 16];

/// The first `len` (at most 16) values of `src`, the rest zero: two halves of [`load8`] (a
/// copy of a run-time length was a library `memcpy` call, and every chunk of a layer 30 pixels
/// wide is 15 tiles).
#[inline]
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn load_lanes(src: &[f32], len: usize) -> Lanes {
    let p = src[..len].as_ptr();
    // SAFETY: each half reads its lanes below `len` only, inside `src`; a masked lane is not read.
    unsafe {
        std::mem::transmute::<[std::arch::x86_64::__m256; 2], Lanes>([
            load8(p, len.min(8)),
            load8(p.wrapping_add(8), len.saturating_sub(8)),
        ])
    }
}

/// Stores the first `len` (at most 16) lanes of `v` at the start of `dst`: two halves of
/// [`store8`].
#[inline]
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn store_lanes(dst: &mut [f32], v: &Lanes, len: usize) {
    use std::arch::x86_64::*;
    let (p, v) = (dst[..len].as_mut_ptr(), v.as_ptr());
    // SAFETY: each half writes its lanes below `len` only, inside `dst`.
    unsafe {
        store8(p, _mm256_loadu_ps(v), len.min(8));
        if len > 8 {
            store8(p.add(8), _mm256_loadu_ps(v.add(8)), len - 8);
        }
    }
}

/// Stores lanes `0..k` (`k` below 8) of `x` at `p`: 4, 2 and 1 at a time. Not a masked store:
/// `vmaskmovps` to memory is microcoded on AMD's Zen 3 (a sixth of an InceptionV3 step went
/// to the transforms' masked stores there), and a copy of a run-time length is a library call.
///
/// # Safety
/// The CPU has AVX; `p[..k]` is the caller's to write.
#[inline]
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn store_part(p: *mut f32, x: std::arch::x86_64::__m256, k: usize) {
    use std::arch::x86_64::*;
    debug_assert!(k < 8);
    let (mut p, mut k, mut rest) = (p, k, _mm256_castps256_ps128(x));
    // SAFETY: each store writes below `p + k` (the caller's).
    unsafe {
        if k >= 4 {
            _mm_storeu_ps(p, rest);
            (p, k, rest) = (p.add(4), k - 4, _mm256_extractf128_ps::<1>(x));
        }
        if k >= 2 {
            _mm_storel_epi64(p.cast(), _mm_castps_si128(rest));
            (p, k, rest) = (p.add(2), k - 2, _mm_movehl_ps(rest, rest));
        }
        if k == 1 {
            _mm_store_ss(p, rest);
        }
    }
}

#[inline(always)]
#[cfg(target_arch = "x86_64")]
fn add(a: Lanes, b: Lanes) -> Lanes {
    std::array::from_fn(|l| a[l] + b[l])
}

#[inline(always)]
#[cfg(target_arch = "x86_64")]
fn sub(a: Lanes, b: Lanes) -> Lanes {
    std::array::from_fn(|l| a[l] - b[l])
}

/// Bt = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]] applied to 4 rows (columns).
#[inline(always)]
#[cfg(target_arch = "x86_64")]
fn bt2(a: [Lanes; 4]) -> [Lanes; 4] {
    [sub(a[0], a[2]), add(a[1], a[2]), sub(a[2], a[1]), sub(a[1], a[3])]
}

/// At = [[1, 1, 1, 0], [0, 1, -1, -1]] applied to 4 rows (columns).
#[inline(always)]
#[cfg(target_arch = "x86_64")]
fn at2(a: [Lanes; 4]) -> [Lanes; 2] {
    [add(add(a[0], a[1]), a[2]), sub(sub(a[1], a[2]), a[3])]
}

/// [`bt4!`] on 8 lanes.
#[inline]
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn bt4y(d: [std::arch::x86_64::__m256; 6]) -> [std::arch::x86_64::__m256; 6] {
    w8!(bt4, d)
}

/// [`at4!`] (`R` = 4) or [`at26!`] (`R` = 2) on 8 lanes.
#[inline]
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn at6y<const R: usize>(m: [std::arch::x86_64::__m256; 6]) -> [std::arch::x86_64::__m256; R] {
    let mut y = [std::arch::x86_64::_mm256_setzero_ps(); R];
    if R == 4 {
        y.copy_from_slice(&w8!(at4, m));
    } else {
        y.copy_from_slice(&w8!(at26, m));
    }
    y
}

/// Lanes `0..k` (at most 8) of `p`, the rest zero: a plain load for 8, a masked one for fewer
/// (masked loads are cheap; masked stores are not, see [`store_part`]).
///
/// # Safety
/// The CPU has AVX2; `p[..k]` is readable.
#[inline]
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn load8(p: *const f32, k: usize) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    // SAFETY: the caller's; a masked lane is not read.
    unsafe {
        if k >= 8 {
            _mm256_loadu_ps(p)
        } else {
            _mm256_maskload_ps(
                p,
                _mm256_cmpgt_epi32(_mm256_set1_epi32(k as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)),
            )
        }
    }
}

/// Stores lanes `0..k` (at most 8) of `x` at `p` (see [`store_part`]).
///
/// # Safety
/// The CPU has AVX2; `p[..k]` is the caller's to write.
#[inline]
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn store8(p: *mut f32, x: std::arch::x86_64::__m256, k: usize) {
    // SAFETY: the caller's.
    unsafe {
        if k >= 8 {
            std::arch::x86_64::_mm256_storeu_ps(p, x);
        } else {
            store_part(p, x, k);
        }
    }
}

/// [`input_transform6`] (F(4x4, 3x3) and F(2x2, 5x5)) on a CPU with AVX2 and no AVX-512: the
/// same sums in the same order (so the same bits), 8 tiles at a time. Bt along each row of the
/// 6x6 blocks into a stack array (a 6x6 block of vectors does not fit the 16 registers), then
/// along its columns.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn input_transform6_avx2(
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
    let r = t.r;
    assert!(matches!(r, 2 | 4) && t.ry == r && t.wq >= t.tw + 5 / r, "winograd: a tiling of other blocks");
    assert!(planes.len() >= c * t.plane() && vs >= c * n && v.len() >= 36 * vs);
    // Block column `col` of a tile: parity plane `col % r`, `col / r` columns on.
    let coff: [usize; 6] = std::array::from_fn(|col| (col % r) * t.hp * t.wq + col / r);
    let reach = coff.iter().max().unwrap() + 5 * t.wq;
    let (pp, vp) = (planes.as_ptr(), v.as_mut_ptr());
    let mut db = [[_mm256_setzero_ps(); 6]; 6];
    for ch in 0..c {
        for &(ty, tx, len) in chunks {
            let base = ch * t.plane() + r * ty * t.wq + tx;
            let at = (ty * t.tw + tx) - t0;
            assert!(base + reach + len <= planes.len() && at + len <= n, "winograd: a chunk outside its planes");
            if ch + AHEAD < c {
                // The rows this chunk reads, AHEAD channels on.
                for ph in 0..r {
                    prefetch_rows(pp.wrapping_add(base + AHEAD * t.plane() + ph * t.hp * t.wq), 6, t.wq, len + 5 / r);
                }
            }
            for h in 0..len.div_ceil(8) {
                let k = (len - 8 * h).min(8);
                for (row, dr) in db.iter_mut().enumerate() {
                    // SAFETY: `base + reach + len` is inside `planes` (asserted).
                    *dr = bt4y(coff.map(|o| unsafe { load8(pp.add(base + o + row * t.wq + 8 * h), k) }));
                }
                // Column `j` read out of `db` by index: `db.map(|row| row[j])` copied all 36
                // vectors of `db` on the stack for each column.
                #[allow(clippy::needless_range_loop)]
                for j in 0..6 {
                    let col = bt4y(std::array::from_fn(|i| db[i][j]));
                    for (i, val) in col.into_iter().enumerate() {
                        // SAFETY: plane `i * 6 + j` holds `c n` floats from `(i * 6 + j) vs`,
                        // inside `v` (asserted), and `ch n + at + len <= c n`.
                        unsafe { store8(vp.add((i * 6 + j) * vs + ch * n + at + 8 * h), val, k) };
                    }
                }
            }
        }
    }
}

/// [`output_transform4`] (`R` = 4) and [`output_transform26`] (`R` = 2) on a CPU with AVX2
/// and no AVX-512: `Y = At M A` of the 36 product planes, R x R outputs a tile, 8 tiles at a
/// time, the same sums in the same order.
///
/// # Safety
/// The CPU has AVX2 and FMA; the run's tiles' output pixels are the caller's to write.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn output_transform6_avx2<const R: usize>(
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
    assert!(ps >= m * n && p.len() >= 36 * ps && bias.len() >= m);
    let (oh, ow) = (job.oh, job.ow);
    let tw = ow.div_ceil(R);
    let pp = p.as_ptr();
    let mut ma = [[_mm256_setzero_ps(); R]; 6];
    for (o, &bo) in bias[..m].iter().enumerate() {
        for &(ty, tx, len) in chunks {
            let t = (ty * tw + tx) - t0;
            assert!(t + len <= n, "winograd: a chunk outside its run");
            // Output columns R tx .. R (tx + len), those inside the row: tile l's column c is
            // R l + c.
            let cols = (R * len).min(ow - R * tx);
            if o + AHEAD < m && R * ty < oh {
                // The output rows this chunk writes, AHEAD channels on.
                let rows = R.min(oh - R * ty);
                prefetch_rows(out.at(((o + AHEAD) * oh + R * ty) * ow + R * tx), rows, ow, cols);
            }
            for h in 0..len.div_ceil(8) {
                let k = (len - 8 * h).min(8);
                // At along each row of M first, then along the columns: y[c][a] is output row
                // a, column c of the 8 tiles.
                for (i, row) in ma.iter_mut().enumerate() {
                    // SAFETY: plane `i * 6 + j` holds `m n` floats from `(i * 6 + j) ps`, inside
                    // `p` (asserted), and `o n + t + len <= m n`.
                    *row = at6y::<R>(std::array::from_fn(|j| unsafe {
                        load8(pp.add((i * 6 + j) * ps + o * n + t + 8 * h), k)
                    }));
                }
                let y: [[__m256; R]; R] =
                    std::array::from_fn(|c| at6y::<R>([ma[0][c], ma[1][c], ma[2][c], ma[3][c], ma[4][c], ma[5][c]]));
                let part = cols.saturating_sub(8 * R * h).min(8 * R);
                for (a, oy) in (R * ty..(R * ty + R).min(oh)).enumerate() {
                    // SAFETY: columns R tx + 8 R h + 0..part of row oy of channel o are this
                    // run's pixels (the caller's).
                    unsafe {
                        let row = out.at((o * oh + oy) * ow + R * tx + 8 * R * h);
                        store_row_avx2::<R>(row, part, std::array::from_fn(|c| y[c][a]), bo, act);
                    }
                }
            }
        }
    }
}

/// Writes `act(y[c][l] + bias)` to `row[R l + c]` for the first `cols` of those columns: the R
/// columns of 8 tiles' output row interleaved in registers (R = 2 or 4).
///
/// # Safety
/// The CPU has AVX2 and FMA; `row[..cols]` is the caller's to write, `cols <= 8 R`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn store_row_avx2<const R: usize>(
    row: *mut f32,
    cols: usize,
    y: [std::arch::x86_64::__m256; R],
    bias: f32,
    act: Activation,
) {
    use std::arch::x86_64::*;
    debug_assert!(matches!(R, 2 | 4) && cols <= 8 * R);
    let b = _mm256_set1_ps(bias);
    let v = y.map(|x| igemm::activate_avx2(_mm256_add_ps(x, b), act));
    let mut parts = [_mm256_setzero_ps(); 4];
    if R == 2 {
        // a0 b0 a1 b1 | a4 b4 a5 b5 and a2 b2 a3 b3 | a6 b6 a7 b7, then their halves.
        let (lo, hi) = (_mm256_unpacklo_ps(v[0], v[1]), _mm256_unpackhi_ps(v[0], v[1]));
        parts[0] = _mm256_permute2f128_ps(lo, hi, 0x20);
        parts[1] = _mm256_permute2f128_ps(lo, hi, 0x31);
    } else {
        // A 4x4 transpose of each 128-bit half, then the halves in order.
        let (t0, t1) = (_mm256_unpacklo_ps(v[0], v[1]), _mm256_unpackhi_ps(v[0], v[1]));
        let (t2, t3) = (_mm256_unpacklo_ps(v[2], v[3]), _mm256_unpackhi_ps(v[2], v[3]));
        let (u0, u1) = (_mm256_shuffle_ps::<0x44>(t0, t2), _mm256_shuffle_ps::<0xEE>(t0, t2));
        let (u2, u3) = (_mm256_shuffle_ps::<0x44>(t1, t3), _mm256_shuffle_ps::<0xEE>(t1, t3));
        parts[0] = _mm256_permute2f128_ps(u0, u1, 0x20);
        parts[1] = _mm256_permute2f128_ps(u2, u3, 0x20);
        parts[2] = _mm256_permute2f128_ps(u0, u1, 0x31);
        parts[3] = _mm256_permute2f128_ps(u2, u3, 0x31);
    }
    for (i, part) in parts[..R].iter().enumerate().take(cols.div_ceil(8)) {
        // SAFETY: the caller's: columns below `cols` only.
        unsafe { store8(row.add(8 * i), *part, cols - 8 * i) };
    }
}

/// [`bt8!`] on 8 lanes.
#[inline]
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn bt8y(d: [std::arch::x86_64::__m256; 8]) -> [std::arch::x86_64::__m256; 8] {
    w8!(bt8, d)
}

/// [`input_transform8`] (F(2, 7)) on a CPU with AVX2 and no AVX-512, 8 tiles at a time: the
/// same sums in the same order.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn input_transform8_avx2(
    planes: &[f32],
    c: usize,
    t: &Tiling,
    t0: usize,
    chunks: &[(usize, usize, usize)],
    n: usize,
    vs: usize,
    v: &mut [f32],
) {
    let along_row = match (t.ry, t.r) {
        (1, 2) => true,
        (2, 1) => false,
        _ => panic!("winograd: a tiling of other blocks"),
    };
    assert!(if along_row { t.wq >= t.tw + 3 } else { t.wq >= t.tw });
    assert!(planes.len() >= c * t.plane() && vs >= c * n && v.len() >= 8 * vs);
    // Element e of a tile's block, as in `input_transform8`: along a row parity plane e % 2, e / 2
    // columns on; along a column e rows on.
    let eoff: [usize; 8] = std::array::from_fn(|e| if along_row { (e % 2) * t.hp * t.wq + e / 2 } else { e * t.wq });
    let reach = eoff.iter().max().unwrap();
    let (pp, vp) = (planes.as_ptr(), v.as_mut_ptr());
    for ch in 0..c {
        for &(ty, tx, len) in chunks {
            let base = ch * t.plane() + if along_row { ty } else { 2 * ty } * t.wq + tx;
            let at = (ty * t.tw + tx) - t0;
            assert!(base + reach + len <= planes.len() && at + len <= n, "winograd: a chunk outside its planes");
            if ch + AHEAD < c {
                let ahead = pp.wrapping_add(base + AHEAD * t.plane());
                if along_row {
                    prefetch_rows(ahead, 2, t.hp * t.wq, len + 3);
                } else {
                    prefetch_rows(ahead, 8, t.wq, len);
                }
            }
            for h in 0..len.div_ceil(8) {
                let k = (len - 8 * h).min(8);
                // SAFETY: `base + reach + len` is inside `planes` (asserted).
                let d = eoff.map(|o| unsafe { load8(pp.add(base + o + 8 * h), k) });
                for (i, val) in bt8y(d).into_iter().enumerate() {
                    // SAFETY: plane `i` holds `c n` floats from `i vs`, inside `v` (asserted),
                    // and `ch n + at + len <= c n`.
                    unsafe { store8(vp.add(i * vs + ch * n + at + 8 * h), val, k) };
                }
            }
        }
    }
}

/// [`output_transform8`] (F(2, 7)) on a CPU with AVX2 and no AVX-512, 8 tiles at a time: the
/// same sums in the same order.
///
/// # Safety
/// The CPU has AVX2 and FMA; the run's tiles' output pixels are the caller's to write.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn output_transform8_avx2(
    p: &[f32],
    m: usize,
    n: usize,
    ps: usize,
    t0: usize,
    chunks: &[(usize, usize, usize)],
    t: &Tiling,
    job: &Conv,
    bias: &[f32],
    act: Activation,
    out: Out,
) {
    use std::arch::x86_64::*;
    assert!(ps >= m * n && p.len() >= 8 * ps && bias.len() >= m);
    let along_row = (t.ry, t.r) == (1, 2);
    let (oh, ow) = (job.oh, job.ow);
    let pp = p.as_ptr();
    for (o, &bo) in bias[..m].iter().enumerate() {
        let b = _mm256_set1_ps(bo);
        for &(ty, tx, len) in chunks {
            let at = (ty * t.tw + tx) - t0;
            assert!(at + len <= n, "winograd: a chunk outside its run");
            if o + AHEAD < m {
                if along_row {
                    prefetch_rows(out.at(((o + AHEAD) * oh + ty) * ow + 2 * tx), 1, ow, (2 * len).min(ow - 2 * tx));
                } else if 2 * ty < oh {
                    prefetch_rows(out.at(((o + AHEAD) * oh + 2 * ty) * ow + tx), 2.min(oh - 2 * ty), ow, len);
                }
            }
            for h in 0..len.div_ceil(8) {
                let k = (len - 8 * h).min(8);
                // SAFETY: plane `i` holds `m n` floats from `i ps`, inside `p` (asserted), and
                // `o n + at + len <= m n`.
                let [m0, m1, m2, m3, m4, m5, m6, m7]: [__m256; 8] =
                    std::array::from_fn(|i| unsafe { load8(pp.add(i * ps + o * n + at + 8 * h), k) });
                let [y0, y1] = w8!(at8, [m0, m1, m2, m3, m4, m5, m6, m7]);
                if along_row {
                    // Output columns 2 (tx + 8 h) .. of row ty, those inside the row.
                    let part = (2 * len).min(ow - 2 * tx).saturating_sub(16 * h).min(16);
                    // SAFETY: columns 2tx + 16h + 0..part of row ty of channel o are this run's
                    // pixels.
                    unsafe {
                        store_row_avx2::<2>(out.at((o * oh + ty) * ow + 2 * tx + 16 * h), part, [y0, y1], bo, act)
                    };
                } else {
                    // Columns tx + 8h .. of rows 2 ty and 2 ty + 1, those inside the plane.
                    for (oy, y) in (2 * ty..(2 * ty + 2).min(oh)).zip([y0, y1]) {
                        let y = igemm::activate_avx2(_mm256_add_ps(y, b), act);
                        // SAFETY: columns tx + 8h + 0..k of row oy of channel o are this run's
                        // pixels.
                        unsafe { store8(out.at((o * oh + oy) * ow + tx + 8 * h), y, k) };
                    }
                }
            }
        }
    }
}

/// [`input_transform`] on a CPU with AVX2 and no AVX-512: the same sums in the same order (so
/// the same bits), written over [`Lanes`] and compiled for AVX2, where the compiler makes them
/// 8-lane vector operations; partial chunks by masked loads and plain partial stores
/// ([`load_lanes`], [`store_lanes`]).
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn input_transform_avx2(
    planes: &[f32],
    c: usize,
    t: &Tiling,
    t0: usize,
    chunks: &[(usize, usize, usize)],
    n: usize,
    vs: usize,
    v: &mut [f32],
) {
    assert!(t.r == 2 && t.ry == 2 && planes.len() >= c * t.plane() && vs >= c * n && v.len() >= 16 * vs);
    for ch in 0..c {
        for &(ty, tx, len) in chunks {
            // d[row][col] of the 16 tiles, as in `input_transform`.
            let mut d = [[[0.0f32; 16]; 4]; 4];
            for (row, dr) in d.iter_mut().enumerate() {
                for (col, dv) in dr.iter_mut().enumerate() {
                    let at = ch * t.plane() + ((col % 2) * t.hp + 2 * ty + row) * t.wq + tx + col / 2;
                    *dv = load_lanes(&planes[at..], len);
                }
            }
            // Bt along the columns (each column's four rows), then along the rows.
            let mut rows = [[[0.0f32; 16]; 4]; 4];
            for col in 0..4 {
                let v = bt2([d[0][col], d[1][col], d[2][col], d[3][col]]);
                for (row, x) in v.iter().enumerate() {
                    rows[row][col] = *x;
                }
            }
            let at = (ty * t.tw + tx) - t0;
            for (i, r) in rows.iter().enumerate() {
                for (j, val) in bt2(*r).iter().enumerate() {
                    store_lanes(&mut v[(i * 4 + j) * vs + ch * n + at..], val, len);
                }
            }
        }
    }
}

/// [`output_transform`] on a CPU with AVX2 and no AVX-512 (see [`input_transform_avx2`]).
///
/// # Safety
/// The CPU has AVX2 and FMA; the run's tiles' output pixels are the caller's to write.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn output_transform_avx2(
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
    assert!(ps >= m * n && p.len() >= 16 * ps && bias.len() >= m);
    let (oh, ow) = (job.oh, job.ow);
    let tw = ow.div_ceil(2);
    for (o, &bo) in bias[..m].iter().enumerate() {
        for &(ty, tx, len) in chunks {
            let at = (ty * tw + tx) - t0;
            let mut q = [[[0.0f32; 16]; 4]; 4];
            for (i, qr) in q.iter_mut().enumerate() {
                for (j, qv) in qr.iter_mut().enumerate() {
                    *qv = load_lanes(&p[(i * 4 + j) * ps + o * n + at..], len);
                }
            }
            // At along the columns, then along the rows.
            let mut s = [[[0.0f32; 16]; 4]; 2];
            for col in 0..4 {
                let v = at2([q[0][col], q[1][col], q[2][col], q[3][col]]);
                (s[0][col], s[1][col]) = (v[0], v[1]);
            }
            for (i, si) in s.iter().enumerate() {
                let oy = 2 * ty + i;
                if oy >= oh {
                    break;
                }
                let [y0, y1] = at2(*si).map(|y| y.map(|x| act.apply(x + bo)));
                // Output columns 2 tx .. 2 (tx + len), those inside the row: lane l of y0 to
                // column 2l, of y1 to 2l + 1.
                let cols = (2 * len).min(ow - 2 * tx);
                let row = out.at((o * oh + oy) * ow + 2 * tx);
                for (l, pair) in y0.iter().zip(&y1).enumerate().take(cols.div_ceil(2)) {
                    // SAFETY: columns 2tx + 0..cols of row oy of channel o are this run's
                    // pixels (the caller's).
                    unsafe {
                        *row.add(2 * l) = *pair.0;
                        if 2 * l + 1 < cols {
                            *row.add(2 * l + 1) = *pair.1;
                        }
                    }
                }
            }
        }
    }
}

/// The indices for `_mm512_permutex2var_ps` that interleave lanes 0..8 of two vectors (`a0 b0
/// a1 b1 ...`), and lanes 8..16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn interleave() -> (std::arch::x86_64::__m512i, std::arch::x86_64::__m512i) {
    use std::arch::x86_64::*;
    (
        _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23),
        _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31),
    )
}

/// Two outputs a tile along a row: lane `l` of `y0` to column `2l`, of `y1` to `2l + 1`, the
/// first `cols` columns (at most 32) from `row` on.
///
/// # Safety
/// The CPU has AVX-512F, and `row..row + cols` is the caller's to write.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn store_pairs(row: *mut f32, cols: usize, y0: std::arch::x86_64::__m512, y1: std::arch::x86_64::__m512) {
    use std::arch::x86_64::*;
    let (lo, hi) = interleave();
    // SAFETY: the caller's.
    unsafe {
        _mm512_mask_storeu_ps(row, lanes(cols), _mm512_permutex2var_ps(y0, lo, y1));
        if cols > 16 {
            _mm512_mask_storeu_ps(row.add(16), lanes(cols - 16), _mm512_permutex2var_ps(y0, hi, y1));
        }
    }
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
    assert!(ps >= m * n && p.len() >= 16 * ps && bias.len() >= m);
    let (oh, ow) = (job.oh, job.ow);
    let tw = ow.div_ceil(2);
    let pp = p.as_ptr();
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
                unsafe { store_pairs(row, cols, y0, y1) };
            }
        }
    }
}

/// [`bt4!`] on 16 lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn bt4(d: [std::arch::x86_64::__m512; 6]) -> [std::arch::x86_64::__m512; 6] {
    w16!(bt4, d)
}

/// [`at4!`] on 16 lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn at4(m: [std::arch::x86_64::__m512; 6]) -> [std::arch::x86_64::__m512; 4] {
    w16!(at4, m)
}

/// [`input_transform`] for F(4x4, 3x3) and F(2x2, 5x5): `V = Bt d B` of 6x6 input blocks (tiles
/// `r = t.r` apart), into `v[xi][c][n]` for the 36 taps `xi`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn input_transform6(
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
    let r = t.r;
    // A 6x6 block reads 5 / r columns of a phase plane past its tile's.
    assert!(matches!(r, 2 | 4) && t.ry == r && t.wq >= t.tw + 5 / r, "winograd: a tiling of other blocks");
    assert!(planes.len() >= c * t.plane() && vs >= c * n && v.len() >= 36 * vs);
    let (pp, vp) = (planes.as_ptr(), v.as_mut_ptr());
    for ch in 0..c {
        for &(ty, tx, len) in chunks {
            let k = lanes(len);
            // Row `row` of the 16 tiles' blocks: input row r ty + row, column r (tx + lane) +
            // col, in phase plane col % r at column tx + lane + col / r -- for the lanes in use
            // always inside the plane's row (wq = tw + 5 / r columns). Bt along each row first:
            // (d B)[row][j].
            let mut db = [[_mm512_setzero_ps(); 6]; 6];
            for (row, out) in db.iter_mut().enumerate() {
                let mut d = [_mm512_setzero_ps(); 6];
                for (col, dv) in d.iter_mut().enumerate() {
                    let at = ch * t.plane() + ((col % r) * t.hp + r * ty + row) * t.wq + tx + col / r;
                    // SAFETY: `at + len - 1` is inside the plane (see above).
                    *dv = unsafe { _mm512_maskz_loadu_ps(k, pp.add(at)) };
                }
                *out = bt4(d);
            }
            let at = (ty * t.tw + tx) - t0;
            for (j, col) in (0..6).map(|j| bt4(std::array::from_fn(|i| db[i][j]))).enumerate() {
                for (i, val) in col.iter().enumerate() {
                    // SAFETY: tiles `at..at + len` of plane (i * 6 + j, ch) lie inside `v`.
                    unsafe { _mm512_mask_storeu_ps(vp.add((i * 6 + j) * vs + ch * n + at), k, *val) };
                }
            }
        }
    }
}

/// [`output_transform`] for F(4x4, 3x3): `Y = At M A` of the 36 product planes, 4x4 outputs a
/// tile.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn output_transform4(
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
    assert!(ps >= m * n && p.len() >= 36 * ps && bias.len() >= m);
    let (oh, ow) = (job.oh, job.ow);
    let tw = ow.div_ceil(4);
    let pp = p.as_ptr();
    let (lo, hi) = interleave();
    for (o, &bo) in bias[..m].iter().enumerate() {
        let b = _mm512_set1_ps(bo);
        for &(ty, tx, len) in chunks {
            let k = lanes(len);
            let at = (ty * tw + tx) - t0;
            // At along each row of M first: (M A)[i][b].
            let mut ma = [[_mm512_setzero_ps(); 4]; 6];
            for (i, row) in ma.iter_mut().enumerate() {
                let mut q = [_mm512_setzero_ps(); 6];
                for (j, qv) in q.iter_mut().enumerate() {
                    // SAFETY: tiles `at..at + len` of plane (i * 6 + j, o) lie inside `p`.
                    *qv = unsafe { _mm512_maskz_loadu_ps(k, pp.add((i * 6 + j) * ps + o * n + at)) };
                }
                *row = at4(q);
            }
            // Then along the columns: y[b][a] is output row a, column b of the 16 tiles.
            let y: [[__m512; 4]; 4] =
                std::array::from_fn(|c| at4([ma[0][c], ma[1][c], ma[2][c], ma[3][c], ma[4][c], ma[5][c]]));
            // Output columns 4 tx .. 4 (tx + len), those inside the row.
            let cols = (4 * len).min(ow - 4 * tx);
            for (a, oy) in (4 * ty..(4 * ty + 4).min(oh)).enumerate() {
                let [y0, y1, y2, y3] = [0, 1, 2, 3].map(|c| igemm::activate(_mm512_add_ps(y[c][a], b), act));
                // Four columns a tile: tiles 0..4, 4..8, 8..12, 12..16 of the lanes.
                let (e, f) = (_mm512_permutex2var_ps(y0, lo, y2), _mm512_permutex2var_ps(y1, lo, y3));
                let (g, h) = (_mm512_permutex2var_ps(y0, hi, y2), _mm512_permutex2var_ps(y1, hi, y3));
                let parts = [
                    _mm512_permutex2var_ps(e, lo, f),
                    _mm512_permutex2var_ps(e, hi, f),
                    _mm512_permutex2var_ps(g, lo, h),
                    _mm512_permutex2var_ps(g, hi, h),
                ];
                let row = out.at((o * oh + oy) * ow + 4 * tx);
                for (i, part) in parts.iter().enumerate() {
                    if cols <= 16 * i {
                        break;
                    }
                    // SAFETY: columns 4tx + 0..cols of row oy of channel o are this run's pixels.
                    unsafe { _mm512_mask_storeu_ps(row.add(16 * i), lanes(cols - 16 * i), *part) };
                }
            }
        }
    }
}

/// [`output_transform`] for F(2x2, 5x5): `Y = At M A` of the 36 product planes with At = [[1,
/// 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 1]], 2x2 outputs a tile.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn output_transform26(
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
    assert!(ps >= m * n && p.len() >= 36 * ps && bias.len() >= m);
    let (oh, ow) = (job.oh, job.ow);
    let tw = ow.div_ceil(2);
    let pp = p.as_ptr();
    let at = |q: [__m512; 6]| w16!(at26, q);
    for (o, &bo) in bias[..m].iter().enumerate() {
        let b = _mm512_set1_ps(bo);
        for &(ty, tx, len) in chunks {
            let k = lanes(len);
            let t = (ty * tw + tx) - t0;
            // At along each row of M first: (M A)[i][b].
            let mut ma = [[_mm512_setzero_ps(); 2]; 6];
            for (i, row) in ma.iter_mut().enumerate() {
                let mut q = [_mm512_setzero_ps(); 6];
                for (j, qv) in q.iter_mut().enumerate() {
                    // SAFETY: tiles `t..t + len` of plane (i * 6 + j, o) lie inside `p`.
                    *qv = unsafe { _mm512_maskz_loadu_ps(k, pp.add((i * 6 + j) * ps + o * n + t)) };
                }
                *row = at(q);
            }
            // Then along the columns: y[c][a] is output row a, column c of the 16 tiles.
            let y: [[__m512; 2]; 2] =
                std::array::from_fn(|c| at([ma[0][c], ma[1][c], ma[2][c], ma[3][c], ma[4][c], ma[5][c]]));
            // Output columns 2 tx .. 2 (tx + len), those inside the row.
            let cols = (2 * len).min(ow - 2 * tx);
            for (a, oy) in (2 * ty..(2 * ty + 2).min(oh)).enumerate() {
                let [y0, y1] = [0, 1].map(|c| igemm::activate(_mm512_add_ps(y[c][a], b), act));
                let row = out.at((o * oh + oy) * ow + 2 * tx);
                // SAFETY: columns 2tx + 0..cols of row oy of channel o are this run's pixels.
                unsafe { store_pairs(row, cols, y0, y1) };
            }
        }
    }
}

/// [`bt8!`] on 16 lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn bt8(d: [std::arch::x86_64::__m512; 8]) -> [std::arch::x86_64::__m512; 8] {
    w16!(bt8, d)
}

/// [`input_transform`] for F(2, 7): `V = Bt d` of 1x8 blocks along rows (tiles 2 columns
/// apart, the planes split by column parity) or 8x1 blocks along columns (tiles 2 rows apart,
/// one plane), into `v[xi][c][n]` for the 8 taps `xi`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn input_transform8(
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
    let along_row = match (t.ry, t.r) {
        (1, 2) => true,
        (2, 1) => false,
        _ => panic!("winograd: a tiling of other blocks"),
    };
    // Reads reach 7 rows (columns) on, or 3 columns of a parity plane.
    assert!(if along_row { t.wq >= t.tw + 3 } else { t.wq >= t.tw });
    assert!(planes.len() >= c * t.plane() && vs >= c * n && v.len() >= 8 * vs);
    let (pp, vp) = (planes.as_ptr(), v.as_mut_ptr());
    for ch in 0..c {
        for &(ty, tx, len) in chunks {
            let k = lanes(len);
            // Element e of the 16 tiles' blocks: along a row, input row ty, column 2(tx + lane)
            // + e, in parity plane e % 2 at column tx + lane + e / 2; along a column, input row
            // 2 ty + e, column tx + lane.
            let d: [__m512; 8] = std::array::from_fn(|e| {
                let at = if along_row {
                    ch * t.plane() + ((e % 2) * t.hp + ty) * t.wq + tx + e / 2
                } else {
                    ch * t.plane() + (2 * ty + e) * t.wq + tx
                };
                // SAFETY: `at + len - 1` is inside the plane (see above).
                unsafe { _mm512_maskz_loadu_ps(k, pp.add(at)) }
            });
            let at = (ty * t.tw + tx) - t0;
            for (i, val) in bt8(d).iter().enumerate() {
                // SAFETY: tiles `at..at + len` of plane (i, ch) lie inside `v`.
                unsafe { _mm512_mask_storeu_ps(vp.add(i * vs + ch * n + at), k, *val) };
            }
        }
    }
}

/// [`output_transform`] for F(2, 7): `Y = At M` of the 8 product planes with At = [[1, 1, 1, 1,
/// 1, 1, 1, 0], [0, 1, -1, 2, -2, 1/2, -1/2, 1]], two outputs a tile, along a row or a column
/// as `t` says.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn output_transform8(
    p: &[f32],
    m: usize,
    n: usize,
    ps: usize,
    t0: usize,
    chunks: &[(usize, usize, usize)],
    t: &Tiling,
    job: &Conv,
    bias: &[f32],
    act: Activation,
    out: Out,
) {
    use std::arch::x86_64::*;
    assert!(ps >= m * n && p.len() >= 8 * ps && bias.len() >= m);
    let along_row = (t.ry, t.r) == (1, 2);
    let (oh, ow) = (job.oh, job.ow);
    let pp = p.as_ptr();
    for (o, &bo) in bias[..m].iter().enumerate() {
        let b = _mm512_set1_ps(bo);
        for &(ty, tx, len) in chunks {
            let k = lanes(len);
            let at = (ty * t.tw + tx) - t0;
            // SAFETY: tiles `at..at + len` of plane (i, o) lie inside `p`.
            let [m0, m1, m2, m3, m4, m5, m6, m7]: [__m512; 8] =
                std::array::from_fn(|i| unsafe { _mm512_maskz_loadu_ps(k, pp.add(i * ps + o * n + at)) });
            let [y0, y1] =
                w16!(at8, [m0, m1, m2, m3, m4, m5, m6, m7]).map(|y| igemm::activate(_mm512_add_ps(y, b), act));
            if along_row {
                // Output columns 2 tx .. 2 (tx + len) of row ty, those inside the row.
                let cols = (2 * len).min(ow - 2 * tx);
                let row = out.at((o * oh + ty) * ow + 2 * tx);
                // SAFETY: columns 2tx + 0..cols of row ty of channel o are this run's pixels.
                unsafe { store_pairs(row, cols, y0, y1) };
            } else {
                // Columns tx .. tx + len of rows 2 ty and 2 ty + 1, those inside the plane.
                for (oy, y) in (2 * ty..(2 * ty + 2).min(oh)).zip([y0, y1]) {
                    // SAFETY: columns tx + 0..len of row oy of channel o are this run's pixels.
                    unsafe { _mm512_mask_storeu_ps(out.at((o * oh + oy) * ow + tx), k, y) };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::igemm::NR;

    /// `pad` bit for bit against its definition: plane `(c, p)` row `i` entry `j` is input pixel
    /// `(i - pt, r j + p - pl)`, through the ReLU mask where there is one, else 0 -- for every
    /// tile's phase count, with left padding, and with rows wider than the planes need (a
    /// negative right padding).
    #[test]
    fn padded_planes_match_the_definition() {
        let (c, h) = (3usize, 11usize);
        let x: Vec<f32> = (0..c * h * 13).map(|i| (i as f32 * 0.61).sin()).collect();
        let y: Vec<f32> = (0..c * h * 13).map(|i| (i as f32 * 0.37).cos()).collect();
        for tile in [Tile::F2, Tile::F4, Tile::F2k5, Tile::F2k7Row, Tile::F2k7Col] {
            for (w, pt, pl, ow) in [(13usize, 1usize, 1usize, 13usize), (13, 0, 2, 7), (13, 2, 0, 5)] {
                for mask in [None, Some((&y[..c * h * w], Activation::Relu))] {
                    let ((ry, r), (kh, _), (_, nw)) = (tile.rows_cols(), tile.kernel(), tile.block());
                    let oh = h;
                    let (th, tw) = (oh.div_ceil(ry), ow.div_ceil(r));
                    let t = Tiling { r, ry, tw, hp: ry * th + kh - 1, wq: tw + (nw - 1) / r };
                    let job = Conv { x: &x[..c * h * w], mask, c, h, w, kh, kw: 1, pt, pl, sh: 1, sw: 1, oh, ow };
                    let mut planes = vec![f32::NAN; c * t.plane()];
                    pad(&job, &t, &mut planes);
                    for ch in 0..c {
                        for p in 0..r {
                            for i in 0..t.hp {
                                for j in 0..t.wq {
                                    let (iy, ix) = (i as isize - pt as isize, (r * j + p) as isize - pl as isize);
                                    let inside = iy >= 0 && iy < h as isize && ix >= 0 && ix < w as isize;
                                    let want = if !inside {
                                        0.0
                                    } else {
                                        let k = ch * h * w + iy as usize * w + ix as usize;
                                        if mask.is_some() && y[k] <= 0.0 { 0.0 } else { x[k] }
                                    };
                                    let got = planes[ch * t.plane() + (p * t.hp + i) * t.wq + j];
                                    assert_eq!(
                                        got.to_bits(),
                                        want.to_bits(),
                                        "{tile:?} w {w} pt {pt} pl {pl} ch {ch} p {p} ({i}, {j})"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// `split_phases` against its definition: 1, 2 and 4 phases, rows that end inside a vector
    /// and past one, a source longer than needed.
    #[test]
    fn phases_split_by_column_remainder() {
        for r in [1usize, 2, 4] {
            for n in [0usize, 1, 7, 8, 9, 16, 23, 40] {
                let src: Vec<f32> = (0..r * n + 5).map(|i| i as f32 * 1.5 - 7.0).collect();
                let mut planes = vec![vec![f32::NAN; n]; r];
                let mut dst: Vec<&mut [f32]> = planes.iter_mut().map(|p| &mut p[..]).collect();
                split_phases(&src, &mut dst);
                for (p, plane) in planes.iter().enumerate() {
                    for (j, v) in plane.iter().enumerate() {
                        assert_eq!(v.to_bits(), src[r * j + p].to_bits(), "r {r}, n {n}, phase {p}, entry {j}");
                    }
                }
            }
        }
    }

    /// The AVX2 transforms' partial loads and stores: `load8` and `store8` of 0..=8 lanes,
    /// `store_lanes` of 0..=16, and `store_row_avx2` of every column count (R = 2 and 4) write
    /// exactly their lanes, in order, and nothing past them.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn partial_lanes() {
        use std::arch::x86_64::*;
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            eprintln!("no AVX2 here: the AVX2 transforms do not run");
            return;
        }
        let src: Vec<f32> = (0..64).map(|i| 1.0 + i as f32).collect();
        for k in 0..=8 {
            let mut got = [f32::NAN; 9];
            // SAFETY: the CPU has AVX2 and FMA; 8 floats read from `src`, `k` written to `got`.
            let x = unsafe { load8(src.as_ptr(), k) };
            unsafe { store8(got.as_mut_ptr(), x, k) };
            assert_eq!(&got[..k], &src[..k], "{k} lanes");
            assert!(got[k..].iter().all(|v| v.is_nan()), "{k} lanes: stored past them");
            let mut all = [f32::NAN; 8];
            // SAFETY: 8 floats written.
            unsafe { _mm256_storeu_ps(all.as_mut_ptr(), x) };
            assert!(all[k..].iter().all(|&v| v == 0.0), "{k} lanes: loaded past them");
        }
        for len in 0..=16 {
            let v: Lanes = std::array::from_fn(|l| 1.0 + l as f32);
            let mut got = [f32::NAN; 17];
            // SAFETY: the CPU has AVX2 and FMA.
            unsafe { store_lanes(&mut got, &v, len) };
            assert_eq!(&got[..len], &v[..len], "{len} lanes");
            assert!(got[len..].iter().all(|v| v.is_nan()), "{len} lanes: stored past them");
        }
        fn row<const R: usize>(src: &[f32]) {
            for cols in 0..=8 * R {
                // Column c of tile l is `src[c * 8 + l]`, plus the bias 0.5; ReLU passes it.
                // SAFETY: the CPU has AVX2 and FMA; `got` holds 8 R + 1 floats.
                let y: [__m256; R] = std::array::from_fn(|c| unsafe { _mm256_loadu_ps(src.as_ptr().add(8 * c)) });
                let mut got = [f32::NAN; 33];
                unsafe { store_row_avx2::<R>(got.as_mut_ptr(), cols, y, 0.5, Activation::Relu) };
                let want: Vec<f32> = (0..cols).map(|x| src[(x % R) * 8 + x / R] + 0.5).collect();
                assert_eq!(&got[..cols], &want[..], "R {R}, {cols} columns");
                assert!(got[cols..].iter().all(|v| v.is_nan()), "R {R}, {cols} columns: stored past them");
            }
        }
        row::<2>(&src);
        row::<4>(&src);
    }

    #[test]
    fn matches_the_definition() {
        if !igemm::available() {
            eprintln!("neither AVX-512F nor AVX2 here: the im2col route serves every convolution");
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
            // For 5x5 kernels (the cases above widen their padding by one): a 1x1 output, and
            // padding 4 (a valid 5x5 convolution's input gradient).
            (3, 5, 5, 4, 0, 0, 0, 0),
            (3, 7, 9, 5, 4, 4, 4, 4),
        ];
        // Cases run, by kernel (3x3 for two tiles, 5x5), three activations each.
        let mut ran = std::collections::BTreeMap::<(usize, usize, bool), usize>::new();
        for (i, &(c, h, w, m, pt, pb, pl, pr)) in cases.iter().enumerate() {
            let x = values(c * h * w, 0.37 + i as f32 * 0.01);
            let y = values(c * h * w, 0.91);
            let bias = values(m, 1.3);
            // Every tile on AVX-512, and on the AVX2 kernels too.
            let tiles: &[(Tile, bool)] = if igemm::avx512() {
                &[
                    (Tile::F2, false),
                    (Tile::F2, true),
                    (Tile::F4, false),
                    (Tile::F4, true),
                    (Tile::F2k5, true),
                    (Tile::F2k5, false),
                    (Tile::F2k7Row, false),
                    (Tile::F2k7Col, false),
                    (Tile::F2k7Row, true),
                    (Tile::F2k7Col, true),
                ]
            } else {
                &[(Tile::F2, true), (Tile::F4, true), (Tile::F2k5, true), (Tile::F2k7Row, true), (Tile::F2k7Col, true)]
            };
            for ((tile, avx2), act) in
                tiles.iter().flat_map(|&t| [Activation::Identity, Activation::Relu, Activation::Relu6].map(|a| (t, a)))
            {
                let (kh, kw) = tile.kernel();
                let wt = values(m * c * kh * kw, 0.53);
                // Along an axis, the 3x3 case's padding for 3 taps; for 5 and 7 taps one and two
                // more where the case pads (less than 4) on that axis; none for 1 tap. (Each axis
                // by its own padding: case 9's 5x5 columns pad (3, -1).)
                let widen = |k: usize, a: usize, b: isize| match k {
                    1 => (0, 0),
                    _ if (1..4).contains(&a) => (a + (k - 3) / 2, b + (k as isize - 3) / 2),
                    _ => (a, b),
                };
                let ((pt, pb), (pl, pr)) = (widen(kh, pt, pb), widen(kw, pl, pr));
                let (oh, ow) = ((h + pt) as isize + pb + 1 - kh as isize, (w + pl) as isize + pr + 1 - kw as isize);
                if oh < 1 || ow < 1 {
                    continue;
                }
                let (oh, ow) = (oh as usize, ow as usize);
                *ran.entry((kh, kw, avx2)).or_default() += 1;
                let u = Transformed::new(&wt, m, c, tile);
                for mask in [None, Some((&y[..], act))] {
                    let job = Conv { x: &x, mask, c, h, w, kh, kw, pt, pl, sh: 1, sw: 1, oh, ow };
                    let want = igemm::tests::naive(&wt, m, &bias, act, &job);
                    // The run length the layer picks, and runs of several micro-tiles (which a
                    // test machine's small layers would not pick).
                    // On AVX2 a micro-tile is 16 tiles, and runs of one and three of them too.
                    let mut runs = vec![None, Some(2 * NR), Some(3 * NR)];
                    if avx2 {
                        runs.extend([Some(16), Some(48 + 16)]);
                    }
                    for run in runs {
                        let go = || conv_in_runs(&u, Some(&bias), act, &job, run);
                        let got = if avx2 { igemm::on_avx2(go) } else { go() };
                        assert_eq!(got.len(), want.len(), "case {i}");
                        for (k, (g, e)) in got.iter().zip(&want).enumerate() {
                            assert!(
                                (g - e).abs() < 1e-4 * (1.0 + e.abs()),
                                "case {i} {act:?} {tile:?} (AVX2 {avx2}) mask {} run {run:?}: [{k}] {g} vs {e}",
                                mask.is_some()
                            );
                        }
                    }
                }
            }
        }
        eprintln!("cases run by kernel: {ran:?}");
        // All twelve cases for the two 3x3 tiles (on each kernel), eleven for 5x5
        // (a 3x3 input unpadded has no 5x5 output), ten for 1x7 and 7x1 (nor a 5x5 one a 7-tap
        // output), three activations each.
        let ran: Vec<_> = ran.into_iter().collect();
        if igemm::avx512() {
            let want = [
                ((1, 7, false), 30),
                ((1, 7, true), 30),
                ((3, 3, false), 72),
                ((3, 3, true), 72),
                ((5, 5, false), 33),
                ((5, 5, true), 33),
                ((7, 1, false), 30),
                ((7, 1, true), 30),
            ];
            assert_eq!(ran, want, "a case was skipped");
        } else {
            let want = [((1, 7, true), 30), ((3, 3, true), 72), ((5, 5, true), 33), ((7, 1, true), 30)];
            assert_eq!(ran, want, "a case was skipped");
        }
    }
}

#[cfg(test)]
mod speed {
    use super::*;

    /// `cargo test --release --lib run_speed -- --ignored --nocapture`: InceptionV3's Winograd
    /// layers (3x3, 5x5, 1x7, 7x1) forward at a few run lengths (`RUNS=0,16,32`; 0 is the
    /// length `conv` picks), interleaved in one process, the minimum of 12 runs each (of 100
    /// with `RUN_ONLY=i`, one layer, for `perf record`): on a VM whose speed drifts by a
    /// quarter between processes, only such interleaved times compare.
    #[test]
    #[ignore]
    fn run_speed() {
        if !igemm::available() {
            return;
        }
        // (c, h, m, kh, kw): 3x3 at no padding, 5x5, 1x7 and 7x1 at "same" padding.
        let shapes = [
            (32, 255, 32, 3, 3),
            (32, 253, 64, 3, 3),
            (80, 126, 192, 3, 3),
            (64, 61, 96, 3, 3),
            (96, 61, 96, 3, 3),
            (192, 124, 80, 3, 3),
            (96, 30, 96, 3, 3),
            (48, 61, 64, 5, 5),
            (48, 30, 64, 5, 5),
            (128, 30, 128, 1, 7),
            (160, 30, 192, 7, 1),
            (160, 14, 160, 7, 1),
        ];
        let runs: Vec<usize> = std::env::var("RUNS")
            .map_or(vec![0, 16, 32, 48, 96], |v| v.split(',').map(|x| x.parse().unwrap()).collect());
        let only: Option<usize> = std::env::var("RUN_ONLY").ok().and_then(|v| v.parse().ok());
        for (i, &(c, h, m, kh, kw)) in shapes.iter().enumerate() {
            if only.is_some_and(|o| o != i) {
                continue;
            }
            let x: Vec<f32> = (0..c * h * h).map(|i| (i as f32 * 0.37).sin()).collect();
            let wt: Vec<f32> = (0..m * c * kh * kw).map(|i| (i as f32 * 0.11).cos()).collect();
            let Some(tile) = Tile::for_forward(kh, kw) else { continue };
            let u = Transformed::new(&wt, m, c, tile);
            let (pt, pl) = if kh == 3 { (0, 0) } else { (kh / 2, kw / 2) };
            let (oh, ow) = (h + 2 * pt + 1 - kh, h + 2 * pl + 1 - kw);
            let job = Conv { x: &x, mask: None, c, h, w: h, kh, kw, pt, pl, sh: 1, sw: 1, oh, ow };
            let mut best = vec![f64::MAX; runs.len()];
            for _ in 0..if only.is_some() { 100 } else { 12 } {
                for (i, &r) in runs.iter().enumerate() {
                    let t = std::time::Instant::now();
                    let _ = conv_in_runs(&u, None, Activation::Relu, &job, (r > 0).then_some(r));
                    best[i] = best[i].min(t.elapsed().as_secs_f64());
                }
            }
            let line: Vec<String> = runs.iter().zip(&best).map(|(r, b)| format!("{r}: {:.2}", b * 1e3)).collect();
            println!("c{c} {h} -> {m} {kh}x{kw}: {}", line.join(", "));
        }
    }

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
            let u = Transformed::new(&wt, m, c, Tile::for_gradients(3, 3).unwrap());
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
