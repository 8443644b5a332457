//! Row-major single-precision matrix product on top of the `gemm` crate (the one candle uses).

use gemm::Parallelism;

/// How a matrix operand is stored: as given (`rows x cols`, row-major) or transposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trans {
    No,
    Yes,
}

/// `c[m, n] = a[m, k] * b[k, n]`, or `c += ...` when `accumulate`.
/// With `Trans::Yes` the operand is stored as its transpose (`a` as `[k, m]`, `b` as `[n, k]`).
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    ta: Trans,
    b: &[f32],
    tb: Trans,
    c: &mut [f32],
    accumulate: bool,
) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n, "sgemm: operand too small");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(0.0);
        }
        return;
    }
    let (a_rs, a_cs) = match ta {
        Trans::No => (k as isize, 1),
        Trans::Yes => (1, m as isize),
    };
    let (b_rs, b_cs) = match tb {
        Trans::No => (n as isize, 1),
        Trans::Yes => (1, k as isize),
    };
    let threads = rayon::current_num_threads();
    // Small products are faster on one thread than split across many.
    let parallelism = if threads > 1 && m * n * k > 64 * 64 * 64 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: the asserts above guarantee every index the strides reach is inside the slices,
    // and `c` is borrowed mutably so it cannot alias `a` or `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: &[f32], ta: Trans, b: &[f32], tb: Trans) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    let av = if ta == Trans::No { a[i * k + p] } else { a[p * m + i] };
                    let bv = if tb == Trans::No { b[p * n + j] } else { b[j * k + p] };
                    c[i * n + j] += av * bv;
                }
            }
        }
        c
    }

    #[test]
    fn matches_naive_in_every_transpose() {
        let (m, n, k) = (7, 5, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
        for ta in [Trans::No, Trans::Yes] {
            for tb in [Trans::No, Trans::Yes] {
                let mut c = vec![1.0; m * n];
                sgemm(m, n, k, &a, ta, &b, tb, &mut c, true);
                let want = naive(m, n, k, &a, ta, &b, tb);
                for (x, y) in c.iter().zip(&want) {
                    assert!((x - 1.0 - y).abs() < 1e-5, "{ta:?} {tb:?}");
                }
            }
        }
    }
}
