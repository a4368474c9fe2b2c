#!/usr/bin/env bash
# Stop the one-node SLURM cluster started by tests/slurm/start-cluster.sh: each daemon is stopped
# by the PID recorded at start (SIGTERM, then SIGKILL after ESS_SLURM_TIMEOUT s), in reverse start
# order, and its PID files are removed (a stale slurmctld pid file breaks `apt-get purge`).
# Idempotent; state (job history, database) stays in $ESS_SLURM_STATE_DIR for the next start.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tests/slurm/env.sh
source "$HERE/env.sh"

T0=$(date +%s)
stopped=0
for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
    name=${DAEMONS[i]}
    f="$PID_DIR/$name.pid"
    [[ -e "$f" ]] || continue
    if pid_alive "$name"; then
        pid=$(cat "$f")
        log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        deadline=$(($(date +%s) + TIMEOUT))
        while kill -0 "$pid" 2>/dev/null; do
            if (($(date +%s) >= deadline)); then
                log "$name did not exit after ${TIMEOUT}s, sending SIGKILL"
                kill -KILL "$pid" 2>/dev/null || true
                break
            fi
            sleep 0.2
        done
        stopped=$((stopped + 1))
    fi
    rm -f "$f"
done
# The daemons' own pid files (they normally remove them on exit, not after SIGKILL).
rm -f "$STATE_DIR"/run/*.pid
if ((stopped)); then
    log "stopped $stopped daemon(s) in $(($(date +%s) - T0)) s"
else
    log "no ess SLURM daemons were running"
fi
