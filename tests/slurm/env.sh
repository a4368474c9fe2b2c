# shellcheck shell=bash disable=SC2034  # variables are used by the scripts that source this
# Shared settings for start-cluster.sh and stop-cluster.sh (sourced, not run).
#
# ESS_SLURM_STATE_DIR  where daemons keep state, logs and our PID files (default /tmp/ess-slurm)
# ESS_SLURM_TIMEOUT    seconds to wait for each daemon to become ready (default 60)
# ESS_SLURM_FORCE=1    overwrite /etc/slurm/slurm.conf even if another tool wrote it

STATE_DIR="${ESS_SLURM_STATE_DIR:-/tmp/ess-slurm}"
TIMEOUT="${ESS_SLURM_TIMEOUT:-60}"
CLUSTER_NAME=ess
PARTITION=debug
DB_PORT=3306
DBD_PORT=6819
PID_DIR="$STATE_DIR/pids"   # PIDs of the processes *we* started, one file per daemon
LOG_DIR="$STATE_DIR/log"
# Start order; stop-cluster.sh walks it backwards.
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)
# Marker line in the config files we write, so we never clobber a real cluster's config.
MARKER="# Written by ess tests/slurm/start-cluster.sh"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# pid_alive NAME: true if PID_DIR/NAME.pid names a live process called NAME (not a reused PID).
pid_alive() {
    local f="$PID_DIR/$1.pid"
    [[ -s "$f" ]] && [[ "$(cat "/proc/$(cat "$f")/comm" 2>/dev/null)" == "$1" ]]
}
