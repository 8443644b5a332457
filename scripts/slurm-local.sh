#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, started by hand (no systemd): for trying the farm
# recipe (scripts/farm-slurm.sh) and for its test (tests/farm/slurm.sh).
#
#   scripts/slurm-local.sh start DIR   # config, state and logs in DIR; prints `export SLURM_CONF=...`
#   scripts/slurm-local.sh stop DIR    # stops the daemons it started, by PID
#
# Needs Debian's slurmctld, slurmd and munge (scripts/setup.sh --farm installs them) and root
# (slurmd starts jobs as their user). munged runs as the munge user with the installed key.
set -euo pipefail
cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

stop_pid() { # stop_pid PIDFILE NAME
    [ -f "$1" ] || return 0
    local pid; pid=$(cat "$1")
    if kill -0 "$pid" 2>/dev/null; then
        $SUDO kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && $SUDO kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$1"
}

case $cmd in
start)
    mkdir -p "$dir"/state "$dir"/spool
    dir=$(cd "$dir" && pwd)
    host=$(hostname)
    cpus=$(nproc)
    mem=$(awk '/MemTotal/ { print int($2 / 1024 / 2) }' /proc/meminfo)
    cat > "$dir/slurm.conf" <<CONF
ClusterName=deepdream-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
    # munged, as the munge user, unless one already answers.
    if ! munge -n </dev/null >/dev/null 2>&1; then
        $SUDO mkdir -p /run/munge /var/log/munge /var/lib/munge
        $SUDO chown munge:munge /run/munge /var/log/munge /var/lib/munge
        $SUDO chmod 0755 /run/munge
        [ -f /etc/munge/munge.key ] || $SUDO runuser -u munge -- /usr/sbin/mungekey --create
        $SUDO runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
        cp /run/munge/munged.pid "$dir/munged.pid" 2>/dev/null || $SUDO cat /run/munge/munged.pid > "$dir/munged.pid"
    fi
    $SUDO slurmctld -f "$dir/slurm.conf" -i
    $SUDO slurmd -f "$dir/slurm.conf"
    export SLURM_CONF=$dir/slurm.conf
    # Ready when the node takes jobs.
    for _ in $(seq 150); do
        state=$(sinfo -h -n "$host" -o %t 2>/dev/null || true)
        case $state in idle*|mix*|alloc*) break ;; esac
        sleep 0.2
    done
    case $state in
        idle*|mix*|alloc*) ;;
        *) echo "slurm-local: the node did not come up (state '$state'); logs in $dir" >&2; exit 1 ;;
    esac
    echo "export SLURM_CONF=$dir/slurm.conf"
    ;;
stop)
    dir=$(cd "$dir" && pwd)
    stop_pid "$dir/slurmd.pid" slurmd
    stop_pid "$dir/slurmctld.pid" slurmctld
    stop_pid "$dir/munged.pid" munged
    ;;
*)
    echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
