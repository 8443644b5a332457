#!/usr/bin/env bash
# The Slurm recipe on a real one-node cluster started here by scripts/slurm-local.sh: a
# 4-chunk job array plus the merge job, through scripts/farm-slurm.sh, against the one-machine
# render of the same clip.
#   1. No temporal dependence (--motion blend --blend 0): the merged MP4 is byte-identical to
#      `deepdream video`'s (frames, timestamps, audio).
#   2. Blending (0.5), PNG frames: as many frames, and identical up to the first cross-faded
#      seam (tests/it/farm.rs measures the seams themselves).
# Stops the daemons by PID however it ends. Needs root or sudo, and slurmctld, slurmd, munge.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
bin=${DEEPDREAM:-$repo/target/debug/deepdream}
[ -x "$bin" ] || cargo build --locked --quiet
export DEEPDREAM=$bin
work=$(mktemp -d /tmp/dd-slurm.XXXXXX)
chmod 755 "$work"
trap 'scripts/slurm-local.sh stop "$work/slurm" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
start=$(date +%s%N)
eval "$(scripts/slurm-local.sh start "$work/slurm")"
echo "slurm: one-node cluster up in $(( ($(date +%s%N) - start) / 1000000 )) ms"

# A clip with sound when ../shared has one, else one made here.
clip=$repo/../shared/media/bigbuckbunny.mp4
range=(--duration 2)
if [ ! -f "$clip" ]; then
    clip=$work/clip.mp4
    "$bin" zoom examples/chelsea.png -o "$clip" --frames 40 --max-size 96 --octaves 1 --steps 1 2>/dev/null
    range=()
fi
fast=(--max-size 80 --octaves 1 --steps 1 --step 0.03 "${range[@]}")

wait_for() { # wait_for JOBID: until it has left the queue; fails unless it COMPLETED
    local state=""
    for _ in $(seq 1200); do
        state=$(scontrol show job "$1" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p' | head -1)
        case $state in COMPLETED|FAILED|CANCELLED|TIMEOUT|OUT_OF_MEMORY|NODE_FAIL) break ;; esac
        sleep 0.25
    done
    [ "$state" = COMPLETED ] || { echo "slurm: job $1 ended $state" >&2; cat "$work"/.*.logs/*.log >&2 || true; return 1; }
}

run_case() { # run_case NAME OUTPUT FLAGS...
    local name=$1 out=$2; shift 2
    local t0; t0=$(date +%s%N)
    read -r chunks merge < <(scripts/farm-slurm.sh -g none -p 4 "$clip" -o "$out" --chunk-frames 13 "$@")
    wait_for "$merge"
    echo "slurm: $name: array $chunks and merge $merge done in $(( ($(date +%s%N) - t0) / 1000000 )) ms"
}

# 1. Exact.
run_case exact "$work/farm.mp4" --motion blend --blend 0 "${fast[@]}"
"$bin" video "$clip" -o "$work/one.mp4" --motion blend --blend 0 "${fast[@]}" 2>/dev/null
cmp "$work/farm.mp4" "$work/one.mp4"
[ ! -e "$work/.farm.mp4.farm" ] || { echo "slurm: the farm directory is left" >&2; exit 1; }
echo "slurm: exact: the merged MP4 is byte-identical to the one-machine render"

# 2. Blending.
run_case blend "$work/farm-blend" --motion blend --blend 0.5 "${fast[@]}"
"$bin" video "$clip" -o "$work/one-blend" --motion blend --blend 0.5 "${fast[@]}" 2>/dev/null
a=$(ls "$work/farm-blend" | wc -l) b=$(ls "$work/one-blend" | wc -l)
[ "$a" -eq "$b" ] && [ "$a" -gt 0 ] || { echo "slurm: blend: $a frames merged, $b from one machine" >&2; exit 1; }
same=0
for f in $(ls "$work/one-blend"); do
    cmp -s "$work/farm-blend/$f" "$work/one-blend/$f" || break
    same=$((same + 1))
done
[ "$same" -ge 5 ] || { echo "slurm: blend: only $same leading frames identical" >&2; exit 1; }
echo "slurm: blend: $a frames, the first $same identical to the one-machine render (then a cross-faded seam)"
echo "slurm: passed"
