#!/usr/bin/env bash
# Renders a video with GNU parallel on one multi-GPU machine or a few hosts over ssh:
# `deepdream plan` (it prints the number of chunks N), `deepdream render-chunk OUT I` for I in
# 0..N-1 with one GPU per job slot, then `deepdream merge OUT`. Run it again after a failure
# or a kill: the job log (--joblog with --resume-failed) runs only the chunks that did not
# finish, and each chunk resumes from its stored frames.
#
#   scripts/farm-parallel.sh [options] INPUT -o OUTPUT [any `deepdream plan` flags]
#     -j N       job slots (default: the number of GPUs, -g)
#     -g N       GPUs per host: slot s renders on cuda:s-1 (default: those nvidia-smi lists;
#                0: render on the plan's device, e.g. the CPU)
#     -S HOSTS   ssh logins for parallel's --sshlogin, e.g. ":,gpu1,gpu2" (: is this machine);
#                every host must see the same paths and have deepdream on PATH
#     -L FILE    the job log (default: beside the output, .OUTPUT.joblog)
set -euo pipefail
DEEPDREAM=${DEEPDREAM:-deepdream}
jobs="" gpus="" hosts="" joblog=""
usage() { sed -n '2,17p' "$0" >&2; exit 2; }
while getopts j:g:S:L:h opt; do
    case $opt in
        j) jobs=$OPTARG ;; g) gpus=$OPTARG ;; S) hosts=$OPTARG ;; L) joblog=$OPTARG ;; *) usage ;;
    esac
done
shift $((OPTIND - 1))
[ $# -ge 2 ] || usage
command -v parallel >/dev/null || { echo "farm-parallel: GNU parallel is not installed (apt install parallel)" >&2; exit 2; }
. "$(dirname "$0")/farm-output.sh"
farm_output farm-parallel "$@"
joblog=${joblog:-$(dirname "$out")/.$name.joblog}
if [ -z "$gpus" ]; then
    gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
fi
jobs=${jobs:-$((gpus > 0 ? gpus : 1))}

n=$("$DEEPDREAM" plan "$@")
# A job log from before the plan was (re)written speaks of other chunks: start afresh.
plan=$(dirname "$out")/.$name.farm/plan.json
if [ -f "$joblog" ] && [ "$plan" -nt "$joblog" ]; then rm -f "$joblog"; fi
device=()
[ "$gpus" -eq 0 ] || device=(--device 'cuda:$(( ({%} - 1) % '"$gpus"' ))')
ssh=()
[ -z "$hosts" ] || ssh=(--sshlogin "$hosts")
bin=$(realpath "$(command -v "$DEEPDREAM")")
status=0
seq 0 $((n - 1)) | parallel -j "$jobs" --joblog "$joblog" --resume-failed "${ssh[@]}" \
    "$(printf %q "$bin")" render-chunk "$(printf %q "$out")" {} "${device[@]}" || status=$?
if [ "$status" -ne 0 ]; then
    echo "farm-parallel: $status chunks failed (see $joblog); run the same command again to retry them" >&2
    exit 1
fi
"$DEEPDREAM" merge "$out"
rm -f "$joblog"
