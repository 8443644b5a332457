#!/usr/bin/env bash
# Builds the GPU binary on a machine without a GPU (recipe: ../shared/cuda/README.md):
# CUDA 13.0 toolchain and libraries from PyPI into /opt/cu130, libcuda.so from Debian's
# non-free libcuda1 to link against, then cargo with CUDA_COMPUTE_CAP=80 (PTX the H100's
# 580 driver accepts).
#
# The binary is self-contained for a bare GPU machine: no ffmpeg (zoom and video write PNG frame
# directories), no OpenBLAS (the CPU path uses the gemm crate), no debug info, stripped; its only
# shared libraries are libc's and CUDA's (libcuda, libcudart, libcublas, libcublasLt, libcurand,
# and libcudnn with --cudnn). On the GPU machine, put the CUDA 13 libraries of its PyTorch install
# on LD_LIBRARY_PATH (scripts/gpu-check.sh does).
#
# Usage: scripts/build-cuda.sh [--check] [--cudnn] [--lean]
#   --check   cargo check only, no linking
#   --cudnn   with candle's cudnn feature (cuDNN 9 for CUDA 13 from the nvidia-cudnn-cu13 wheel)
#   --lean    without the built-in EfficientNet-Lite0 weights (18 MB less; they are then read
#             from $DEEPDREAM_MODELS or the model cache like any other model's)
# Output: dist/deepdream-cuda[-cudnn][-lean], and beside it the same compressed with xz (what
# travels to a GPU machine best: about 26 MB, 17 MB lean).
set -euo pipefail
cd "$(dirname "$0")/.."
check=0 cudnn=0 lean=0
for a in "$@"; do
    case $a in
        --check) check=1 ;;
        --cudnn) cudnn=1 ;;
        --lean) lean=1 ;;
        *) echo "build-cuda.sh: unknown argument '$a' (--check, --cudnn, --lean)" >&2; exit 2 ;;
    esac
done
C=/opt/cu130/nvidia/cu13
if [ ! -x "$C/bin/nvcc" ]; then
    python3 -m pip install -q --target /opt/cu130 nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 \
        nvidia-cublas==13.0.2.14 "nvidia-curand<10.4.1" nvidia-cuda-nvrtc==13.0.88 \
        nvidia-cuda-crt==13.0.88 "nvidia-cuda-cccl==13.0.*" "nvidia-nvvm==13.0.*"
fi
(cd "$C/lib" && for f in libcublas libcublasLt libcudart libcurand libnvrtc; do
    [ -e "$f.so" ] || ln -sf "$(ls $f.so.* | head -1)" "$f.so"; done)
[ -e "$C/lib64" ] || ln -s "$C/lib" "$C/lib64"
features=cuda
if [ $cudnn = 1 ]; then
    if [ ! -e /opt/cudnn13/nvidia/cudnn/include/cudnn.h ]; then
        python3 -m pip install -q --no-deps --target /opt/cudnn13 "nvidia-cudnn-cu13==9.*"
    fi
    D=/opt/cudnn13/nvidia/cudnn
    (cd "$D/lib" && [ -e libcudnn.so ] || ln -sf "$(ls libcudnn.so.* | head -1)" libcudnn.so)
    # cudarc finds cuDNN's headers and library through the CUDA root: link them in.
    for h in "$D"/include/*.h; do [ -e "$C/include/$(basename "$h")" ] || ln -s "$h" "$C/include/"; done
    for l in "$D"/lib/libcudnn*.so*; do [ -e "$C/lib/$(basename "$l")" ] || ln -s "$l" "$C/lib/"; done
    features=cudnn
fi
[ $lean = 1 ] || features=$features,builtin-weights
export PATH="$C/bin:$PATH" CUDA_PATH="$C" CUDA_ROOT="$C" CUDA_COMPUTE_CAP=80
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/cuda}
if [ $check = 1 ]; then
    exec cargo check --no-default-features --features "$features"
fi
if [ ! -e "$C/lib/libcuda.so" ]; then  # -e follows the link: a dangling one is remade
    if ! dpkg -s libcuda1 >/dev/null 2>&1; then
        # deb822, signed like Debian's own entry (a one-line entry without Signed-By conflicts).
        printf '%s\n' "Types: deb" "URIs: http://deb.debian.org/debian" "Suites: bookworm" \
            "Components: contrib non-free non-free-firmware" \
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" \
            >/etc/apt/sources.list.d/deepdream-nonfree.sources
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libcuda1
    fi
    ln -sf /lib/x86_64-linux-gnu/libcuda.so.1 "$C/lib/libcuda.so"
fi
CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols \
    cargo build --release --no-default-features --features "$features"
mkdir -p dist
out=dist/deepdream-cuda
[ $cudnn = 1 ] && out=$out-cudnn
[ $lean = 1 ] && out=$out-lean
cp "$CARGO_TARGET_DIR/release/deepdream" "$out.tmp" && mv "$out.tmp" "$out"
# Only libc's, the C++ runtime's (candle's static CUDA kernels are C++) and CUDA's libraries.
extra=$(ldd "$out" | awk '{print $1}' | grep -vE '^(linux-vdso|/lib64/ld-linux|lib(c|m|dl|rt|pthread|gcc_s|stdc\+\+)\.so|lib(cuda|cudart|cublas|cublasLt|curand|nvrtc|cudnn[a-z_]*)\.so)' || true)
if [ -n "$extra" ]; then
    echo "build-cuda.sh: $out needs libraries a bare GPU machine may lack: $extra" >&2
    exit 1
fi
xz -T0 -6 -c "$out" >"$out.xz.tmp" && mv "$out.xz.tmp" "$out.xz"
echo "$out: $(du -h "$out" | cut -f1), $out.xz: $(du -h "$out.xz" | cut -f1); libraries: $(ldd "$out" | awk '{print $1}' | xargs)"
