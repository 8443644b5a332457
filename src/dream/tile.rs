//! Tiled gradients: a large image's gradient computed window by window, so memory stays bounded
//! whatever the frame size (a 1920x1080 frame dreams within 4 GB).
//!
//! The image is cut into a grid of cores of at most `tile` pixels a side; each window is its
//! core grown by `margin` pixels on the sides that face a neighbour, so the network sees context
//! across the cut. Across each cut the two windows' gradients are cross-faded with linear ramps
//! `2 * margin` wide whose weights sum to one, so no seam can show: every pixel's gradient is a
//! convex blend of windows that saw at least `margin` pixels around it, and the jitter roll moves
//! the cuts over the picture from step to step.
//!
//! Each window's loss is normalised by its own size, so its gradient is scaled by the window's
//! share of the image and its loss by its core's share: the sums then approximate the whole
//! image's loss and gradient (exactly so for the classic layer objective, away from the cuts).

use super::objective::{Objective, Prepared};
use crate::model::FeatureNet;
use crate::{Error, Result};
use candle_core::Tensor;
use std::borrow::Cow;
use std::ops::Range;

/// Default largest core side: images up to 1024x1024 are dreamt whole.
pub const DEFAULT_TILE: usize = 1024;

/// How a large image is cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Tiling {
    /// Largest core side in pixels (0: never tile).
    pub tile: usize,
    /// Context added on each side that faces a neighbouring tile.
    pub margin: usize,
}

impl Default for Tiling {
    fn default() -> Self {
        Tiling { tile: DEFAULT_TILE, margin: DEFAULT_TILE / 8 }
    }
}

impl Tiling {
    /// One that never tiles.
    pub fn off() -> Self {
        Tiling { tile: 0, margin: 0 }
    }

    /// `tile` with the default margin for it (an eighth of the tile).
    pub fn with_tile(tile: usize) -> Self {
        Tiling { tile, margin: tile / 8 }
    }
}

/// One axis of the grid: each window's range and its blending weight at every position in it.
#[derive(Clone, Debug)]
struct Span {
    range: Range<usize>,
    weights: Vec<f32>,
}

/// Windows start on multiples of this many pixels and end at the same remainder as the image,
/// so every stride-2 layer of the network (32 is the deepest total stride in the zoo) samples
/// the same pixel lattice as on the whole image, and TensorFlow "SAME" padding (which depends
/// on the length's parity) pads the same way; otherwise each tile's gradient comes out shifted
/// by a pixel against its neighbour's.
const ALIGN: usize = 32;

/// Cuts `len` into cores of at most `tile` and windows around them.
fn spans(len: usize, t: Tiling) -> Vec<Span> {
    let n = if t.tile == 0 { 1 } else { len.div_ceil(t.tile).max(1) };
    if n == 1 {
        return vec![Span { range: 0..len, weights: vec![1.0; len] }];
    }
    // Cores are at least tile/2 long (n = ceil(len / tile)), and the margin at most tile/4, so
    // the two ramps of one window never overlap.
    let cut = |k: usize| (k * len + n / 2) / n;
    let m = t.margin.min(cut(1) / 2);
    (0..n)
        .map(|k| {
            let lo = if k == 0 { 0 } else { (cut(k) - m) / ALIGN * ALIGN };
            let hi = if k == n - 1 {
                len
            } else {
                let end = cut(k + 1) + m;
                let at = len % ALIGN;
                (end + (at + ALIGN - end % ALIGN) % ALIGN).min(len)
            };
            let weights = (lo..hi)
                .map(|p| {
                    let mut wt = 1.0f32;
                    if m > 0 && k > 0 {
                        wt *= (((p + m) as f32 - cut(k) as f32 + 0.5) / (2 * m) as f32).clamp(0.0, 1.0);
                    }
                    if m > 0 && k < n - 1 {
                        wt *= (((cut(k + 1) + m) as f32 - p as f32 - 0.5) / (2 * m) as f32).clamp(0.0, 1.0);
                    }
                    wt
                })
                .collect();
            Span { range: lo..hi, weights }
        })
        .collect()
}

/// The windows of one octave, with the targets each needs, reused for every step.
pub struct Tiler {
    h: usize,
    w: usize,
    /// The targets all windows share, with the positional images uncut (for rolled targets).
    shared: Prepared,
    windows: Vec<Window>,
}

struct Window {
    rows: Span,
    cols: Span,
    prepared: Prepared,
    /// With more than one window: the gradient's blending weights times the window's share of
    /// the image, `[1, 1, rows, cols]`, on the image's device (uploaded once per octave).
    weight: Option<Tensor>,
    /// The loss's factor: the core's share of the image.
    loss_share: f64,
}

impl Tiler {
    /// Plans the windows for an `h x w` octave whose (network-input) image is `base`.
    pub fn new(objective: &Objective, net: &dyn FeatureNet, base: &Tensor, tiling: Tiling) -> Result<Self> {
        let (_, _, h, w) = base.dims4()?;
        let shared = objective.prepare_shared(net, base)?;
        let mut windows = Vec::new();
        let (row_spans, col_spans) = (spans(h, tiling), spans(w, tiling));
        let several = row_spans.len() * col_spans.len() > 1;
        let area = (h * w) as f64;
        for rows in &row_spans {
            for cols in &col_spans {
                let mut prepared = shared.window(objective, net, rows.range.clone(), cols.range.clone())?;
                prepared.set_inner_sides([
                    rows.range.start > 0,
                    rows.range.end < h,
                    cols.range.start > 0,
                    cols.range.end < w,
                ]);
                let (r, c) = (rows.range.len(), cols.range.len());
                let share = (r * c) as f64 / area;
                let weight = several
                    .then(|| {
                        let v = (rows.weights.iter())
                            .flat_map(|&a| cols.weights.iter().map(move |&b| (a as f64 * b as f64 * share) as f32))
                            .collect();
                        crate::ops::host::upload(v, &[1, 1, r, c], base.device())
                    })
                    .transpose()?;
                let core: f64 = rows.weights.iter().map(|&v| v as f64).sum::<f64>()
                    * cols.weights.iter().map(|&v| v as f64).sum::<f64>();
                let cols = cols.clone();
                windows.push(Window { rows: rows.clone(), cols, prepared, weight, loss_share: core / area });
            }
        }
        Ok(Tiler { h, w, shared, windows })
    }

    /// How many windows one step runs.
    pub fn windows(&self) -> usize {
        self.windows.len()
    }

    /// The loss and its gradient for the whole image `x`, window by window. `x` is the octave's
    /// image rolled by `shift` (the jitter): targets compared position by position are taken
    /// from their images rolled alike (a fresh forward pass per window), the others as planned.
    pub fn loss_and_grad(
        &self,
        net: &dyn FeatureNet,
        objective: &Objective,
        x: &Tensor,
        shift: (i32, i32),
    ) -> Result<(Tensor, Tensor)> {
        let (_, _, h, w) = x.dims4()?;
        if (h, w) != (self.h, self.w) {
            return Err(Error::internal(format!("tiler planned for {}x{}, given {w}x{h}", self.w, self.h)));
        }
        let rolled = match shift != (0, 0) && self.shared.is_positional() {
            true => Some(self.shared.rolled(shift.0, shift.1)?),
            false => None,
        };
        fn targets<'w>(
            win: &'w Window,
            rolled: Option<&Prepared>,
            objective: &Objective,
            net: &dyn FeatureNet,
        ) -> Result<Cow<'w, Prepared>> {
            Ok(match rolled {
                Some(r) => Cow::Owned(r.window(objective, net, win.rows.range.clone(), win.cols.range.clone())?),
                None => Cow::Borrowed(&win.prepared),
            })
        }
        let targets = |win| targets(win, rolled.as_ref(), objective, net);
        if let [only] = self.windows.as_slice() {
            return objective.loss_and_grad(net, x, &*targets(only)?);
        }
        // Sums kept on the device: no value comes back to the host per window.
        let (mut loss, mut grad) = (None::<Tensor>, None::<Tensor>);
        for win in &self.windows {
            let (r, c) = (&win.rows.range, &win.cols.range);
            let crop = x.narrow(2, r.start, r.len())?.narrow(3, c.start, c.len())?.contiguous()?;
            let (l, g) = objective.loss_and_grad(net, &crop, &*targets(win)?)?;
            let l = l.affine(win.loss_share, 0.0)?;
            loss = Some(match loss {
                Some(acc) => (acc + l)?,
                None => l,
            });
            let weight = win.weight.as_ref().ok_or_else(|| Error::internal("a tile window without weights"))?;
            let weighted = g.broadcast_mul(weight)?;
            let placed = weighted.pad_with_zeros(2, r.start, h - r.end)?.pad_with_zeros(3, c.start, w - c.end)?;
            grad = Some(match grad {
                Some(acc) => (acc + placed)?,
                None => placed,
            });
        }
        Ok((loss.expect("at least one window"), grad.expect("at least one window")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_everywhere() {
        for (len, tile, margin) in [(1080, 1024, 128), (1920, 512, 64), (1000, 300, 40), (700, 700, 87), (129, 64, 16)]
        {
            let spans = spans(len, Tiling { tile, margin });
            let mut sum = vec![0.0f32; len];
            for s in &spans {
                assert_eq!(s.weights.len(), s.range.len());
                assert!(
                    s.range.len() <= tile + 2 * margin + 2 * ALIGN || spans.len() == 1,
                    "{len} {tile}: {:?}",
                    s.range
                );
                assert!(
                    s.range.start % ALIGN == 0 && s.range.len() % ALIGN == len % ALIGN,
                    "{len} {tile}: {:?}",
                    s.range
                );
                for (p, &wt) in s.range.clone().zip(&s.weights) {
                    sum[p] += wt;
                }
            }
            if let Some(p) = sum.iter().position(|v| (v - 1.0).abs() >= 1e-6) {
                panic!(
                    "{len} {tile} {margin}: sum {} at {p}; {:?}",
                    sum[p],
                    spans.iter().map(|s| s.range.clone()).collect::<Vec<_>>()
                );
            }
            assert_eq!(spans.len(), len.div_ceil(tile));
        }
    }

    #[test]
    fn small_images_are_one_window() {
        let s = spans(480, Tiling::default());
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].range, 0..480);
        assert_eq!(spans(5000, Tiling::off()).len(), 1);
    }
}
