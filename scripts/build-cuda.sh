#!/usr/bin/env bash
# Builds the `cuda` feature on a machine without a GPU (recipe: ../shared/cuda/README.md):
# CUDA 13.0 toolchain and libraries from PyPI into /opt/cu130, libcuda.so from Debian's
# non-free libcuda1 to link against, then cargo with CUDA_COMPUTE_CAP=80 (PTX the H100's
# 580 driver accepts). The binary then runs on a GPU machine with the CUDA 13 libraries of its
# PyTorch install on LD_LIBRARY_PATH.
# Usage: scripts/build-cuda.sh [--check]    (--check: cargo check only, no linking)
set -euo pipefail
cd "$(dirname "$0")/.."
C=/opt/cu130/nvidia/cu13
if [ ! -x "$C/bin/nvcc" ]; then
    python3 -m pip install -q --target /opt/cu130 nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 \
        nvidia-cublas==13.0.2.14 "nvidia-curand<10.4.1" nvidia-cuda-nvrtc==13.0.88 \
        nvidia-cuda-crt==13.0.88 "nvidia-cuda-cccl==13.0.*" "nvidia-nvvm==13.0.*"
fi
(cd "$C/lib" && for f in libcublas libcublasLt libcudart libcurand libnvrtc; do
    [ -e "$f.so" ] || ln -sf "$(ls $f.so.* | head -1)" "$f.so"; done)
[ -e "$C/lib64" ] || ln -s "$C/lib" "$C/lib64"
export PATH="$C/bin:$PATH" CUDA_PATH="$C" CUDA_ROOT="$C" CUDA_COMPUTE_CAP=80
if [ "${1:-}" = "--check" ]; then
    exec cargo check --features cuda
fi
if [ ! -e "$C/lib/libcuda.so" ]; then
    if ! dpkg -s libcuda1 >/dev/null 2>&1; then
        echo "deb http://deb.debian.org/debian bookworm contrib non-free non-free-firmware" > /etc/apt/sources.list.d/deepdream-nonfree.list
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libcuda1
    fi
    ln -sf /lib/x86_64-linux-gnu/libcuda.so.1 "$C/lib/libcuda.so"
fi
exec cargo build --release --features cuda
