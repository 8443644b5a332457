#!/usr/bin/env bash
# Times deepdream and the PyTorch eager peer on the same jobs, side by side on this machine:
# runs alternate (ours, peer, ours, peer, ...), each prints the time of its dream loop alone
# (model loading excluded), and the medians give the ratio (below 1.0: we are faster).
#
# Jobs:
#   chelsea    451x300, EfficientNet-Lite0, block5+block10, 3 octaves x 10 steps, step 0.02
#              (peer: ../shared/bench/torch_dream.py)
#   inception  512x512 astronaut, InceptionV3 TF2015 weights, mixed2..mixed5 classic mix,
#              3 octaves x 20 steps (peer: scripts/torch_inception_dream.py)
#
# Usage: scripts/bench-peer.sh [--runs N] [JOB...]        (default: 5 runs, both jobs)
# Needs: PYTHON (default /tmp/torchenv/bin/python) with torch, pillow and efficientnet-lite-pytorch;
#        LITE0_DIR (default /tmp/w) holding efficientnet_lite0.pth, and INCEPTION_PT (default
#        /tmp/reg/default_1.pt) for the inception job -- ../shared/bench/README.md says how to get
#        them. The InceptionV3 weights must also be installed for deepdream
#        (scripts/fetch-registry-models.sh inception-v3-tf2015).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=5
if [ "${1:-}" = "--runs" ]; then runs=$2; shift 2; fi
jobs=("$@")
[ ${#jobs[@]} -gt 0 ] || jobs=(chelsea inception)
PYTHON=${PYTHON:-/tmp/torchenv/bin/python}
LITE0_DIR=${LITE0_DIR:-/tmp/w}
INCEPTION_PT=${INCEPTION_PT:-/tmp/reg/default_1.pt}
MEDIA=${MEDIA:-../shared/media}
cargo build --release -q
bin=target/release/deepdream
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Prints the seconds a command reports: ours "... steps in X s)", the peers "time X".
ours() { "$bin" "$@" 2>&1 | sed -n 's/.* steps in \([0-9.]*\) s).*/\1/p'; }
peer() { "$PYTHON" "$@" 2>&1 | sed -n 's/.*time \([0-9.]*\).*/\1/p'; }
median() { sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }

for job in "${jobs[@]}"; do
    case $job in
        chelsea)
            ours_cmd=(ours dream "$MEDIA/chelsea.png" -o "$tmp/o.png" --model efficientnet-lite0
                --layers block5=1,block10=1 --octaves 3 --octave-scale 1.4 --steps 10 --step 0.02)
            peer_cmd=(peer ../shared/bench/torch_dream.py "$LITE0_DIR" "$MEDIA/chelsea.png" "$tmp/t.png"
                "$tmp/t.json" "block5:1,block10:1" 3 1.4 10 0.02) ;;
        inception)
            ours_cmd=(ours dream "$MEDIA/astronaut.png" -o "$tmp/o.png" --preset classic-inceptionv3 --max-loss 1e9)
            peer_cmd=(peer scripts/torch_inception_dream.py "$INCEPTION_PT" "$MEDIA/astronaut.png" "$tmp/t.png") ;;
        *) echo "unknown job '$job' (chelsea, inception)" >&2; exit 2 ;;
    esac
    : >"$tmp/ours"; : >"$tmp/peer"
    for _ in $(seq "$runs"); do
        a=$("${ours_cmd[@]}"); b=$("${peer_cmd[@]}")
        [ -n "$a" ] || { echo "$job: deepdream printed no time" >&2; exit 1; }
        [ -n "$b" ] || { echo "$job: the PyTorch peer printed no time" >&2; exit 1; }
        echo "$a" >>"$tmp/ours"; echo "$b" >>"$tmp/peer"
    done
    mo=$(median <"$tmp/ours"); mp=$(median <"$tmp/peer")
    printf '%-10s deepdream %6.2f s  pytorch %6.2f s  ratio %.2f   (medians of %d; ours: %s; peer: %s)\n' \
        "$job" "$mo" "$mp" "$(echo "$mo / $mp" | bc -l)" "$runs" "$(paste -sd' ' "$tmp/ours")" "$(paste -sd' ' "$tmp/peer")"
done
