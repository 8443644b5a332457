#!/usr/bin/env bash
# The GNU parallel recipe (scripts/farm-parallel.sh) with a chunk killed midway: the first run
# fails that chunk, the same command run again renders only it (its stored frames resumed) and
# merges, and the result is byte-identical to the one-machine render (no temporal dependence).
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
bin=${DEEPDREAM:-$repo/target/debug/deepdream}
[ -x "$bin" ] || cargo build --locked --quiet
export DEEPDREAM=$bin
work=$(mktemp -d /tmp/dd-parallel.XXXXXX)
trap 'rm -rf "$work"' EXIT
clip=$work/clip.mp4
"$bin" zoom examples/coffee.jpg -o "$clip" --frames 48 --max-size 96 --octaves 1 --steps 1 2>/dev/null
flags=(--motion blend --blend 0 --max-size 96 --octaves 1 --steps 2 --step 0.03 --chunk-frames 12)

# Kill chunk 1's render once it has stored three frames.
(
    for _ in $(seq 2400); do
        f=$(ls "$work/.out.mp4.farm/chunk-0001" 2>/dev/null | grep -c '^0.*png$' || true)
        if [ "$f" -ge 3 ]; then pkill -9 -f "render-chunk $work/out.mp4 1\$" && exit 0; fi
        sleep 0.05
    done
) &
killer=$!
if scripts/farm-parallel.sh -g 0 -j 2 "$clip" -o "$work/out.mp4" "${flags[@]}" 2>"$work/first.log"; then
    echo "parallel: the run with a killed chunk succeeded" >&2; cat "$work/first.log" >&2; exit 1
fi
wait "$killer" || { echo "parallel: chunk 1 was never killed" >&2; exit 1; }
grep -q "run the same command again" "$work/first.log"
[ -f "$work/.out.mp4.farm/chunk-0000.done" ] && [ ! -f "$work/.out.mp4.farm/chunk-0001.done" ]
echo "parallel: chunk 1 killed after $(ls "$work/.out.mp4.farm/chunk-0001" | grep -c '^0') frames; the other chunks done"
scripts/farm-parallel.sh -g 0 -j 2 "$clip" -o "$work/out.mp4" "${flags[@]}" 2>"$work/second.log"
grep -q "chunk 1: resuming after frame" "$work/second.log" || { cat "$work/second.log" >&2; exit 1; }
if grep -q "chunk 0 of" "$work/second.log"; then echo "parallel: the rerun rendered chunks that were done" >&2; exit 1; fi
"$bin" video "$clip" -o "$work/one.mp4" "${flags[@]:0:12}" 2>/dev/null
cmp "$work/out.mp4" "$work/one.mp4"
echo "parallel: the rerun resumed chunk 1 alone; the merged MP4 is byte-identical to the one-machine render"
echo "parallel: passed"
