#!/usr/bin/env bash
# How the CPU step scales with cores (issue 18, item 4), ours and PyTorch's side by side:
# `deepdream bench --device cpu` with RAYON_NUM_THREADS=N, and scripts/torch_gpu_peer.py
# `steps --device cpu` with torch.set_num_threads(N), the same architectures and sizes (formula
# weights for our InceptionV3, random weights for the peer's: speed does not depend on them).
# Prints one line a figure:
#
#   cpu MODEL-NAME, N cores, ISA flags
#   ours ARCH WxH threads N step MS ms
#   peer ARCH WxH cpu threads N step MS ms
#
# Usage: scripts/cpu-scaling.sh [BINARY] [THREADS] [SIZES]
#   BINARY   default target/release/deepdream
#   THREADS  comma-separated thread counts, default 1,2 and every doubling up to the core count
#   SIZES    comma-separated WxH, default 512x512
# The peer runs when `python3 -c "import torch, timm, torchvision"` works (PYTHON overrides python3).
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/deepdream}
cores=$(nproc)
if [ -n "${2:-}" ]; then
    threads=$2
else
    threads=1 n=2
    while [ $n -le "$cores" ]; do threads=$threads,$n; n=$((n * 2)); done
    [ $((n / 2)) -eq "$cores" ] || threads=$threads,$cores
fi
sizes=${3:-512x512}
PY=${PYTHON:-python3}
export DEEPDREAM_MODELS=${DEEPDREAM_MODELS:-$PWD/models}

model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)
isa=$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -xE 'avx2|avx512f|avx512_bf16|amx_bf16|fma' | xargs)
echo "cpu $model, $cores cores, $isa"

for size in ${sizes//,/ }; do
    for n in ${threads//,/ }; do
        for arch in lite0 inception; do
            if [ $arch = lite0 ]; then args=(); else args=(--model inception-v3 --formula-weights); fi
            ms=$(RAYON_NUM_THREADS=$n OPENBLAS_NUM_THREADS=1 timeout 300 "$BIN" bench --device cpu \
                "${args[@]}" --size "$size" --steps 5 2>&1 | awk '$1 == "step" {print $2; exit}')
            echo "ours $arch $size threads $n step ${ms:-FAILED} ms"
        done
    done
done
if "$PY" -c "import torch, timm, torchvision" 2>/dev/null; then
    timeout 900 "$PY" scripts/torch_gpu_peer.py steps --device cpu --threads "$threads" \
        --sizes "$sizes" --archs lite0,inception --steps 5
else
    echo "peer skipped: $PY cannot import torch, timm and torchvision"
fi
