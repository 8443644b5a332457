//! Row-major single-precision matrix product: the system OpenBLAS's `cblas_sgemm` with the
//! `openblas` feature (the default; about 1.5x faster than the alternative on AVX2 machines,
//! see README's speed section), else the `gemm` crate (the one candle uses).

#[cfg(not(feature = "openblas"))]
use gemm::Parallelism;
#[cfg(feature = "openblas")]
use rayon::prelude::*;

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
    let ldb = if tb == Trans::No { n } else { k };
    product(m, n, k, a, ta, b, tb, ldb, c, n, accumulate);
}

/// `c[m, n] (+)= a[m, k] * b[k, n]` where `b`'s rows are `ldb` floats apart and `c`'s `ldc`:
/// a product into (or from) a block of columns of a wider matrix.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_ld(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    product(m, n, k, a, Trans::No, b, Trans::No, ldb, c, ldc, accumulate);
}

/// Both products: checks the operands' extents, handles empty shapes, then runs the backend.
#[allow(clippy::too_many_arguments)]
fn product(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    ta: Trans,
    b: &[f32],
    tb: Trans,
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    // Floats a matrix of `rows` rows `ld` apart, `width` used in each, reaches.
    let span = |rows: usize, ld: usize, width: usize| if rows == 0 { 0 } else { (rows - 1) * ld + width };
    let (b_rows, b_width) = if tb == Trans::No { (k, n) } else { (n, k) };
    assert!(ldb >= b_width && ldc >= n, "sgemm: leading dimension below the width");
    assert!(
        a.len() >= m * k && b.len() >= span(b_rows, ldb, b_width) && c.len() >= span(m, ldc, n),
        "sgemm: operand too small"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            (0..m).for_each(|i| c[i * ldc..i * ldc + n].fill(0.0));
        }
        return;
    }
    #[cfg(feature = "openblas")]
    {
        openblas_sgemm(m, n, k, a, ta, b, tb, ldb, c, ldc, accumulate);
    }
    #[cfg(not(feature = "openblas"))]
    {
        crate_sgemm(m, n, k, a, ta, b, tb, ldb, c, ldc, accumulate);
    }
}

#[cfg(feature = "openblas")]
mod cblas {
    pub const ROW_MAJOR: i32 = 101;
    pub const NO_TRANS: i32 = 111;
    pub const TRANS: i32 = 112;
    unsafe extern "C" {
        #[allow(clippy::too_many_arguments)]
        pub fn cblas_sgemm(
            layout: i32,
            ta: i32,
            tb: i32,
            m: i32,
            n: i32,
            k: i32,
            alpha: f32,
            a: *const f32,
            lda: i32,
            b: *const f32,
            ldb: i32,
            beta: f32,
            c: *mut f32,
            ldc: i32,
        );
        pub fn openblas_set_num_threads(n: i32);
    }
}

/// The OpenBLAS kernels this CPU should get, by the instructions it has; `None` below AVX.
#[cfg(all(feature = "openblas", target_arch = "x86_64"))]
fn openblas_core_for_cpu() -> Option<&'static str> {
    use std::arch::is_x86_feature_detected as has;
    if has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512dq") && has!("avx512cd") {
        Some("SkylakeX")
    } else if has!("avx2") && has!("fma") {
        Some("Haswell")
    } else if has!("avx") {
        Some("Sandybridge")
    } else {
        None
    }
}

/// Runtime-dispatching OpenBLAS builds (Debian's, Ubuntu's, Fedora's) pick their kernels by the
/// CPU's model number, and on a model newer than the library knows they fall back to the generic
/// SSE3 "Prescott" kernels: on an Emerald Rapids Xeon (model 207) Debian 12's OpenBLAS 0.3.21
/// ran InceptionV3's 512x512 dream step in 1210 ms instead of 423 ms with its AVX-512 kernels.
/// When the library says Prescott and the CPU has AVX or better, this selects the kernels the
/// CPU's instructions allow, through the library's own `OPENBLAS_CORETYPE` path: the variable is
/// set, `gotoblas_dynamic_quit` forgets the choice and `gotoblas_dynamic_init` makes it again.
/// A user's own `OPENBLAS_CORETYPE` is left alone, and a build without runtime dispatch (no
/// `gotoblas_dynamic_init` symbol) is used as it is.
///
/// # Safety
/// As `prepare_before_threads`: no other thread may read the environment meanwhile.
#[cfg(feature = "openblas")]
unsafe fn fit_openblas_to_cpu() {
    #[cfg(target_arch = "x86_64")]
    {
        if std::env::var_os("OPENBLAS_CORETYPE").is_some() || openblas_corename().as_deref() != Some("Prescott") {
            return;
        }
        let (Some(quit), Some(init)) =
            (openblas_symbol(c"gotoblas_dynamic_quit"), openblas_symbol(c"gotoblas_dynamic_init"))
        else {
            return;
        };
        // SAFETY: OpenBLAS's exported `void gotoblas_dynamic_{quit,init}(void)`, found by name.
        let (quit, init) = unsafe {
            (
                std::mem::transmute::<*mut libc::c_void, extern "C" fn()>(quit),
                std::mem::transmute::<*mut libc::c_void, extern "C" fn()>(init),
            )
        };
        let Some(core) = openblas_core_for_cpu() else { return };
        // SAFETY: the caller's promise that nothing else reads the environment meanwhile
        // (OpenBLAS's own worker threads, started when the library loaded, are idle). The
        // variable is read by `gotoblas_dynamic_init` alone and removed right after it.
        unsafe {
            std::env::set_var("OPENBLAS_CORETYPE", core);
            quit();
            init();
            std::env::remove_var("OPENBLAS_CORETYPE");
        }
    }
}

/// What multiplies the matrices, for `bench`: "OpenBLAS SkylakeX kernels" or "the gemm crate".
pub fn backend() -> String {
    #[cfg(feature = "openblas")]
    {
        match openblas_corename() {
            Some(name) => format!("OpenBLAS {name} kernels"),
            None => "OpenBLAS".into(),
        }
    }
    #[cfg(not(feature = "openblas"))]
    {
        "the gemm crate".into()
    }
}

/// An OpenBLAS function by name, if the loaded library exports it (the runtime-dispatch ones
/// exist only in builds with several kernel sets).
#[cfg(feature = "openblas")]
fn openblas_symbol(name: &std::ffi::CStr) -> Option<*mut libc::c_void> {
    // SAFETY: dlsym with RTLD_DEFAULT only looks a name up among the loaded objects.
    let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    (!p.is_null()).then_some(p)
}

/// The name of the kernels OpenBLAS runs ("SkylakeX", "Prescott", ...), where it says.
#[cfg(feature = "openblas")]
fn openblas_corename() -> Option<String> {
    let p = openblas_symbol(c"gotoblas_corename")?;
    // SAFETY: OpenBLAS's exported `char *gotoblas_corename(void)`, which returns a static
    // NUL-terminated name.
    let name = unsafe {
        let corename = std::mem::transmute::<*mut libc::c_void, extern "C" fn() -> *const std::ffi::c_char>(p);
        let name = corename();
        (!name.is_null()).then(|| std::ffi::CStr::from_ptr(name))
    }?;
    Some(name.to_string_lossy().into_owned())
}

/// Fits OpenBLAS's kernels to this CPU (see `fit_openblas_to_cpu`) and sets the products up.
///
/// # Safety
/// Call before any other thread of the process runs code that may read the environment: it
/// sets and removes a variable, which C code (`getenv`) reading at the same time may see
/// torn. `main` calls it first thing. Without this call OpenBLAS keeps the kernels it chose.
pub unsafe fn prepare_before_threads() {
    #[cfg(feature = "openblas")]
    {
        // SAFETY: the caller's promise.
        unsafe { fit_openblas_to_cpu() };
    }
    prepare();
}

/// Sets the matrix products up once: with OpenBLAS, one thread per call. The first product
/// calls it.
pub fn prepare() {
    #[cfg(feature = "openblas")]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        // SAFETY: plain setter in OpenBLAS.
        ONCE.call_once(|| unsafe { cblas::openblas_set_num_threads(1) });
    }
}

/// OpenBLAS runs single-threaded and the columns of `c` are split across rayon's threads instead:
/// OpenBLAS's own threads busy-wait with `sched_yield` between calls and fight rayon's for the
/// cores (11% of a dream step went to the scheduler that way).
#[cfg(feature = "openblas")]
#[allow(clippy::too_many_arguments)]
fn openblas_sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    ta: Trans,
    b: &[f32],
    tb: Trans,
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    prepare();
    let dim = |v: usize| i32::try_from(v.max(1)).expect("sgemm: matrix dimension over 2^31");
    let (cta, lda) = match ta {
        Trans::No => (cblas::NO_TRANS, k),
        Trans::Yes => (cblas::TRANS, m),
    };
    let ctb = match tb {
        Trans::No => cblas::NO_TRANS,
        Trans::Yes => cblas::TRANS,
    };
    let beta = if accumulate { 1.0 } else { 0.0 };
    let (a_ptr, b_ptr, c_ptr) = (a.as_ptr() as usize, b.as_ptr() as usize, c.as_mut_ptr() as usize);
    // Columns j0..j1 of c from columns j0..j1 of op(b): where they start in b's storage.
    let block = |j0: usize, j1: usize| {
        let b_off = match tb {
            Trans::No => j0,
            Trans::Yes => j0 * ldb,
        };
        // SAFETY: the asserts in `product` guarantee a, b and c reach every element their
        // shapes and leading dimensions address; the block reads columns j0..j1 of op(b) and
        // writes only columns j0..j1 of c, so blocks running at once never write the same
        // element, and `c` is borrowed mutably by the caller so nothing else aliases it.
        unsafe {
            cblas::cblas_sgemm(
                cblas::ROW_MAJOR,
                cta,
                ctb,
                dim(m),
                dim(j1 - j0),
                dim(k),
                1.0,
                a_ptr as *const f32,
                dim(lda),
                (b_ptr as *const f32).add(b_off),
                dim(ldb),
                beta,
                (c_ptr as *mut f32).add(j0),
                dim(ldc),
            )
        }
    };
    let threads = rayon::current_num_threads();
    // Below about 2 MFLOP a block is not worth a thread; keep blocks at least 64 columns wide.
    let blocks = threads.min(m * n * k / (1 << 20)).min(n / 64).max(1);
    if blocks == 1 {
        block(0, n);
        return;
    }
    // Multiples of 16 columns keep each block's stores aligned to the micro-kernel's width.
    let width = n.div_ceil(blocks).div_ceil(16) * 16;
    (0..n.div_ceil(width)).into_par_iter().for_each(|i| block(i * width, ((i + 1) * width).min(n)));
}

#[cfg(not(feature = "openblas"))]
#[allow(clippy::too_many_arguments)]
fn crate_sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    ta: Trans,
    b: &[f32],
    tb: Trans,
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    let (a_rs, a_cs) = match ta {
        Trans::No => (k as isize, 1),
        Trans::Yes => (1, m as isize),
    };
    let (b_rs, b_cs) = match tb {
        Trans::No => (ldb as isize, 1),
        Trans::Yes => (1, ldb as isize),
    };
    let threads = rayon::current_num_threads();
    // Small products are faster on one thread than split across many.
    let parallelism =
        if threads > 1 && m * n * k > 64 * 64 * 64 { Parallelism::Rayon(threads) } else { Parallelism::None };
    // SAFETY: the asserts in `product` guarantee every index the strides reach is inside the slices,
    // and `c` is borrowed mutably so it cannot alias `a` or `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
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
        // The second size is large enough to be split into column blocks across threads.
        for (m, n, k) in [(7, 5, 3), (33, 1001, 70)] {
            check(m, n, k);
        }
    }

    #[test]
    fn strided_block_matches_the_whole_product() {
        // Columns 40..140 of a 9 x 300 product, computed alone from the same columns of b.
        let (m, n, k) = (9, 300, 50);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
        let want = naive(m, n, k, &a, Trans::No, &b, Trans::No);
        let mut c = vec![2.0f32; m * n];
        sgemm_ld(m, 100, k, &a, &b[40..], n, &mut c[40..], n, true);
        for i in 0..m {
            for j in 0..n {
                let expect = if (40..140).contains(&j) { 2.0 + want[i * n + j] } else { 2.0 };
                assert!((c[i * n + j] - expect).abs() < 1e-4 * (1.0 + expect.abs()), "({i}, {j})");
            }
        }
    }

    fn check(m: usize, n: usize, k: usize) {
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
        for ta in [Trans::No, Trans::Yes] {
            for tb in [Trans::No, Trans::Yes] {
                let mut c = vec![1.0; m * n];
                sgemm(m, n, k, &a, ta, &b, tb, &mut c, true);
                let want = naive(m, n, k, &a, ta, &b, tb);
                for (x, y) in c.iter().zip(&want) {
                    assert!((x - 1.0 - y).abs() < 1e-4 * (1.0 + y.abs()), "{m}x{n}x{k} {ta:?} {tb:?}");
                }
            }
        }
    }
}

#[cfg(test)]
mod speed {
    use super::*;
    #[test]
    #[ignore]
    fn gemm_speed() {
        for (m, n, k) in [(192, 15376, 720), (64, 3721, 288), (720, 15376, 192), (32, 64009, 288), (96, 3721, 576)] {
            let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
            let mut c = vec![0.0; m * n];
            sgemm(m, n, k, &a, Trans::No, &b, Trans::No, &mut c, false);
            let t = std::time::Instant::now();
            for _ in 0..5 {
                sgemm(m, n, k, &a, Trans::No, &b, Trans::No, &mut c, false);
            }
            let dt = t.elapsed().as_secs_f64() / 5.0;
            println!("{m} {n} {k}: {:.1} GFLOP/s", 2.0 * (m * n * k) as f64 / dt / 1e9);
        }
    }
}
