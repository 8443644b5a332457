// Links the system OpenBLAS when the `openblas` feature is on (see src/ops/gemm.rs), and with
// the `cuda` feature compiles src/ops/kernels.cu to PTX with nvcc (as candle-kernels does), for
// the compute capability in CUDA_COMPUTE_CAP (default 80), into OUT_DIR/kernels.ptx.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_OPENBLAS").is_some() {
        println!("cargo:rustc-link-lib=openblas");
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        println!("cargo:rerun-if-changed=src/ops/kernels.cu");
        println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
        let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".into());
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("kernels.ptx");
        let nvcc = std::env::var_os("CUDA_PATH")
            .map(|p| std::path::PathBuf::from(p).join("bin/nvcc"))
            .filter(|p| p.exists())
            .unwrap_or_else(|| "nvcc".into());
        let status = std::process::Command::new(&nvcc)
            .args(["--ptx", "-O3", &format!("-arch=compute_{cap}"), "src/ops/kernels.cu", "-o"])
            .arg(&out)
            .status()
            .unwrap_or_else(|e| panic!("cannot run {}: {e} (scripts/build-cuda.sh sets up CUDA)", nvcc.display()));
        assert!(status.success(), "nvcc failed on src/ops/kernels.cu");
    }
}
