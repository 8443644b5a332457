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
#   zoom       512x512 astronaut, InceptionV3 TF2015, the classic mix, zoom 1.03 a frame, no jitter
#              or turn, 4 steps a frame: seconds per frame after the first (peer:
#              scripts/torch_zoom_peer.py)
#   video      bigbuckbunny at 640x360, the flow recipe (presets/video.toml, EfficientNet-Lite0):
#              seconds per frame after the first, flow and warp included (peer:
#              scripts/torch_video_peer.py, with OpenCV's DIS flow)
#
# Usage: scripts/bench-peer.sh [--runs N] [JOB...]        (default: 5 runs, every job)
# Needs: PYTHON (default /tmp/torchenv/bin/python) with torch, pillow, efficientnet-lite-pytorch
#        and (for the video job) opencv-python-headless;
#        LITE0_DIR (default /tmp/w) holding efficientnet_lite0.pth, and INCEPTION_PT (default
#        /tmp/reg/default_1.pt) for the inception job -- ../shared/bench/README.md says how to get
#        them. The InceptionV3 weights must also be installed for deepdream
#        (scripts/fetch-registry-models.sh inception-v3-tf2015).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=5
if [ "${1:-}" = "--runs" ]; then runs=$2; shift 2; fi
jobs=("$@")
[ ${#jobs[@]} -gt 0 ] || jobs=(chelsea inception zoom video)
PYTHON=${PYTHON:-/tmp/torchenv/bin/python}
LITE0_DIR=${LITE0_DIR:-/tmp/w}
INCEPTION_PT=${INCEPTION_PT:-/tmp/reg/default_1.pt}
MEDIA=${MEDIA:-../shared/media}
cargo build --release -q
bin=target/release/deepdream
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Prints the seconds a command reports: ours "... steps in X s)" or "X s per frame after the
# first", the peers "time X" or "per frame X s". Renders write a new output each run.
ours() {
    rm -f "$tmp"/r.*
    "$bin" "$@" 2>&1 | sed -n -e 's/.* steps in \([0-9.]*\) s).*/\1/p' -e 's/.* \([0-9.]*\) s per frame after the first.*/\1/p'
}
peer() { "$PYTHON" "$@" 2>&1 | sed -n -e 's/.*time \([0-9.]*\).*/\1/p' -e 's/.*per frame \([0-9.]*\) s.*/\1/p'; }
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
        zoom)
            ours_cmd=(ours zoom "$MEDIA/astronaut.png" -o "$tmp/r.mp4" --preset zoom --model inception-v3-tf2015
                --layers mixed2=0.2,mixed3=3,mixed4=2,mixed5=1.5 --max-size 512 --jitter 0 --rotate 0
                --frame-steps 4 --frames 6)
            peer_cmd=(peer scripts/torch_zoom_peer.py "$INCEPTION_PT" "$MEDIA/astronaut.png" 6 cpu 4 10) ;;
        video)
            ours_cmd=(ours video "$MEDIA/bigbuckbunny.mp4" -o "$tmp/r.mp4" --preset video --duration 0.48)
            peer_cmd=(peer scripts/torch_video_peer.py "$LITE0_DIR" "$MEDIA/bigbuckbunny.mp4" 12) ;;
        *) echo "unknown job '$job' (chelsea, inception, zoom, video)" >&2; exit 2 ;;
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
