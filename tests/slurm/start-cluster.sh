#!/usr/bin/env bash
# Start a one-node SLURM cluster with accounting (munge, mariadb, slurmdbd, slurmctld, slurmd)
# on this machine, for tests/test_slurm.py. Needs root and Debian/Ubuntu (apt). Idempotent:
# daemons that are already running (per our PID files) are left alone.
#
# There is no systemd here and apt's policy-rc.d refuses to start daemons, so each daemon runs in
# the foreground (-D/-F), detached with setsid; its PID goes to $ESS_SLURM_STATE_DIR/pids.
# Stop with tests/slurm/stop-cluster.sh. See /work/shared/SLURM-NOTES.md for the why of each step.
#
# Memory enforcement without cgroups: jobacct_gather/linux polls each step's RSS every second
# (JobAcctGatherFrequency=task=1) and OverMemoryKill kills a step that exceeds its --mem.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tests/slurm/env.sh
source "$HERE/env.sh"

T0=$(date +%s)
[[ $(id -u) -eq 0 ]] || die "run as root (daemons need to switch users)"

# --- packages -------------------------------------------------------------------------------
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    command -v apt-get >/dev/null || die "apt-get not found; install ${missing[*]} yourself"
    log "installing ${missing[*]} (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- directories and config -----------------------------------------------------------------
mkdir -p "$STATE_DIR" "$PID_DIR" "$LOG_DIR" "$STATE_DIR/slurmctld" "$STATE_DIR/slurmd" \
    "$STATE_DIR/mysql"
chmod 755 "$STATE_DIR"
chown slurm:slurm "$STATE_DIR/slurmctld"
chown mysql:mysql "$STATE_DIR/mysql"
# logs, pid files and the mariadb socket are written by root, mysql and slurm daemons alike
install -d -m 1777 "$STATE_DIR/run" "$LOG_DIR"
chmod 1777 "$STATE_DIR/run" "$LOG_DIR"

# write_conf PATH MODE OWNER: write stdin to PATH unless PATH is a config we did not write.
# Sets CONF_CHANGED=1 when the content differs from what was there.
CONF_CHANGED=0
write_conf() {
    local path=$1 mode=$2 owner=$3 tmp
    if [[ -e "$path" ]] && ! grep -qF "$MARKER" "$path" && [[ "${ESS_SLURM_FORCE:-0}" != 1 ]]; then
        die "$path exists and was not written by this script; set ESS_SLURM_FORCE=1 to overwrite"
    fi
    tmp=$(mktemp)
    { echo "$MARKER"; cat; } >"$tmp"
    cmp -s "$tmp" "$path" || CONF_CHANGED=1
    install -m "$mode" -o "$owner" -g "$owner" "$tmp" "$path"
    rm -f "$tmp"
}

NCPU=$(nproc)
MEM_MB=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
REAL_MB=$((MEM_MB > 4096 ? MEM_MB - 2048 : MEM_MB / 2))   # leave ~2 GB to the OS

mkdir -p /etc/slurm
write_conf /etc/slurm/slurm.conf 644 root <<EOF
ClusterName=$CLUSTER_NAME
SlurmctldHost=localhost
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=$STATE_DIR/slurmctld
SlurmdSpoolDir=$STATE_DIR/slurmd
SlurmctldPidFile=$STATE_DIR/run/slurmctld.pid
SlurmdPidFile=$STATE_DIR/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
# Finished jobs stay visible to squeue for 10 min (the plugin's squeue mode needs >= 120 s).
MinJobAge=600
KillWait=5
InactiveLimit=0
# Memory enforcement without cgroups: poll RSS every second, kill steps over their --mem.
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
AccountingStorageTRES=gres/gpu
# One fake GPU (its "device" is /dev/null, see gres.conf), so rules asking for gpu: 1
# (sbatch --gpus=1) can be scheduled here; they get CUDA_VISIBLE_DEVICES=0 but no CUDA.
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$NCPU RealMemory=$REAL_MB Gres=gpu:1 State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF

write_conf /etc/slurm/gres.conf 644 root <<EOF
NodeName=localhost Name=gpu File=/dev/null
EOF

DB_PASS_FILE="$STATE_DIR/db-password"
if [[ ! -s "$DB_PASS_FILE" ]]; then
    (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$DB_PASS_FILE")
fi
DB_PASS=$(cat "$DB_PASS_FILE")
write_conf /etc/slurm/slurmdbd.conf 600 slurm <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=slurm
PidFile=$STATE_DIR/run/slurmdbd.pid
LogFile=$LOG_DIR/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF

if ((CONF_CHANGED)) && pid_alive slurmctld; then
    log "WARNING: the SLURM config changed while the cluster runs; for it to take effect run" \
        "tests/slurm/stop-cluster.sh, then this script again"
fi

# --- helpers --------------------------------------------------------------------------------
# start NAME CMD...: run CMD detached (own session), record its PID, unless already running.
start() {
    local name=$1; shift
    if pid_alive "$name"; then
        log "$name already running (pid $(cat "$PID_DIR/$name.pid"))"
        return 0
    fi
    log "starting $name"
    setsid "$@" </dev/null >>"$LOG_DIR/$name.out" 2>&1 &
    echo $! >"$PID_DIR/$name.pid"
}

# wait_for WHAT CMD...: retry CMD every 0.5 s until it succeeds or TIMEOUT passes.
wait_for() {
    local what=$1 name=$2; shift 2
    local deadline=$(($(date +%s) + TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        if ! kill -0 "$(cat "$PID_DIR/$name.pid")" 2>/dev/null; then  # comm may still be setsid
            tail -n 20 "$LOG_DIR/$name.out" "$LOG_DIR/$name.log" 2>/dev/null >&2 || true
            die "$name died while waiting for $what (logs: $LOG_DIR)"
        fi
        if (($(date +%s) >= deadline)); then
            tail -n 20 "$LOG_DIR/$name.out" "$LOG_DIR/$name.log" 2>/dev/null >&2 || true
            [[ $name == slurmd ]] && scontrol show node localhost 2>/dev/null | grep -E "State|Reason" >&2
            die "timed out after ${TIMEOUT}s waiting for $what (logs: $LOG_DIR)"
        fi
        sleep 0.5
    done
    log "$what: ok"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
munge_ok() { munge -n | unmunge; }
mysql_root() { mariadb --socket="$STATE_DIR/run/mysqld.sock" -uroot "$@"; }
ctld_up() { scontrol ping | grep -q "is UP"; }
# Node up: idle, or busy with jobs when the cluster was already up. A node left drained or down
# by an earlier run (e.g. a config change) is resumed; one whose config is invalid stays down.
node_up() {
    port_open 6818 || return 1
    local state
    state=$(sinfo -h -n localhost -o %t)
    [[ $state =~ ^(idle|mix|alloc|comp)$ ]] && return 0
    [[ $state =~ ^(drain|drng|down)\*?$ ]] && scontrol update nodename=localhost state=resume
    return 1
}

# --- munge ----------------------------------------------------------------------------------
if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating /etc/munge/munge.key"
    mungekey --create --force
fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
install -d -o munge -g munge -m 755 /run/munge
install -d -o munge -g munge -m 700 /var/lib/munge /var/log/munge
start munged setpriv --reuid=munge --regid=munge --init-groups munged -F
wait_for "munge credential round trip" munged munge_ok

# --- mariadb (bound to 127.0.0.1 only) ------------------------------------------------------
if [[ ! -d "$STATE_DIR/mysql/mysql" ]]; then
    log "initialising mariadb data dir"
    mariadb-install-db --user=mysql --datadir="$STATE_DIR/mysql" \
        --auth-root-authentication-method=socket >"$LOG_DIR/mariadb-install.out" 2>&1 ||
        die "mariadb-install-db failed, see $LOG_DIR/mariadb-install.out"
fi
start mariadbd mariadbd --no-defaults --user=mysql --datadir="$STATE_DIR/mysql" \
    --bind-address=127.0.0.1 --port="$DB_PORT" --socket="$STATE_DIR/run/mysqld.sock" \
    --pid-file="$STATE_DIR/run/mariadbd.pid" --log-error="$LOG_DIR/mariadbd.log"
wait_for "mariadb on 127.0.0.1:$DB_PORT" mariadbd mysql_root -e "SELECT 1"
mysql_root --batch <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
EOF

# --- slurmdbd, then the cluster record (sacctmgr blocks ~30 s if called before the port opens)
start slurmdbd slurmdbd -D
wait_for "slurmdbd on port $DBD_PORT" slurmdbd port_open "$DBD_PORT"
if ! sacctmgr -n -P list cluster format=cluster 2>/dev/null | grep -qx "$CLUSTER_NAME"; then
    sacctmgr -i add cluster "$CLUSTER_NAME" >/dev/null
    log "registered cluster $CLUSTER_NAME with slurmdbd"
fi

# --- slurmctld, then slurmd -------------------------------------------------------------------
start slurmctld slurmctld -D
wait_for "slurmctld (scontrol ping)" slurmctld ctld_up
start slurmd slurmd -D -N localhost
wait_for "node localhost up (sinfo)" slurmd node_up

log "SLURM cluster '$CLUSTER_NAME' up: partition $PARTITION, $NCPU CPUs, ${REAL_MB} MB;" \
    "state in $STATE_DIR; startup took $(($(date +%s) - T0)) s"
