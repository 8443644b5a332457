#!/usr/bin/env bash
# Renders a video on a Slurm cluster: `deepdream plan` here (it decodes the input once and
# prints the number of chunks N), then one job array of N tasks, each `deepdream render-chunk
# OUT $SLURM_ARRAY_TASK_ID` on one GPU, then a merge job that starts when every task has
# succeeded (--dependency=afterok; if a task fails, the merge is cancelled and the failed
# chunks can be submitted again, see the README). Prints the two job ids.
#
#   scripts/farm-slurm.sh [options] INPUT -o OUTPUT [any `deepdream plan` flags]
#     -p N       at most N chunks at once (default 8)
#     -g GRES    what a chunk asks for (default gpu:1; `none` on a CPU cluster)
#     -d DEVICE  render-chunk's --device (default: the plan's; under --gres=gpu:1 `cuda` is
#                the GPU Slurm gave the task)
#     -s ARGS    more sbatch arguments for every job, e.g. "--partition=gpu --time=4:00:00"
#     -l DIR     where the jobs' logs go (default: beside the output, .OUTPUT.logs)
#
# Every worker must see the same paths: the output's directory, the input, the model cache
# ($DEEPDREAM_MODELS), and the deepdream binary ($DEEPDREAM, default `deepdream` on PATH).
set -euo pipefail
DEEPDREAM=${DEEPDREAM:-deepdream}
parallel=8 gres=gpu:1 device="" logs="" extra=()
usage() { sed -n '2,20p' "$0" >&2; exit 2; }
while getopts p:g:d:s:l:h opt; do
    case $opt in
        p) parallel=$OPTARG ;; g) gres=$OPTARG ;; d) device=$OPTARG ;; l) logs=$OPTARG ;;
        s) read -r -a extra <<< "$OPTARG" ;; *) usage ;;
    esac
done
shift $((OPTIND - 1))
[ $# -ge 2 ] || usage
. "$(dirname "$0")/farm-output.sh"
farm_output farm-slurm "$@"
logs=${logs:-$(dirname "$out")/.$name.logs}
mkdir -p "$logs"

n=$("$DEEPDREAM" plan "$@")
gres_arg=()
[ "$gres" = none ] || gres_arg=(--gres="$gres")
device_arg=""
[ -z "$device" ] || device_arg=" --device $(printf %q "$device")"
bin=$(printf %q "$(realpath "$(command -v "$DEEPDREAM")")")
target=$(printf %q "$out")
chunks=$(sbatch --parsable --job-name="dream-$name" --array="0-$((n - 1))%$parallel" "${gres_arg[@]}" "${extra[@]}" \
    --output="$logs/chunk-%a.log" \
    --wrap="exec $bin render-chunk $target \$SLURM_ARRAY_TASK_ID$device_arg")
chunks=${chunks%%;*}
merge=$(sbatch --parsable --job-name="merge-$name" --dependency="afterok:$chunks" --kill-on-invalid-dep=yes \
    "${extra[@]}" --output="$logs/merge.log" --wrap="exec $bin merge $target")
merge=${merge%%;*}
echo "farm-slurm: $n chunks in job array $chunks, merge in job $merge; logs in $logs" >&2
echo "$chunks $merge"
