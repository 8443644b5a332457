#!/usr/bin/env bash
# The one device check of the CUDA path (issue 15), for a GPU machine with PyTorch (CUDA 13) and
# a copy of this working tree plus dist/deepdream-cuda (scripts/build-cuda.sh). Every step has
# its own timeout and a failed step does not stop the others; the whole script fits in about
# 8 minutes on an H100. Results go to RESULTS (default gpu-results.txt), one line per figure:
#
#   env        nvidia-smi, driver, missing shared libraries
#   kernels    the fused kernels (src/ops/kernels.cu) against their CPU versions
#   correct    short dreams on cuda vs cpu (PSNR in dB; TF32 off), also with knobs flipped
#   ours       `deepdream bench` step time and GPU utilisation, EfficientNet-Lite0 and
#              InceptionV3 (formula weights) at 512x512 and 1920x1080, peak GPU memory
#   knob       the same at 512x512 with each knob of README "GPU" flipped
#   peer       scripts/torch_gpu_peer.py: the same steps in PyTorch eager (fp32 / defaults / bf16)
#   zoom       512px zoom frames per second (--frame-steps 4), ours and the peer's
#
#   second     with a second binary (say, the cudnn build): its correctness, steps and zoom
#
# Usage: [ONLY=correct,steps,peer,zoom,second] scripts/gpu-check.sh [RESULTS] [BINARY] [SECOND-BINARY]
# (ONLY: run those sections alone; the environment and warm-up always run).
# A binary (or its .xz beside it, unpacked first) built by scripts/build-cuda.sh; a --lean one
# reads EfficientNet-Lite0 from models/ here.
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS=$(realpath -m "${1:-gpu-results.txt}")
BIN=$(realpath -m "${2:-dist/deepdream-cuda}")
BIN2=${3:+$(realpath -m "$3")}
for b in "$BIN" ${BIN2:+"$BIN2"}; do
    if [ ! -e "$b" ] && [ -e "$b.xz" ]; then
        python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" "$b.xz" "$b"
    fi
    chmod +x "$b" 2>/dev/null
done
export DEEPDREAM_MODELS=${DEEPDREAM_MODELS:-$PWD/models}
T=$(mktemp -d)
: >"$RESULTS"
start=$(date +%s)
say() { echo "$*" | tee -a "$RESULTS"; }
elapsed() { echo $(($(date +%s) - start)); }
# run SECONDS LOGNAME CMD...: runs with a timeout, keeps its output in $T/LOGNAME.log, says if it failed.
run() {
    local limit=$1 name=$2; shift 2
    timeout "$limit" "$@" >"$T/$name.log" 2>&1
    local rc=$?
    if [ $rc -ne 0 ]; then
        say "FAIL $name rc=$rc ($(elapsed) s): $(tail -3 "$T/$name.log" | tr '\n' ' ' | cut -c1-400)"
    fi
    return $rc
}

# --- environment -----------------------------------------------------------------------------
say "# gpu-check $(date -u +%FT%TZ) on $(hostname)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader | sed 's/^/env gpu /' | tee -a "$RESULTS"
NV=$(python3 -c "import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))" 2>/dev/null)/nvidia
for d in cu13/lib cudnn/lib cublas/lib cuda_runtime/lib curand/lib cuda_nvrtc/lib; do
    [ -d "$NV/$d" ] && LD_LIBRARY_PATH="$NV/$d:${LD_LIBRARY_PATH:-}"
done
export LD_LIBRARY_PATH
say "env torch $(python3 -c 'import torch; print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version())' 2>&1 | tail -1)"
say "env binary $(du -h "$BIN" | cut -f1) $(ldd "$BIN" | awk '{print $1}' | tr '\n' ' ')"
for b in "$BIN" ${BIN2:+"$BIN2"}; do
    missing=$(ldd "$b" | grep 'not found')
    [ -z "$missing" ] || say "FAIL env $(basename "$b") missing libraries: $missing"
done

want() { [ -z "${ONLY:-}" ] || [[ ",$ONLY," == *",$1,"* ]]; }

# GPU utilisation and memory while a command runs: "util MEAN% (max MAX%) mem MAX MiB".
watch_gpu() {
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -lms 100 >"$T/smi.csv" 2>/dev/null &
    echo $!
}
gpu_summary() {
    kill "$1" 2>/dev/null; wait "$1" 2>/dev/null
    awk -F', *' 'NR>1 && $2+0 > 0 {n++; u+=$1; if ($1>mu) mu=$1; if ($2>mm) mm=$2}
        END {if (n) printf "util %.0f%% (max %d%%) mem %d MiB", u/n, mu, mm; else printf "util ?"}' "$T/smi.csv"
}

# --- warm-up: the driver JIT-compiles candle's PTX for this card once (cached after) ----------
run 240 warmup "$BIN" bench --device cuda --size 256x256 --steps 2 &&
    say "warmup ok ($(elapsed) s): $(grep ' step ' "$T/warmup.log" | xargs)"
want steps && run 240 warmup-inception "$BIN" bench --device cuda --model inception-v3 --formula-weights --size 299x299 --steps 2 &&
    say "warmup inception ok ($(elapsed) s)"

# --- correctness: cuda vs cpu on a short dream -------------------------------------------------
psnr() {
    python3 - "$1" "$2" <<'EOF'
import sys, numpy as np
from PIL import Image
a, b = (np.asarray(Image.open(p).convert("RGB"), dtype=np.float64) for p in sys.argv[1:3])
mse = ((a - b) ** 2).mean()
print("inf" if mse == 0 else f"{10 * np.log10(255 ** 2 / mse):.1f}")
EOF
}
if want correct; then
# The fused kernels against their CPU versions, op by op.
run 60 check-kernels "$BIN" check-kernels --device cuda && say "kernels: $(tail -1 "$T/check-kernels.log")"
# Short (2 octaves x 3 steps: on the CPU, cpu-portable vs cpu gives 52 dB) and longer (2 x 8:
# chaotic drift, 33 dB there) dreams.
for steps in 3 8; do
    dream=(dream examples/chelsea.png --octaves 2 --steps "$steps" --seed 1)
    run 120 "dream-cpu-$steps" "$BIN" "${dream[@]}" -o "$T/cpu-$steps.png" --device cpu || continue
    for knobs in "DEEPDREAM_TF32=0" "DEEPDREAM_FUSED=0" "DEEPDREAM_TF32=1"; do
        run 120 "dream-cuda-$steps-$knobs" env "$knobs" "$BIN" "${dream[@]}" -o "$T/cuda-$steps.png" --device cuda &&
            say "correct chelsea 2 octaves x $steps steps, cuda ($knobs) vs cpu: PSNR $(psnr "$T/cpu-$steps.png" "$T/cuda-$steps.png") dB"
    done
    run 120 "dream-portable-$steps" "$BIN" "${dream[@]}" -o "$T/portable-$steps.png" --device cpu-portable &&
        say "correct chelsea 2 octaves x $steps steps, cpu-portable vs cpu: PSNR $(psnr "$T/cpu-$steps.png" "$T/portable-$steps.png") dB"
done

fi
# --- our step times ---------------------------------------------------------------------------
bench() { # bench NAME ENV... -- ARGS...
    local name=$1; shift
    local envs=()
    while [ "$1" != "--" ]; do envs+=("$1"); shift; done; shift
    local w; w=$(watch_gpu)
    if run 60 "$name" env ${envs[@]+"${envs[@]}"} "${B:-$BIN}" bench --device cuda "$@"; then
        say "$name: $(grep -E '^ *step ' "$T/$name.log" | awk '{print $2, $3}') $(gpu_summary "$w") [$*${envs[*]+ ${envs[*]}}]"
    else
        gpu_summary "$w" >/dev/null
    fi
}
if want steps; then
for size in 512x512 1920x1080; do
    bench "ours lite0 $size" -- --size "$size" --steps 10
    bench "ours inception $size" -- --model inception-v3 --formula-weights --size "$size" --steps 10
done
for knob in DEEPDREAM_FUSED=0 DEEPDREAM_TF32=1 DEEPDREAM_CUDA_KEEP_MEMORY=0 DEEPDREAM_CUDA_EVENTS=1; do
    bench "knob lite0 512x512 $knob" "$knob" -- --size 512x512 --steps 10
    bench "knob inception 512x512 $knob" "$knob" -- --model inception-v3 --formula-weights --size 512x512 --steps 10
done
bench "knob lite0 1920x1080 DEEPDREAM_FUSED=0" DEEPDREAM_FUSED=0 -- --size 1920x1080 --steps 10

fi
# --- the PyTorch peer -------------------------------------------------------------------------
if want peer; then
run 150 peer-steps python3 scripts/torch_gpu_peer.py steps --steps 10
grep '^peer' "$T/peer-steps.log" | tee -a "$RESULTS"

fi
# --- zoom frames per second: the difference of a 6-frame and a 36-frame zoom is 30 frames ------
python3 -c "from PIL import Image; Image.open('examples/hubble.jpg').convert('RGB').resize((512, 512), Image.LANCZOS).save('$T/h512.png')"
zoom_fps() { # zoom_fps LABEL BINARY
    local zoom=(zoom "$T/h512.png" --frame-steps 4 --max-size 512 --jitter 0 --rotate 0 --device cuda)
    local t0 t1 t2 w fps
    t0=$(date +%s.%N)
    run 90 "zoom6-$1" "$2" "${zoom[@]}" --frames 6 -o "$T/z6-$1" || return
    t1=$(date +%s.%N)
    w=$(watch_gpu)
    if run 120 "zoom36-$1" env DEEPDREAM_TRACE=1 "$2" "${zoom[@]}" --frames 36 -o "$T/z36-$1"; then
        t2=$(date +%s.%N)
        fps=$(awk -v a="$t0" -v b="$t1" -v c="$t2" 'BEGIN {printf "%.1f", 30 / ((c - b) - (b - a))}')
        say "zoom $1 lite0 512x512 4 steps/frame: $fps fps $(gpu_summary "$w")"
        grep '^trace' "$T/zoom36-$1.log" | sed "s/^/zoom $1 /" | tee -a "$RESULTS"
    else
        gpu_summary "$w" >/dev/null
    fi
}
if want zoom; then
zoom_fps ours "$BIN"
for mode in fp32 bf16; do
    run 120 "peer-zoom-$mode" python3 scripts/torch_gpu_peer.py zoom "$T/h512.png" --frames 30 --frame-steps 4 --mode $mode &&
        grep '^peer' "$T/peer-zoom-$mode.log" | tee -a "$RESULTS"
done
fi
# --- a second binary (the cudnn build, say) on the same machine -------------------------------
if [ -n "$BIN2" ] && want second; then
    n2=$(basename "$BIN2")
    run 240 "warmup-$n2" "$BIN2" bench --device cuda --model inception-v3 --formula-weights --size 299x299 --steps 2
    dream=(dream examples/chelsea.png --octaves 2 --steps 3 --seed 1)
    [ -e "$T/cpu-3.png" ] || run 120 dream-cpu-3 "$BIN" "${dream[@]}" -o "$T/cpu-3.png" --device cpu
    run 120 "dream-$n2" "$BIN2" "${dream[@]}" -o "$T/second-3.png" --device cuda &&
        say "correct chelsea 2 octaves x 3 steps, $n2 vs cpu: PSNR $(psnr "$T/cpu-3.png" "$T/second-3.png") dB"
    for size in 512x512 1920x1080; do
        B=$BIN2 bench "$n2 lite0 $size" -- --size "$size" --steps 10
        B=$BIN2 bench "$n2 inception $size" -- --model inception-v3 --formula-weights --size "$size" --steps 10
    done
    zoom_fps "$n2" "$BIN2"
fi

say "done in $(elapsed) s"
# Keep the logs beside the results for a look at what failed.
tar -C "$T" -czf "${RESULTS%.txt}-logs.tgz" --exclude="*.png" . 2>/dev/null
