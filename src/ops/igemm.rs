//! Stride-1 convolutions as an implicit matrix product with an AVX-512 micro-kernel: no
//! im2col matrix, no packing of the image, bias and activation applied as the results leave
//! the registers.
//!
//! Why by hand: the im2col route (`conv.rs`) writes the gathered columns out, and OpenBLAS then
//! copies them again into its own panel layout before its kernel reads them: on InceptionV3's
//! 512x512 dream step those two copies took about a fifth of the CPU time, next to 43% in the
//! kernel itself. No crate multiplies straight out of an image. The trick here is the padded
//! grid: with the input copied once into planes `Wp = ow + kw - 1` wide (zero margins), the
//! column of kernel tap `(c, ky, kx)` for output pixel `p` of the `oh x Wp` grid is the padded
//! plane at `p + ky * Wp + kx` -- a plain shifted read, so the micro-kernel loads its 48
//! pixels of each tap straight from the image. The `kw - 1` extra columns of each grid row are
//! computed and dropped (3% at 61 columns and a 3x3 kernel). A 1x1 convolution without padding
//! reads the input itself.
//!
//! The kernel keeps 8 output channels x 48 pixels in 24 registers, and per tap loads 3 vectors
//! of pixels and broadcasts 8 weights. The weights are packed once per layer (8 channels at a
//! time, tap-major). The input gradient of a stride-1 convolution is itself such a convolution
//! (of the masked output gradient with the flipped, transposed kernel), so it runs here too.
//! Used when the CPU has AVX-512F. On a CPU with AVX2 and FMA only (AMD before Zen 4, Intel's
//! client cores) the same product runs on an 8-lane kernel (`tile_avx2`), and `conv.rs` takes
//! it only for the layers where it beat the im2col route there (`conv::avx2_pays`); without
//! either, `conv.rs` keeps the im2col route.

use super::conv::Activation;
use rayon::prelude::*;

/// Output channels per micro-tile.
pub(super) const MR: usize = 8;
/// Pixels per micro-tile (three 16-float vectors).
pub(super) const NR: usize = 48;
/// Taps per pass over a tile: the pixels of 128 taps (at most 24 KB) stay in the L1 cache while
/// every block of channels reads them; the whole of a 3x3 layer's taps did not, and the kernel
/// then waited on the L2 cache (65-127 GFLOP/s on one core, where OpenBLAS's own kernel runs a
/// large product at about 150).
const KC: usize = 128;

/// Where a micro-tile's sums start.
#[derive(Clone, Copy)]
enum From {
    /// Zero: the first taps.
    Zero,
    /// The partial sums of the taps before.
    Partial,
}

/// Where a micro-tile's sums go.
#[derive(Clone, Copy)]
enum To<'a> {
    /// Channel 0 of the block in the output (`[rows, oh, ow]`), plus the bias of each of the
    /// block's channels, through the activation. The bias comes after the sum, as in PyTorch
    /// and OpenBLAS: a pre-activation a rounding away from 0 or 6 decides whether the gradient
    /// passes, and with the bias first one such pixel of the Lite0 reference differed by 3e-3
    /// of the gradient's spread.
    Output(*mut f32, &'a [f32], usize, Activation),
    /// The partial sums, for the taps after.
    Partial,
}

/// The instruction sets the kernels are written for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Isa {
    /// AVX-512F: 8 channels x 48 pixels a micro-tile, 24 of the 32 vector registers.
    Avx512,
    /// AVX2 with FMA (AMD before Zen 4, Intel's client cores): 16 vector registers of 8 lanes,
    /// so a micro-tile is 8 channels x 16 pixels, worked in two halves of 4 channels (see
    /// `tile_avx2`).
    Avx2,
}

impl Isa {
    /// Grid pixels per micro-tile.
    pub(super) fn nr(self) -> usize {
        match self {
            Isa::Avx512 => NR,
            Isa::Avx2 => NR / 3,
        }
    }
}

/// The kernels this CPU runs (checked once): AVX-512F, else AVX2 with FMA, else none (the
/// im2col route). `DEEPDREAM_ISA=avx2` takes the AVX2 kernels on a CPU that has AVX-512 too
/// (for comparing them).
pub fn isa() -> Option<Isa> {
    #[cfg(target_arch = "x86_64")]
    {
        static ISA: std::sync::OnceLock<Option<Isa>> = std::sync::OnceLock::new();
        *ISA.get_or_init(|| {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma");
            let forced = std::env::var("DEEPDREAM_ISA").is_ok_and(|v| v.trim().eq_ignore_ascii_case("avx2"));
            // AVX-512 with AVX2 and FMA (every such CPU has them; the AVX2 helpers, the phase
            // gathers and the max pool's maxima, run on it too).
            if has!("avx512f") && avx2 && !forced { Some(Isa::Avx512) } else { avx2.then_some(Isa::Avx2) }
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

/// Whether this CPU runs the implicit-product kernel (either instruction set).
pub fn available() -> bool {
    isa().is_some()
}

/// Whether this CPU runs the AVX-512 kernels: the forward's pooling scan, the depthwise rows,
/// the strided convolutions' phase planes and the phase split have no AVX2 version yet.
pub fn avx512() -> bool {
    isa() == Some(Isa::Avx512)
}

thread_local! {
    /// Set by [`on_avx2`]: this thread's products take the AVX2 kernel.
    static AVX2_ONLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with this thread's [`conv`] calls on the AVX2 kernel where the CPU has AVX2 (the
/// tests keep it covered on machines with AVX-512).
#[cfg(test)]
pub(super) fn on_avx2<R>(f: impl FnOnce() -> R) -> R {
    let before = AVX2_ONLY.with(|c| c.replace(true));
    let r = f();
    AVX2_ONLY.with(|c| c.set(before));
    r
}

/// The kernel this thread's [`conv`] (and `winograd::conv`) calls take.
pub(super) fn isa_here() -> Isa {
    match isa() {
        #[cfg(target_arch = "x86_64")]
        Some(Isa::Avx512)
            if AVX2_ONLY.with(|c| c.get())
                && std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma") =>
        {
            Isa::Avx2
        }
        Some(i) => i,
        None => panic!("igemm: the CPU has neither AVX-512F nor AVX2 with FMA"),
    }
}

/// A weight matrix `[m, k]` packed for the kernel: `data[block][k][r]` holds row
/// `block * MR + r` (zero past `m`).
pub struct Packed {
    pub(super) m: usize,
    pub(super) k: usize,
    pub(super) data: Vec<f32>,
}

impl Packed {
    /// Packs the row-major `[m, k]` matrix `w`.
    pub fn new(w: &[f32], m: usize, k: usize) -> Packed {
        assert_eq!(w.len(), m * k, "igemm: weight matrix of {m}x{k}");
        let blocks = m.div_ceil(MR);
        let mut data = vec![0.0f32; blocks * k * MR];
        for b in 0..blocks {
            for r in 0..MR.min(m - b * MR) {
                let row = &w[(b * MR + r) * k..][..k];
                for (kk, v) in row.iter().enumerate() {
                    data[(b * k + kk) * MR + r] = *v;
                }
            }
        }
        Packed { m, k, data }
    }
}

/// One convolution over one image: `c` input planes of `h x w` (optionally multiplied by the
/// activation mask read off `mask`, same shape, at stride 1 only), zero padding `pt` rows and
/// `pl` columns before, a `kh x kw` kernel at stride `sh x sw`, output `oh x ow`.
#[derive(Clone, Copy)]
pub struct Conv<'a> {
    pub x: &'a [f32],
    pub mask: Option<(&'a [f32], Activation)>,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub pt: usize,
    pub pl: usize,
    pub sh: usize,
    pub sw: usize,
    pub oh: usize,
    pub ow: usize,
}

thread_local! {
    /// The padded input, kept between calls (tens of megabytes at 512x512).
    static PADDED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `y[o] = act(bias[o] + sum_k w[o, k] * column_k)` for every output channel `o` of `w`
/// (`w.k` must be `c * kh * kw`, taps ordered `(c, ky, kx)`), as `[m, oh, ow]`.
pub fn conv(w: &Packed, bias: Option<&[f32]>, act: Activation, job: &Conv) -> Vec<f32> {
    let isa = isa_here();
    assert!(w.k > 0 && w.k == job.c * job.kh * job.kw, "igemm: weights for another kernel");
    assert_eq!(job.x.len(), job.c * job.h * job.w, "igemm: input of another size");
    if job.sh > 1 || job.sw > 1 {
        return strided(w, bias, act, job, isa);
    }
    let direct = job.kh == 1
        && job.kw == 1
        && job.pt == 0
        && job.pl == 0
        && (job.oh, job.ow) == (job.h, job.w)
        && job.mask.is_none();
    if direct {
        return run(w, bias, act, job, job.x, job.w, offsets(job, 1, 1, job.w, job.h * job.w), isa);
    }
    let (hp, wp) = (job.oh + job.kh - 1, job.ow + job.kw - 1);
    let plane = hp * wp;
    // Reads reach `kh - 1` rows and `kw - 1` columns past a grid pixel, and a tile NR past
    // the last one.
    let len = job.c * plane + wp + job.kw + NR;
    super::conv::with_buffer(&PADDED, len, |buf| {
        pad(job, buf, hp, wp);
        run(w, bias, act, job, buf, wp, offsets(job, 1, 1, wp, plane), isa)
    })
}

/// Where tap `(c, ky, kx)` reads, from a grid pixel: in plane `(c * sh + ky % sh) * sw + kx % sw`
/// (the input's planes, or at a stride its phase planes), `ky / sh` rows and `kx / sw` columns on.
fn offsets(job: &Conv, sh: usize, sw: usize, wp: usize, plane: usize) -> Vec<usize> {
    (0..job.c)
        .flat_map(|c| {
            (0..job.kh).flat_map(move |ky| {
                (0..job.kw).map(move |kx| ((c * sh + ky % sh) * sw + kx % sw) * plane + (ky / sh) * wp + kx / sw)
            })
        })
        .collect()
}

/// A convolution at stride `sh x sw` as a stride-1 one: the padded input is split into its
/// `sh * sw` phase planes per channel (rows `i * sh + py`, columns `j * sw + px`), where tap
/// `(ky, kx)` of output `(oy, ox)` is pixel `(oy + ky / sh, ox + kx / sw)` of phase
/// `(ky % sh, kx % sw)`: the same shifted reads, no im2col matrix, no taps of zeros.
fn strided(w: &Packed, bias: Option<&[f32]>, act: Activation, job: &Conv, isa: Isa) -> Vec<f32> {
    assert!(job.mask.is_none(), "igemm: a mask only at stride 1");
    let (sh, sw) = (job.sh, job.sw);
    let (hp, wp) = (job.oh + (job.kh - 1) / sh, job.ow + (job.kw - 1) / sw);
    let plane = hp * wp;
    let planes = job.c * sh * sw;
    // Reads reach `(kh - 1) / sh` rows and `(kw - 1) / sw` columns past a grid pixel.
    let len = planes * plane + wp + job.kw + NR;
    super::conv::with_buffer(&PADDED, len, |buf| {
        let (body, tail) = buf.split_at_mut(planes * plane);
        tail.fill(0.0);
        let (h, wd) = (job.h, job.w);
        body.par_chunks_mut(sh * sw * plane).enumerate().for_each(|(c, out)| {
            let src = &job.x[c * h * wd..][..h * wd];
            for (ph, dst) in out.chunks_exact_mut(plane).enumerate() {
                let (py, px) = (ph / sw, ph % sw);
                for (i, row) in dst.chunks_exact_mut(wp).enumerate() {
                    let iy = (i * sh + py) as isize - job.pt as isize;
                    if iy < 0 || iy >= h as isize {
                        row.fill(0.0);
                        continue;
                    }
                    super::conv::phase_row(row, &src[iy as usize * wd..][..wd], sw, px, job.pl);
                }
            }
        });
        run(w, bias, act, job, buf, wp, offsets(job, sh, sw, wp, plane), isa)
    })
}

/// Copies the input (masked) into `hp x wp` planes with zero margins; the tail after the last
/// plane is zeroed too. Input rows and columns past the grid (where a padding wider than the
/// kernel made outputs that read only zeros) are left out: no output reads them.
fn pad(job: &Conv, buf: &mut [f32], hp: usize, wp: usize) {
    let plane = hp * wp;
    let (h, w, pt, pl) = (job.h, job.w, job.pt.min(hp), job.pl.min(wp));
    let (planes, tail) = buf.split_at_mut(job.c * plane);
    tail.fill(0.0);
    planes.par_chunks_mut(plane).enumerate().for_each(|(c, out)| {
        super::wide(|| {
            let src = &job.x[c * h * w..][..h * w];
            let m = job.mask.map(|(y, act)| (&y[c * h * w..][..h * w], act));
            out[..pt * wp].fill(0.0);
            for (iy, row) in out[pt * wp..].chunks_mut(wp).enumerate() {
                if iy >= h {
                    row.fill(0.0);
                    continue;
                }
                let end = (pl + w).min(wp);
                row[..pl].fill(0.0);
                row[end..].fill(0.0);
                let s = &src[iy * w..][..end - pl];
                match m {
                    None => row[pl..end].copy_from_slice(s),
                    Some((y, act)) => {
                        let yr = &y[iy * w..][..end - pl];
                        super::conv::mask_into(&mut row[pl..end], s, yr, act);
                    }
                }
            }
        })
    });
}

/// A raw output pointer shared by the tasks: each writes a disjoint set of elements.
#[derive(Clone, Copy)]
pub(super) struct Out(pub(super) *mut f32);
// SAFETY: the tasks of `run` (and of `winograd::conv`) write disjoint elements (distinct
// pixels or channels) and the buffer outlives them.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The element `i` floats on (a method, so closures capture the whole `Out`).
    pub(super) fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

/// The product over the grid `src` (rows `wp` wide; the output's `oh x ow` pixels are the grid's
/// first `ow` columns of its first `oh` rows), tap `k` reading from `offsets[k]` on.
#[allow(clippy::too_many_arguments)]
fn run(
    w: &Packed,
    bias: Option<&[f32]>,
    act: Activation,
    job: &Conv,
    src: &[f32],
    wp: usize,
    offsets: Vec<usize>,
    isa: Isa,
) -> Vec<f32> {
    let (oh, ow) = (job.oh, job.ow);
    let ohw = oh * ow;
    if w.m * ohw == 0 {
        return Vec::new();
    }
    let mut bias_padded = vec![0.0f32; w.m.div_ceil(MR) * MR];
    if let Some(b) = bias {
        bias_padded[..w.m].copy_from_slice(&b[..w.m]);
    }
    let grid = oh * wp;
    // Tap k reads grid pixels 0..grid from offsets[k] on: all inside `src` (the tiles' loads
    // past `grid` are masked off).
    assert!(offsets.last().is_some_and(|o| o + grid <= src.len()), "igemm: the grid overruns its buffer");
    let tiles = grid.div_ceil(isa.nr());
    let blocks = w.m.div_ceil(MR);
    let mut y: Vec<f32> = Vec::with_capacity(w.m * ohw);
    let out = Out(y.as_mut_ptr());
    // Tasks: runs of tiles, and when the tiles are few, runs of channel blocks too.
    let target = rayon::current_num_threads() * 4;
    let tile_run = tiles.div_ceil(target).max(1);
    let tile_runs = tiles.div_ceil(tile_run);
    let block_runs = target.div_ceil(tile_runs).clamp(1, blocks);
    let block_run = blocks.div_ceil(block_runs);
    let block_runs = blocks.div_ceil(block_run);
    let geometry = Grid { src: src.as_ptr(), wp, grid, oh, ow };
    (0..tile_runs * block_runs).into_par_iter().for_each(|task| {
        let (tr, br) = (task / block_runs, task % block_runs);
        let tiles_here = tr * tile_run..((tr + 1) * tile_run).min(tiles);
        let blocks_here = br * block_run..((br + 1) * block_run).min(blocks);
        // SAFETY: `isa` runs on this CPU (`isa_here`); `conv` sized the grid buffer (or the direct
        // input, through the tail masks) to hold every unmasked lane read at `offsets[k] +
        // t * nr`; the tasks' (tiles, blocks) pairs are disjoint, and `y` holds `m * ohw`.
        unsafe { product(w, &offsets, &geometry, tiles_here, blocks_here, out, &bias_padded, act, isa) };
    });
    // SAFETY: the tasks above wrote every one of the `m * oh * ow` elements (each channel's
    // every output pixel lies in exactly one tile of the grid).
    unsafe { y.set_len(w.m * ohw) };
    y
}

/// The micro-tiles `tiles` (of `isa.nr()` grid pixels each) of the channel blocks `blocks` (of
/// MR channels): the sums over all taps of `w` (tap `k` read at `offsets[k]` from a tile's
/// first pixel), plus `bias` (padded to whole blocks), through `act`, into `out` (channel `o`
/// at `o * g.oh * g.ow`). With more taps than a pass takes (KC), the sums wait in partial sums
/// between passes, and each pass prefetches the pixels of the next.
///
/// # Safety
/// The CPU runs `isa`; every unmasked lane a tile reads (`offsets[k] + t * nr + lane`, lanes
/// up to `g.grid`) lies inside the buffer at `g.src`; `out` holds these channels at these
/// tiles' output pixels and nobody else writes them meanwhile.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn product(
    w: &Packed,
    offsets: &[usize],
    g: &Grid,
    tiles: std::ops::Range<usize>,
    blocks: std::ops::Range<usize>,
    out: Out,
    bias: &[f32],
    act: Activation,
    isa: Isa,
) {
    let ohw = g.oh * g.ow;
    let nr = isa.nr();
    assert!(offsets.len() == w.k && bias.len() >= blocks.end * MR);
    // Partial sums of the tile between chunks of taps, per block of channels. With one chunk
    // of taps they are never used, and one block's worth on the stack stands in (Winograd's
    // products call this 36 times a run: a heap buffer each time was a `memset` call).
    let mut one = [0.0f32; MR * NR];
    let mut many = Vec::new();
    let partial: &mut [f32] = if w.k > KC {
        many.resize(blocks.len() * MR * NR, 0.0f32);
        &mut many
    } else {
        &mut one
    };
    for t in tiles.clone() {
        for k0 in (0..w.k).step_by(KC) {
            let k1 = (k0 + KC).min(w.k);
            // The pass after this one: the next taps of this tile, or the next tile's first.
            let next = if k1 < w.k {
                Some((&offsets[k1..(k1 + KC).min(w.k)], t * nr))
            } else if t + 1 < tiles.end {
                Some((&offsets[..KC.min(w.k)], (t + 1) * nr))
            } else {
                None
            };
            for (i, b) in blocks.clone().enumerate() {
                let next = if i == 0 { next } else { None };
                let rows = MR.min(w.m - b * MR);
                let a = &w.data[(b * w.k + k0) * MR..(b * w.k + k1) * MR];
                let from = if k0 == 0 { From::Zero } else { From::Partial };
                let to = if k1 == w.k {
                    To::Output(out.at(b * MR * ohw), &bias[b * MR..][..MR], rows, act)
                } else {
                    To::Partial
                };
                let partial = &mut partial[if w.k > KC { i * MR * NR } else { 0 }..][..MR * NR];
                // SAFETY (the caller's): `tile` reads the grid at unmasked lanes only, and
                // writes channels `b * MR..+rows` at valid pixels of tile `t`, or the partial
                // sums.
                unsafe {
                    match isa {
                        Isa::Avx512 => tile(a, &offsets[k0..k1], g, t * nr, from, to, partial, next),
                        Isa::Avx2 => tile_avx2(a, &offsets[k0..k1], g, t * nr, from, to, rows, partial, next),
                    }
                };
            }
        }
    }
}

/// Where the tiles read and write.
pub(super) struct Grid {
    pub(super) src: *const f32,
    pub(super) wp: usize,
    pub(super) grid: usize,
    pub(super) oh: usize,
    pub(super) ow: usize,
}
// SAFETY: read-only view of a slice that outlives the tasks.
unsafe impl Sync for Grid {}

/// One micro-tile: the block of channels whose packed weights (for these taps) are `a`, grid
/// pixels `p0..p0 + NR`, summed over the taps at `offsets`, starting from `from` and ending in
/// `to`; `partial` holds the block's `MR x NR` partial sums. With `next` (the taps and first
/// pixel of the pass after this one), the pixels that pass reads are fetched into the cache
/// meanwhile: the taps' rows are too many streams for the hardware prefetcher, and without
/// this the kernel stalled on its loads.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    a: &[f32],
    offsets: &[usize],
    g: &Grid,
    p0: usize,
    from: From,
    to: To,
    partial: &mut [f32],
    next: Option<(&[usize], usize)>,
) {
    use std::arch::x86_64::*;
    let valid = g.grid.saturating_sub(p0).min(NR);
    let lane_mask = |v: usize| -> __mmask16 {
        let n = valid.saturating_sub(v * 16).min(16);
        ((1u32 << n) - 1) as __mmask16
    };
    let (m0, m1, m2) = (lane_mask(0), lane_mask(1), lane_mask(2));
    assert!(a.len() >= offsets.len() * MR && partial.len() >= MR * NR);
    let mut acc = [_mm512_setzero_ps(); 3 * MR];
    match from {
        From::Zero => {}
        From::Partial => {
            for (i, v) in acc.iter_mut().enumerate() {
                // SAFETY: `partial` holds MR * NR = 3 * MR vectors (asserted above).
                *v = unsafe { _mm512_loadu_ps(partial.as_ptr().add(16 * i)) };
            }
        }
    }
    let src = g.src;
    let ap = a.as_ptr();
    if let Some((taps, q0)) = next {
        for &offset in taps {
            // Prefetches never fault, wherever they point.
            let bp = src.wrapping_add(offset + q0) as *const i8;
            _mm_prefetch::<_MM_HINT_T1>(bp);
            _mm_prefetch::<_MM_HINT_T1>(bp.wrapping_add(64));
            _mm_prefetch::<_MM_HINT_T1>(bp.wrapping_add(128));
            _mm_prefetch::<_MM_HINT_T1>(bp.wrapping_add(188));
        }
    }
    for (kk, &offset) in offsets.iter().enumerate() {
        // SAFETY (the caller's): the grid holds every unmasked lane read here, and `a` holds
        // MR weights per tap (asserted above).
        unsafe {
            let bp = src.wrapping_add(offset + p0);
            let b0 = _mm512_maskz_loadu_ps(m0, bp);
            let b1 = _mm512_maskz_loadu_ps(m1, bp.wrapping_add(16));
            let b2 = _mm512_maskz_loadu_ps(m2, bp.wrapping_add(32));
            let w = ap.add(kk * MR);
            for r in 0..MR {
                let wr = _mm512_set1_ps(*w.add(r));
                acc[3 * r] = _mm512_fmadd_ps(wr, b0, acc[3 * r]);
                acc[3 * r + 1] = _mm512_fmadd_ps(wr, b1, acc[3 * r + 1]);
                acc[3 * r + 2] = _mm512_fmadd_ps(wr, b2, acc[3 * r + 2]);
            }
        }
    }
    let (y, bias, rows, act) = match to {
        To::Partial => {
            for (i, v) in acc.iter().enumerate() {
                // SAFETY: as for the load above.
                unsafe { _mm512_storeu_ps(partial.as_mut_ptr().add(16 * i), *v) };
            }
            return;
        }
        To::Output(y, bias, rows, act) => (y, bias, rows, act),
    };
    // SAFETY (the caller's): as for `tile`.
    unsafe { store(acc, g, p0, valid, y, bias, rows, act) };
}

/// The finished sums `acc` of a micro-tile (channels `0..rows` from `y` on, grid pixels
/// `p0..p0 + valid`): plus the bias, through the activation, into the output. Out of line, and
/// `acc` passed by value: its loops index `acc` by variables, and inside `tile` that kept the
/// whole array on the stack, where every call zeroed it and copied it with memset and memcpy
/// (3% of an InceptionV3 step); now `tile` keeps it in registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline(never)]
#[allow(clippy::too_many_arguments)]
unsafe fn store(
    acc: [std::arch::x86_64::__m512; 3 * MR],
    g: &Grid,
    p0: usize,
    valid: usize,
    y: *mut f32,
    bias: &[f32],
    rows: usize,
    act: Activation,
) {
    use std::arch::x86_64::*;
    let ohw = g.oh * g.ow;
    for r in 0..rows {
        let yr = y.wrapping_add(r * ohw);
        let b = _mm512_set1_ps(bias[r]);
        for v in 0..3 {
            let q = p0 + 16 * v;
            let n = valid.saturating_sub(16 * v).min(16);
            if n == 0 {
                break;
            }
            let x = activate(_mm512_add_ps(acc[3 * r + v], b), act);
            if g.wp == g.ow {
                // Rows follow each other: the grid is the output.
                // SAFETY (the caller's): lanes 0..n are output pixels q..q + n of channel r.
                unsafe { _mm512_mask_storeu_ps(yr.wrapping_add(q), ((1u32 << n) - 1) as __mmask16, x) };
                continue;
            }
            // Lanes of grid row `oy` land at `y[oy * ow + (p - oy * wp)]`.
            let (first, last) = (q / g.wp, (q + n - 1) / g.wp);
            for oy in first..=last.min(g.oh - 1) {
                let start = oy * g.wp;
                let lo = start.max(q) - q;
                let hi = (start + g.ow).min(q + n).saturating_sub(q);
                if hi <= lo {
                    continue;
                }
                let mask = (((1u32 << hi) - 1) & !((1u32 << lo) - 1)) as __mmask16;
                // Lane l goes to y[oy * ow + q + l - start]; masked-off lanes are not touched.
                let base = yr.wrapping_add(oy * g.ow + q).wrapping_sub(start);
                // SAFETY (the caller's): the unmasked lanes are output pixels of row oy.
                unsafe { _mm512_mask_storeu_ps(base, mask, x) };
            }
        }
    }
}

/// `act` of 16 pre-activations, as `Activation::apply`: ReLU turns NaN into 0 (f32::max),
/// ReLU6 keeps it (f32::clamp), so a diverged dream still shows NaN. vmaxps/vminps return
/// their second operand when either is NaN.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) fn activate(x: std::arch::x86_64::__m512, act: Activation) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let zero = _mm512_setzero_ps();
    match act {
        Activation::Identity => x,
        Activation::Relu => _mm512_max_ps(x, zero),
        Activation::Relu6 => _mm512_min_ps(_mm512_set1_ps(6.0), _mm512_max_ps(zero, x)),
    }
}

/// [`activate`] on 8 lanes (AVX2): the same instructions, so the same bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(super) fn activate_avx2(x: std::arch::x86_64::__m256, act: Activation) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let zero = _mm256_setzero_ps();
    match act {
        Activation::Identity => x,
        Activation::Relu => _mm256_max_ps(x, zero),
        Activation::Relu6 => _mm256_min_ps(_mm256_set1_ps(6.0), _mm256_max_ps(zero, x)),
    }
}

/// [`tile`] on AVX2: grid pixels `p0..p0 + 16` (2 vectors of 8), the block's channels in two
/// halves of 4 (8 accumulators; the second half only when the block has more than 4
/// channels), each half reading the taps' pixels again (from the L1 cache). A tap is then 2
/// loads, 4 broadcasts and 8 FMAs: 80 GFLOP/s of Zen 3's 93 on one core from the L1 cache.
/// Other shapes measured there: 3 vectors of pixels (12 accumulators) left no spare register
/// and one accumulator went to the stack every tap (40); the channels in the lanes and 12
/// pixels broadcast (a broadcast per FMA) 55. `partial` holds each half's 4 x 16 sums in turn.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_avx2(
    a: &[f32],
    offsets: &[usize],
    g: &Grid,
    p0: usize,
    from: From,
    to: To,
    rows: usize,
    partial: &mut [f32],
    next: Option<(&[usize], usize)>,
) {
    use std::arch::x86_64::*;
    const N: usize = NR / 3;
    let valid = g.grid.saturating_sub(p0).min(N);
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let lane_mask = |v: usize| _mm256_cmpgt_epi32(_mm256_set1_epi32(valid.saturating_sub(v * 8).min(8) as i32), lanes);
    let m = [lane_mask(0), lane_mask(1)];
    assert!(a.len() >= offsets.len() * MR && partial.len() >= MR * N && rows <= MR);
    let src = g.src;
    if let Some((taps, q0)) = next {
        for &offset in taps {
            // Prefetches never fault, wherever they point.
            let bp = src.wrapping_add(offset + q0) as *const i8;
            _mm_prefetch::<_MM_HINT_T1>(bp);
            _mm_prefetch::<_MM_HINT_T1>(bp.wrapping_add(60));
        }
    }
    for half in 0..rows.div_ceil(4) {
        let part = &mut partial[half * 4 * N..][..4 * N];
        let mut acc = [_mm256_setzero_ps(); 8];
        if let From::Partial = from {
            for (i, v) in acc.iter_mut().enumerate() {
                // SAFETY: `part` holds 8 vectors.
                *v = unsafe { _mm256_loadu_ps(part.as_ptr().add(8 * i)) };
            }
        }
        let ap = a.as_ptr().wrapping_add(4 * half);
        // SAFETY (the caller's): the grid holds every unmasked lane read, and `a` holds MR
        // weights per tap (asserted above).
        unsafe {
            if valid == N {
                taps_avx2::<true>(&mut acc, ap, offsets, src.wrapping_add(p0), &m)
            } else {
                taps_avx2::<false>(&mut acc, ap, offsets, src.wrapping_add(p0), &m)
            }
        }
        match to {
            To::Partial => {
                for (i, v) in acc.iter().enumerate() {
                    // SAFETY: as for the load above.
                    unsafe { _mm256_storeu_ps(part.as_mut_ptr().add(8 * i), *v) };
                }
            }
            To::Output(y, bias, rows, act) => {
                let ohw = g.oh * g.ow;
                let y = y.wrapping_add(4 * half * ohw);
                let (bias, rows) = (&bias[4 * half..], (rows - 4 * half).min(4));
                if rows == 4 && valid == N && g.wp == g.ow && act == Activation::Identity && bias[..4] == [0.0; 4] {
                    // Winograd's products (no bias, no activation, whole tiles): the sums as
                    // they are, 8 plain stores, without `store_avx2`'s call and lane checks
                    // (9% of a 5x5 layer's time went there). One difference: a sum of -0.0
                    // stays -0.0 where `+ 0.0` made it +0.0; the output transform's sums and
                    // bias erase it unless every product is a zero and the bias is -0.0.
                    for (r, pair) in acc.chunks_exact(2).enumerate() {
                        let yr = y.wrapping_add(r * ohw + p0);
                        // SAFETY (the caller's): pixels p0..p0 + 16 of these 4 channels.
                        unsafe {
                            _mm256_storeu_ps(yr, pair[0]);
                            _mm256_storeu_ps(yr.wrapping_add(8), pair[1]);
                        }
                    }
                } else {
                    // SAFETY (the caller's): as for `tile`.
                    unsafe { store_avx2(acc, g, p0, valid, y, bias, rows, act) };
                }
            }
        }
    }
}

/// The taps of one half of an AVX2 micro-tile: `acc[2 r + v] += a[kk * MR + r] * pixels
/// `8 v..8 v + 8` of tap `kk` (read at `src + offsets[kk]`; only the lanes of `m` unless
/// `FULL`).
///
/// # Safety
/// AVX2 and FMA; the reads are inside their buffers (see [`tile_avx2`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn taps_avx2<const FULL: bool>(
    acc: &mut [std::arch::x86_64::__m256; 8],
    ap: *const f32,
    offsets: &[usize],
    src: *const f32,
    m: &[std::arch::x86_64::__m256i; 2],
) {
    use std::arch::x86_64::*;
    for (kk, &offset) in offsets.iter().enumerate() {
        // SAFETY: the caller's.
        unsafe {
            let bp = src.wrapping_add(offset);
            let (b0, b1) = if FULL {
                (_mm256_loadu_ps(bp), _mm256_loadu_ps(bp.wrapping_add(8)))
            } else {
                (_mm256_maskload_ps(bp, m[0]), _mm256_maskload_ps(bp.wrapping_add(8), m[1]))
            };
            let w = ap.add(kk * MR);
            for r in 0..4 {
                let wr = _mm256_broadcast_ss(&*w.add(r));
                acc[2 * r] = _mm256_fmadd_ps(wr, b0, acc[2 * r]);
                acc[2 * r + 1] = _mm256_fmadd_ps(wr, b1, acc[2 * r + 1]);
            }
        }
    }
}

/// [`store`] for a half of an AVX2 micro-tile (`rows` up to 4, 16 pixels).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline(never)]
#[allow(clippy::too_many_arguments)]
unsafe fn store_avx2(
    acc: [std::arch::x86_64::__m256; 8],
    g: &Grid,
    p0: usize,
    valid: usize,
    y: *mut f32,
    bias: &[f32],
    rows: usize,
    act: Activation,
) {
    use std::arch::x86_64::*;
    let ohw = g.oh * g.ow;
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    // Lanes lo..hi on.
    let span = |lo: usize, hi: usize| {
        _mm256_andnot_si256(
            _mm256_cmpgt_epi32(_mm256_set1_epi32(lo as i32), lanes),
            _mm256_cmpgt_epi32(_mm256_set1_epi32(hi as i32), lanes),
        )
    };
    for r in 0..rows {
        let yr = y.wrapping_add(r * ohw);
        let b = _mm256_set1_ps(bias[r]);
        for v in 0..2 {
            let q = p0 + 8 * v;
            let n = valid.saturating_sub(8 * v).min(8);
            if n == 0 {
                break;
            }
            let x = activate_avx2(_mm256_add_ps(acc[2 * r + v], b), act);
            if g.wp == g.ow {
                // SAFETY (the caller's): lanes 0..n are output pixels q..q + n of channel r.
                // Not a masked store: `vmaskmovps` to memory is microcoded on AMD's Zen 3.
                unsafe { super::winograd::store8(yr.wrapping_add(q), x, n) };
                continue;
            }
            let (first, last) = (q / g.wp, (q + n - 1) / g.wp);
            for oy in first..=last.min(g.oh - 1) {
                let start = oy * g.wp;
                let lo = start.max(q) - q;
                let hi = (start + g.ow).min(q + n).saturating_sub(q);
                if hi <= lo {
                    continue;
                }
                let base = yr.wrapping_add(oy * g.ow + q).wrapping_sub(start);
                // SAFETY (the caller's): the unmasked lanes are output pixels of row oy.
                unsafe {
                    if (lo, hi) == (0, 8) {
                        _mm256_storeu_ps(base, x)
                    } else {
                        _mm256_maskstore_ps(base, span(lo, hi), x)
                    }
                };
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    _: &[f32],
    _: &[usize],
    _: &Grid,
    _: usize,
    _: From,
    _: To,
    _: &mut [f32],
    _: Option<(&[usize], usize)>,
) {
    unreachable!("igemm::available is false off x86_64")
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_avx2(
    _: &[f32],
    _: &[usize],
    _: &Grid,
    _: usize,
    _: From,
    _: To,
    _: usize,
    _: &mut [f32],
    _: Option<(&[usize], usize)>,
) {
    unreachable!("igemm::available is false off x86_64")
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// The convolution by its definition.
    #[allow(clippy::too_many_arguments)]
    pub(in crate::ops) fn naive(w: &[f32], m: usize, bias: &[f32], act: Activation, j: &Conv) -> Vec<f32> {
        let mut y = vec![0.0f32; m * j.oh * j.ow];
        for o in 0..m {
            for oy in 0..j.oh {
                for ox in 0..j.ow {
                    let mut s = bias[o] as f64;
                    for c in 0..j.c {
                        for ky in 0..j.kh {
                            for kx in 0..j.kw {
                                let (iy, ix) = (
                                    (oy * j.sh + ky) as isize - j.pt as isize,
                                    (ox * j.sw + kx) as isize - j.pl as isize,
                                );
                                if iy < 0 || ix < 0 || iy >= j.h as isize || ix >= j.w as isize {
                                    continue;
                                }
                                let i = c * j.h * j.w + iy as usize * j.w + ix as usize;
                                let mut v = j.x[i];
                                if let Some((my, a)) = j.mask {
                                    let passes = match a {
                                        Activation::Identity => true,
                                        Activation::Relu => my[i] > 0.0,
                                        Activation::Relu6 => my[i] > 0.0 && my[i] < 6.0,
                                    };
                                    v = if passes { v } else { 0.0 };
                                }
                                s += (w[((o * j.c + c) * j.kh + ky) * j.kw + kx] * v) as f64;
                            }
                        }
                    }
                    let s = s as f32;
                    y[(o * j.oh + oy) * j.ow + ox] = match act {
                        Activation::Identity => s,
                        Activation::Relu => s.max(0.0),
                        Activation::Relu6 => s.clamp(0.0, 6.0),
                    };
                }
            }
        }
        y
    }

    /// `f` on this CPU's kernel, and on the AVX2 kernel too where that is another (a CPU with
    /// AVX-512).
    pub(in crate::ops) fn both_kernels<R>(f: impl Fn() -> R) -> Vec<R> {
        let mut out = vec![f()];
        if isa() == Some(Isa::Avx512) && isa_here_avx2() {
            out.push(on_avx2(&f));
        }
        out
    }

    /// Whether [`on_avx2`] takes the AVX2 kernel on this CPU.
    fn isa_here_avx2() -> bool {
        on_avx2(isa_here) == Isa::Avx2
    }

    #[test]
    fn avx512_cpus_test_the_avx2_kernel_too() {
        if isa() == Some(Isa::Avx512) {
            assert!(isa_here_avx2(), "a CPU with AVX-512F and without FMA");
        }
        assert_eq!(both_kernels(|| 1).len(), if isa() == Some(Isa::Avx512) { 2 } else { 1 });
    }

    #[test]
    fn matches_the_definition_on_every_shape_it_takes() {
        if !available() {
            eprintln!("neither AVX-512F nor AVX2 here: the im2col route serves every convolution");
            return;
        }
        let values = |n: usize, k: f32| (0..n).map(|i| (i as f32 * k).sin() * 1.7).collect::<Vec<_>>();
        // (c, h, w, m, kh, kw, pt, pb, pl, pr), pb and pr may be negative: pointwise, same 3x3, valid 3x3, 1x7 and 7x1,
        // lopsided padding, widths under a vector, channel counts off the block size, tails.
        let cases = [
            (5, 9, 13, 11, 1, 1, 0, 0, 0, 0),
            (3, 17, 19, 16, 3, 3, 1, 1, 1, 1),
            (4, 12, 10, 9, 3, 3, 0, 0, 0, 0),
            (6, 8, 21, 8, 1, 7, 0, 0, 3, 3),
            (6, 21, 8, 7, 7, 1, 3, 3, 0, 0),
            (2, 11, 11, 5, 3, 3, 0, 1, 0, 1),
            (3, 5, 3, 17, 3, 3, 1, 1, 1, 1),
            (2, 40, 37, 3, 5, 5, 2, 2, 2, 2),
            (7, 1, 1, 9, 1, 1, 0, 0, 0, 0),
            // Input rows and columns past the grid (output 7x4 of a 10x6 input): the input
            // gradient of a convolution padded wider than its kernel.
            (3, 10, 6, 6, 1, 3, 0, -3, 2, -2),
        ];
        for (i, &(c, h, w, m, kh, kw, pt, pb, pl, pr)) in cases.iter().enumerate() {
            let x = values(c * h * w, 0.37 + i as f32 * 0.01);
            let y = values(c * h * w, 0.91);
            let wt = values(m * c * kh * kw, 0.53);
            let bias = values(m, 1.3);
            let packed = Packed::new(&wt, m, c * kh * kw);
            let (oh, ow) = ((h + pt) as isize + pb - kh as isize + 1, (w + pl) as isize + pr - kw as isize + 1);
            let (oh, ow) = (oh as usize, ow as usize);
            for act in [Activation::Identity, Activation::Relu, Activation::Relu6] {
                for mask in [None, Some((&y[..], act))] {
                    let job = Conv { x: &x, mask, c, h, w, kh, kw, pt, pl, sh: 1, sw: 1, oh, ow };
                    let want = naive(&wt, m, &bias, act, &job);
                    for got in both_kernels(|| conv(&packed, Some(&bias), act, &job)) {
                        for (k, (g, e)) in got.iter().zip(&want).enumerate() {
                            assert!(
                                (g - e).abs() < 1e-4 * (1.0 + e.abs()),
                                "case {i} {act:?} mask {}: [{k}] {g} vs {e}",
                                mask.is_some()
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn strided_matches_the_definition() {
        if !available() {
            return;
        }
        let values = |n: usize, k: f32| (0..n).map(|i| (i as f32 * k).sin() * 1.7).collect::<Vec<_>>();
        // (c, h, w, m, kh, kw, pt, pb, pl, pr, sh, sw): 3x3 at stride 2 padded, valid on odd
        // sizes and lopsided (TF's SAME), 1x1, 5x5 at strides 3 and 2, an input smaller than
        // the stride, a stride in one direction only.
        let cases = [
            (3, 17, 19, 8, 3, 3, 1, 1, 1, 1, 2, 2),
            (4, 12, 11, 9, 3, 3, 0, 0, 0, 0, 2, 2),
            (2, 7, 9, 4, 3, 3, 0, 1, 0, 1, 2, 2),
            (2, 9, 16, 5, 1, 1, 0, 0, 0, 0, 2, 2),
            (3, 20, 13, 6, 5, 5, 2, 2, 2, 2, 3, 2),
            (1, 2, 1, 3, 3, 3, 1, 1, 1, 1, 3, 3),
            (2, 10, 21, 7, 3, 3, 1, 1, 1, 1, 1, 2),
        ];
        for (i, &(c, h, w, m, kh, kw, pt, pb, pl, pr, sh, sw)) in cases.iter().enumerate() {
            let x = values(c * h * w, 0.41 + i as f32 * 0.01);
            let wt = values(m * c * kh * kw, 0.53);
            let bias = values(m, 1.3);
            let packed = Packed::new(&wt, m, c * kh * kw);
            let (oh, ow) = ((h + pt + pb - kh) / sh + 1, (w + pl + pr - kw) / sw + 1);
            for act in [Activation::Identity, Activation::Relu, Activation::Relu6] {
                let job = Conv { x: &x, mask: None, c, h, w, kh, kw, pt, pl, sh, sw, oh, ow };
                let want = naive(&wt, m, &bias, act, &job);
                for got in both_kernels(|| conv(&packed, Some(&bias), act, &job)) {
                    assert_eq!(got.len(), want.len(), "case {i}");
                    for (k, (g, e)) in got.iter().zip(&want).enumerate() {
                        assert!((g - e).abs() < 1e-4 * (1.0 + e.abs()), "case {i} {act:?}: [{k}] {g} vs {e}");
                    }
                }
            }
        }
    }

    #[test]
    fn nan_passes_the_activations_as_the_scalar_code_does() {
        if !available() {
            return;
        }
        let x = [f32::NAN, 1.0, -2.0, 7.0];
        let packed = Packed::new(&[1.0], 1, 1);
        let job = Conv { x: &x, mask: None, c: 1, h: 1, w: 4, kh: 1, kw: 1, pt: 0, pl: 0, sh: 1, sw: 1, oh: 1, ow: 4 };
        for act in [Activation::Identity, Activation::Relu, Activation::Relu6] {
            let want: Vec<f32> = x.iter().map(|v| act.apply(*v)).collect();
            for got in both_kernels(|| conv(&packed, None, act, &job)) {
                assert_eq!(format!("{got:?}"), format!("{want:?}"), "{act:?}");
            }
        }
    }

    #[test]
    #[ignore]
    fn igemm_speed() {
        if !available() {
            return;
        }
        // InceptionV3 at 512x512: mixed 3x3 and 1x1 layers, a stem 3x3.
        // (c, size, m, kh, kw): 3x3, 1x1, 5x5, 1x7 and 7x1 layers of the mixed blocks.
        for (c, h, m, kh, kw) in [
            (64, 61, 96, 3, 3),
            (96, 61, 96, 3, 3),
            (288, 61, 64, 1, 1),
            (128, 30, 192, 1, 1),
            (768, 30, 192, 1, 1),
            (32, 254, 64, 3, 3),
            (48, 61, 64, 5, 5),
            (128, 30, 128, 1, 7),
            (128, 30, 192, 7, 1),
            (160, 30, 160, 1, 7),
        ] {
            let x: Vec<f32> = (0..c * h * h).map(|i| (i as f32 * 0.37).sin()).collect();
            let wt: Vec<f32> = (0..m * c * kh * kw).map(|i| (i as f32 * 0.11).cos()).collect();
            let packed = Packed::new(&wt, m, c * kh * kw);
            let (pt, pl) = (kh / 2, kw / 2);
            let job = Conv { x: &x, mask: None, c, h, w: h, kh, kw, pt, pl, sh: 1, sw: 1, oh: h, ow: h };
            // Warm (the same layer again and again) and cold (after 64 MB of other writes, as
            // in a network, where each layer's input was written by the layers before).
            let mut flush = vec![0.0f32; 16 << 20];
            let (mut warm, mut cold) = (f64::MAX, f64::MAX);
            for i in 0..20 {
                if i % 2 == 1 {
                    flush.iter_mut().for_each(|v| *v += 1.0);
                }
                let t = std::time::Instant::now();
                let _ = conv(&packed, None, Activation::Relu, &job);
                let dt = t.elapsed().as_secs_f64();
                if i % 2 == 1 { cold = cold.min(dt) } else { warm = warm.min(dt) }
            }
            let flops = 2.0 * (m * c * kh * kw * h * h) as f64;
            println!(
                "c{c} {h}x{h} -> {m} {kh}x{kw}: {:.1} GFLOP/s warm, {:.1} cold",
                flops / warm / 1e9,
                flops / cold / 1e9
            );
        }
    }
}

#[cfg(test)]
mod kernel_speed {
    use super::*;
    #[test]
    #[ignore]
    fn kernel_from_l1() {
        if !available() {
            return;
        }
        let src = vec![0.5f32; 4096];
        let a = vec![0.25f32; KC * MR];
        for (name, offsets) in
            [("same row", vec![0usize; KC]), ("rows 1 KB apart", (0..KC).map(|k| (k % 3) * 256 + k % 2).collect())]
        {
            let g = Grid { src: src.as_ptr(), wp: 1 << 20, grid: 1 << 20, oh: 1, ow: 1 << 20 };
            let mut partial = vec![0.0f32; MR * NR];
            let reps = 20000;
            let t = std::time::Instant::now();
            for _ in 0..reps {
                // SAFETY: every read is inside `src`.
                unsafe {
                    if isa() == Some(Isa::Avx512) {
                        tile(&a, &offsets, &g, 0, From::Partial, To::Partial, &mut partial, None)
                    } else {
                        tile_avx2(&a, &offsets, &g, 0, From::Partial, To::Partial, MR, &mut partial, None)
                    }
                };
            }
            let dt = t.elapsed().as_secs_f64();
            let nr = isa().unwrap().nr();
            println!("{name}: {:.1} GFLOP/s", (2 * MR * nr * KC * reps) as f64 / dt / 1e9);
        }
    }
}
