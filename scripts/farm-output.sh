# Sourced by scripts/farm-slurm.sh and scripts/farm-parallel.sh: finds the output among the
# `deepdream plan` arguments ("$@") and sets `out` (absolute, as every worker will name it) and
# `name` (its file name). $1 of farm_output is the calling script's name, for the error.
farm_output() {
    local me=$1
    shift
    local args=("$@") i
    out=""
    for i in "${!args[@]}"; do
        case ${args[$i]} in
            -o|--output) out=${args[$((i + 1))]:-} ;;
            --output=*) out=${args[$i]#--output=} ;;
        esac
    done
    [ -n "$out" ] || { echo "$me: give the output with -o" >&2; exit 2; }
    case $out in /*) ;; *) out=$PWD/$out ;; esac
    name=$(basename "${out%/}")
}
