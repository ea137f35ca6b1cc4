#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, from Debian's packages, for the end-to-end test of the
# workflow's SLURM profile (tests/slurm/run_e2e.sh). Needs root (it starts system daemons).
#
#   tests/slurm/cluster.sh install   apt-get the packages (slurmctld slurmd slurmdbd slurm-client munge
#                                    mariadb-server); exit 3 when they cannot be installed
#   tests/slurm/cluster.sh start     munged, MariaDB, slurmdbd (accounting, so `sacct` answers the executor
#                                    plugin's job-state queries), slurmctld, slurmd; account `ci` for
#                                    the calling user; waits until the node is idle
#   tests/slurm/cluster.sh stop      cancels jobs and stops every daemon it started
#   tests/slurm/cluster.sh env       prints the `export SLURM_CONF=...` line clients need
#
# Everything it writes lives in $SLURM_CI_DIR (default /tmp/ci-slurm): slurm.conf, slurmdbd.conf, state,
# spool, logs and pid files. The one file outside it is the link /etc/slurm/slurm.conf -> $DIR/slurm.conf,
# made only where the machine has no slurm.conf of its own (it refuses otherwise) and removed by `stop`:
# the executor plugin's job step drops SLURM_CONF from the environment before its nested `srun`, so
# inside a job SLURM's configuration must be where SLURM looks by default, as on a real cluster.
set -euo pipefail

DIR=${SLURM_CI_DIR:-/tmp/ci-slurm}
PARTITION=${SLURM_CI_PARTITION:-ci}
ACCOUNT=${SLURM_CI_ACCOUNT:-ci}
CLUSTER=ci
PACKAGES="slurmctld slurmd slurmdbd slurm-client munge mariadb-server"
DB_PASS=ci-slurm-only
export SLURM_CONF=$DIR/slurm.conf

log() { echo "[slurm-ci] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local secs=$1 what=$2; shift 2
    for _ in $(seq 1 "$((secs * 2))"); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    die "timed out after ${secs}s waiting for $what (logs in $DIR/log)"
}

need_root() { [ "$(id -u)" = 0 ] || { log "needs root (starts system daemons)"; exit 3; }; }

cmd_install() {
    need_root
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v slurmdbd >/dev/null \
        && command -v munged >/dev/null && command -v mariadbd >/dev/null && command -v sbatch >/dev/null; then
        log "packages already installed"; return 0
    fi
    command -v apt-get >/dev/null || { log "no apt-get on this machine: cannot install $PACKAGES"; exit 3; }
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends $PACKAGES; } >"${TMPDIR:-/tmp}/slurm-ci-apt.log" 2>&1; then
        tail -20 "${TMPDIR:-/tmp}/slurm-ci-apt.log" >&2
        log "apt-get could not install: $PACKAGES"; exit 3
    fi
    log "installed: $(dpkg-query -W -f='${Package} ${Version}, ' $PACKAGES)"
}

write_configs() {
    local node cpus mem user
    node=$(hostname -s)
    cpus=$(nproc)
    # what slurmd itself reports, less 1 GiB for the daemons
    mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
    mem=$(( mem > 2048 ? mem - 1024 : mem ))
    user=$(id -un)
    mkdir -p "$DIR"/{state,spool,log,run}
    cat >"$DIR/slurm.conf" <<EOF
# written by tests/slurm/cluster.sh: a one-node cluster for CI
ClusterName=$CLUSTER
SlurmctldHost=$node(127.0.0.1)
SlurmUser=$user
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
# containers have no usable cgroup hierarchy: plain process tracking, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
MinJobAge=300
InactiveLimit=0
KillWait=10
# accounting through slurmdbd, so sacct answers job-state queries (what the executor plugin uses)
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStorageEnforce=associations
JobCompType=jobcomp/none
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
    cat >"$DIR/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=$node
DbdAddr=127.0.0.1
SlurmUser=$user
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=$DB_PASS
EOF
    chmod 600 "$DIR/slurmdbd.conf"
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then log "munged already running"; return; fi
    [ -s /etc/munge/munge.key ] || { mungekey --create --force; chown munge:munge /etc/munge/munge.key; }
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    runuser -u munge -- munged
    wait_for 20 munged sh -c 'munge -n | unmunge'
}

start_mariadb() {
    if mariadb-admin ping >/dev/null 2>&1; then log "MariaDB already running"; else
        mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
        [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >"$DIR/log/mariadb-install.log" 2>&1
        (mariadbd --user=mysql --datadir=/var/lib/mysql --bind-address=127.0.0.1 \
            --innodb-buffer-pool-size=256M --innodb-lock-wait-timeout=900 \
            --pid-file=/run/mysqld/ci-slurm.pid >"$DIR/log/mariadb.log" 2>&1 &)
        wait_for 60 MariaDB mariadb-admin ping
    fi
    mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
        CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
}

node_idle() { [ "$(sinfo -h -n "$(hostname -s)" -o %t 2>/dev/null)" = idle ]; }

cmd_start() {
    need_root
    command -v slurmctld >/dev/null || { log "SLURM is not installed (run: $0 install)"; exit 3; }
    if [ -f "$DIR/run/slurmctld.pid" ] && kill -0 "$(cat "$DIR/run/slurmctld.pid")" 2>/dev/null; then
        die "a cluster from $DIR is already running (stop it first: $0 stop)"
    fi
    write_configs
    if [ -L /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" = "$DIR/slurm.conf" ]; then :
    elif [ -e /etc/slurm/slurm.conf ]; then
        log "this machine has its own /etc/slurm/slurm.conf: not replacing it"; exit 3
    else
        mkdir -p /etc/slurm && ln -s "$DIR/slurm.conf" /etc/slurm/slurm.conf
    fi
    start_munge
    start_mariadb
    slurmdbd
    wait_for 60 slurmdbd sacctmgr -n list cluster
    local user; user=$(id -un)
    sacctmgr -i add cluster "$CLUSTER" >/dev/null 2>&1 || true
    sacctmgr -i add account "$ACCOUNT" cluster="$CLUSTER" description="CI account" >/dev/null 2>&1 || true
    sacctmgr -i add user "$user" account="$ACCOUNT" defaultaccount="$ACCOUNT" cluster="$CLUSTER" >/dev/null 2>&1 || true
    sacctmgr -n -p list assoc user="$user" account="$ACCOUNT" format=account | grep -q "^$ACCOUNT|" \
        || die "could not register user $user under account $ACCOUNT"
    slurmctld
    wait_for 60 slurmctld scontrol ping
    slurmd
    wait_for 90 "node $(hostname -s) to be idle" node_idle
    log "cluster up: partition=$PARTITION account=$ACCOUNT node=$(hostname -s) ($(nproc) CPUs), SLURM $(sinfo --version | cut -d' ' -f2)"
}

stop_pid() {  # stop_pid NAME PIDFILE
    local f=$2 pid
    [ -f "$f" ] || return 0
    pid=$(cat "$f")
    if kill "$pid" 2>/dev/null; then
        for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        kill -9 "$pid" 2>/dev/null || true
        log "stopped $1"
    fi
    rm -f "$f"
}

cmd_stop() {
    need_root
    scancel --user="$(id -un)" >/dev/null 2>&1 || true
    stop_pid slurmd "$DIR/run/slurmd.pid"
    stop_pid slurmctld "$DIR/run/slurmctld.pid"
    stop_pid slurmdbd "$DIR/run/slurmdbd.pid"
    stop_pid MariaDB /run/mysqld/ci-slurm.pid
    if [ -L /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" = "$DIR/slurm.conf" ]; then
        rm -f /etc/slurm/slurm.conf
    fi
    # munged stays for other users of this machine only if it was not ours; ours has no pid file here,
    # so it is left running: it is harmless and restartable.
}

case "${1:-}" in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    env) echo "export SLURM_CONF=$SLURM_CONF" ;;
    *) echo "usage: $0 install|start|stop|env" >&2; exit 2 ;;
esac
