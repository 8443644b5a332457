#!/usr/bin/env bash
# Installs what building deepdream needs on a bare Debian machine. Idempotent: installs only
# what is missing. Called by scripts/demo.sh, scripts/test.sh and .ci/run.
set -euo pipefail

# System packages the build needs: a C compiler, and for the video pipeline (the default
# `video` feature) ffmpeg's development libraries, pkg-config and libclang (bindgen); for the
# default `openblas` feature, OpenBLAS (the convolutions' matrix products).
PACKAGES=(gcc pkg-config clang libclang-dev libopenblas-dev libavcodec-dev libavformat-dev libavutil-dev
          libswscale-dev libswresample-dev libavfilter-dev libavdevice-dev)

# With --farm (scripts/test.sh passes it), the render-farm engines its tests run: Slurm
# (slurmctld, slurmd, munge) for a one-node cluster, and GNU parallel.
if [ "${1:-}" = "--farm" ]; then
    PACKAGES+=(slurmctld slurmd slurm-client munge parallel)
fi

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || { echo "setup: cargo not found; install Rust from https://rustup.rs" >&2; exit 1; }
