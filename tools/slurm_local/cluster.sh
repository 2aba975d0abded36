#!/usr/bin/env bash
# A real Slurm 22.05 test cluster on this machine: munge, MariaDB, slurmdbd, slurmctld and two slurmd "nodes",
# from Debian's packages, with every file (configs, logs, spool, database, PID files) under one state folder.
#
#   tools/slurm_local/cluster.sh up   STATE_DIR   # install the packages if missing (root), start, wait until idle
#   tools/slurm_local/cluster.sh down STATE_DIR   # cancel the jobs, stop every daemon by its recorded PID
#   tools/slurm_local/cluster.sh status STATE_DIR
#
# After `up`, STATE_DIR/cluster.env holds what clients need (SLURM_CONF, account, partition, nodes):
#   set -a; . STATE_DIR/cluster.env; set +a; sbatch -A "$RLAD_SLURM_ACCOUNT" ...
# Nothing in /etc changes and no daemon is found or stopped by name: `down` stops exactly the PIDs `up` recorded.
# Needs root (the daemons run as root, munged as user munge). Measured setup: docs/environment.md.
set -euo pipefail

PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
CLUSTER=rladtest
ACCOUNT=rlad
PARTITION=batch
CTLD_PORT=${RLAD_SLURM_CTLD_PORT:-6817}
DBD_PORT=${RLAD_SLURM_DBD_PORT:-6819}
NODE_PORTS=(${RLAD_SLURM_NODE_PORTS:-6818 6820})
DB_PORT=${RLAD_SLURM_DB_PORT:-3317}
MUNGE_SOCKET=/run/munge/munge.socket.2
# PID files in stop order: nodes first (after their jobs), then the controller, accounting, database, munge.
DAEMONS=(slurmd-0 slurmd-1 slurmctld slurmdbd mariadbd munged)

say() { echo "[slurm_local] $*" >&2; }
die() { say "error: $*"; exit 1; }

usage() { sed -n '2,12p' "$0" >&2; exit 2; }

need_root() { [ "$(id -u)" = 0 ] || die "must run as root (the daemons run as root; munged as user munge)"; }

install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null || die "packages missing (${missing[*]}) and no apt-get to install them"
    say "installing ${missing[*]} (about 35 s)"
    # policy-rc.d keeps the packages from starting their own system daemons (no systemd here; we start our own).
    local policy=/usr/sbin/policy-rc.d created=0
    if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod 755 "$policy"; created=1; fi
    local rc=0
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${missing[@]}"; } > "$LOGDIR/apt.log" 2>&1 || rc=$?
    [ $created = 1 ] && rm -f "$policy"
    [ $rc = 0 ] || { tail -20 "$LOGDIR/apt.log" >&2; die "apt-get install failed (log: $LOGDIR/apt.log)"; }
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# alive NAME: the PID recorded for NAME is running and is still that daemon (not a reused PID).
pid_of() { local f="$RUN/$1.pid"; [ -s "$f" ] && tr -dc 0-9 < "$f"; }
alive() {
    local pid comm; pid=$(pid_of "$1") || return 1; [ -n "$pid" ] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    [ "$comm" = "${1%-[0-9]}" ]
}

wait_for() {  # wait_for SECONDS WHAT COMMAND...
    local limit=$1 what=$2; shift 2
    local end=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $end ] || { say "timed out after ${limit}s waiting for $what"; return 1; }
        sleep 0.3
    done
}

write_configs() {
    local host=$1 cpus mem_mb
    cpus=$(nproc)
    mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 / 4)}' /proc/meminfo)  # a quarter each: never "Low RealMemory"
    local db_pass
    # The database keeps its user across restarts: reuse the password the first `up` made.
    db_pass=$(sed -n 's/^StoragePass=//p' "$ETC/slurmdbd.conf" 2>/dev/null || true)
    [ -n "$db_pass" ] || db_pass=$(head -c 18 /dev/urandom | base64 | tr -dc A-Za-z0-9)
    cat > "$ETC/slurm.conf" <<CONF
# Written by tools/slurm_local/cluster.sh: a two-node test cluster on one machine.
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/pgid
TaskPlugin=task/none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$host
AccountingStoragePort=$DBD_PORT
JobCompType=jobcomp/none
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool/%n
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd-%n.log
SlurmctldTimeout=60
SlurmdTimeout=120
InactiveLimit=0
KillWait=5
MinJobAge=600
NodeName=$host NodeHostname=$host NodeAddr=127.0.0.1 Port=${NODE_PORTS[0]} CPUs=$cpus Boards=1 SocketsPerBoard=1 CoresPerSocket=$cpus ThreadsPerCore=1 RealMemory=$mem_mb State=UNKNOWN
NodeName=${host}2 NodeHostname=${host}2 NodeAddr=127.0.0.1 Port=${NODE_PORTS[1]} CPUs=$cpus Boards=1 SocketsPerBoard=1 CoresPerSocket=$cpus ThreadsPerCore=1 RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$host,${host}2 Default=YES MaxTime=INFINITE State=UP
CONF
    cat > "$ETC/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdHost=$host
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOGDIR/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$db_pass
StorageLoc=slurm_acct_db
CONF
    chmod 600 "$ETC/slurmdbd.conf"
    cat > "$S/cluster.env" <<ENV
SLURM_CONF=$ETC/slurm.conf
RLAD_SLURM_CLUSTER=$S
RLAD_SLURM_ACCOUNT=$ACCOUNT
RLAD_SLURM_PARTITION=$PARTITION
RLAD_SLURM_NODES=$host,${host}2
ENV
}

start_munge() {
    alive munged && return 0
    # Slurm's clients (sacctmgr above all) ignore AuthInfo=socket=...: munged must listen on the default socket.
    if [ -S "$MUNGE_SOCKET" ] && munge -n -S "$MUNGE_SOCKET" 2>/dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1; then
        say "using the munged already listening on $MUNGE_SOCKET (not ours: down leaves it running)"
        return 0
    fi
    local key=/etc/munge/munge.key
    if [ ! -s "$MUNGE/munge.key" ]; then
        if [ -s "$key" ]; then cp "$key" "$MUNGE/munge.key"; else head -c 1024 /dev/urandom > "$MUNGE/munge.key"; fi
    fi
    mkdir -p "$(dirname "$MUNGE_SOCKET")"
    chown munge:munge "$(dirname "$MUNGE_SOCKET")"; chmod 755 "$(dirname "$MUNGE_SOCKET")"
    chown -R munge:munge "$MUNGE"; chmod 600 "$MUNGE/munge.key"; chmod 755 "$MUNGE"
    runuser -u munge -- munged --socket="$MUNGE_SOCKET" --key-file="$MUNGE/munge.key" \
        --pid-file="$MUNGE/munged.pid" --log-file="$MUNGE/munged.log" --seed-file="$MUNGE/munged.seed" \
        || die "munged did not start (log: $MUNGE/munged.log)"
    wait_for 10 munged test -S "$MUNGE_SOCKET"
    cp "$MUNGE/munged.pid" "$RUN/munged.pid"
}

start_mariadb() {
    alive mariadbd && return 0
    port_free "$DB_PORT" || die "port $DB_PORT (MariaDB) is taken: set RLAD_SLURM_DB_PORT"
    if [ ! -d "$DB/mysql" ]; then
        mariadb-install-db --no-defaults --datadir="$DB" --user=root --auth-root-authentication-method=socket \
            --skip-test-db > "$LOGDIR/mariadb-install.log" 2>&1 || die "mariadb-install-db failed ($LOGDIR/mariadb-install.log)"
    fi
    # The server forks itself off this shell's session (setsid): it must not die with the caller's terminal.
    setsid mariadbd --no-defaults --datadir="$DB" --socket="$DB/mysqld.sock" --port="$DB_PORT" \
        --bind-address=127.0.0.1 --user=root --pid-file="$RUN/mariadbd.pid" --log-error="$LOGDIR/mariadb.log" \
        --skip-name-resolve --innodb-buffer-pool-size=32M < /dev/null > /dev/null 2>&1 &
    wait_for 60 "MariaDB" mariadb --no-defaults --socket="$DB/mysqld.sock" -u root -e "select 1" \
        || die "MariaDB did not start (log: $LOGDIR/mariadb.log)"
    wait_for 10 "mariadbd.pid" alive mariadbd
    local pass
    pass=$(sed -n 's/^StoragePass=//p' "$ETC/slurmdbd.conf")
    mariadb --no-defaults --socket="$DB/mysqld.sock" -u root <<SQL
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
SQL
}

start_slurmdbd() {
    alive slurmdbd && return 0
    port_free "$DBD_PORT" || die "port $DBD_PORT (slurmdbd) is taken by another process: set RLAD_SLURM_DBD_PORT"
    setsid slurmdbd < /dev/null > "$LOGDIR/slurmdbd.out" 2>&1 || die "slurmdbd failed (log: $LOGDIR/slurmdbd.log)"
    wait_for 30 "slurmdbd" sacctmgr -n list cluster || die "slurmdbd does not answer (log: $LOGDIR/slurmdbd.log)"
    wait_for 10 "slurmdbd.pid" alive slurmdbd
    sacctmgr -n list cluster format=cluster -P | grep -qx "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null
    sacctmgr -n list account format=account -P | grep -qx "$ACCOUNT" || sacctmgr -i add account "$ACCOUNT" \
        Cluster="$CLUSTER" Description="rlad-megatron tests" Organization=rlad >/dev/null
    local user
    for user in root "${SUDO_USER:-root}"; do
        # root exists from the start (account root): it still needs an association with our account.
        sacctmgr -n -P list assoc user="$user" account="$ACCOUNT" format=user | grep -qx "$user" || \
            sacctmgr -i add user "$user" Account="$ACCOUNT" Cluster="$CLUSTER" >/dev/null
    done
}

start_slurmctld() {
    alive slurmctld && return 0
    port_free "$CTLD_PORT" || die "port $CTLD_PORT (slurmctld) is taken by another process: set RLAD_SLURM_CTLD_PORT"
    setsid slurmctld -i < /dev/null > "$LOGDIR/slurmctld.out" 2>&1 || die "slurmctld failed (log: $LOGDIR/slurmctld.log)"
    wait_for 30 "slurmctld" scontrol ping || die "slurmctld does not answer (log: $LOGDIR/slurmctld.log)"
    wait_for 10 "slurmctld.pid" alive slurmctld
}

start_slurmd() {  # start_slurmd INDEX NODENAME
    local i=$1 node=$2
    if alive "slurmd-$i"; then return 0; fi
    port_free "${NODE_PORTS[$i]}" || die "port ${NODE_PORTS[$i]} (slurmd $node) is taken: set RLAD_SLURM_NODE_PORTS"
    mkdir -p "$STATE/spool/$node"
    setsid slurmd -N "$node" < /dev/null > "$LOGDIR/slurmd-$node.out" 2>&1 \
        || die "slurmd $node failed (log: $LOGDIR/slurmd-$node.log)"
    wait_for 15 "slurmd $node PID file" test -s "$RUN/slurmd-$node.pid" || die "slurmd $node: no PID file"
    cp "$RUN/slurmd-$node.pid" "$RUN/slurmd-$i.pid"
    wait_for 5 "slurmd $node" alive "slurmd-$i" || die "slurmd $node died (log: $LOGDIR/slurmd-$node.log)"
}

nodes_idle() { [ "$(sinfo -h -N -p "$PARTITION" -o %T | grep -cx idle)" = 2 ]; }

cmd_up() {
    need_root
    mkdir -p "$S"; chmod 755 "$S"
    mkdir -p "$ETC" "$RUN" "$LOGDIR" "$STATE/ctld" "$STATE/spool" "$MUNGE" "$DB"
    install_packages
    local host
    host=$(hostname -s)
    write_configs "$host"
    export SLURM_CONF=$ETC/slurm.conf
    local t0=$SECONDS
    start_munge
    start_mariadb
    start_slurmdbd
    start_slurmctld
    start_slurmd 0 "$host"
    start_slurmd 1 "${host}2"
    wait_for 60 "both nodes idle" nodes_idle || { sinfo -N >&2 || true; die "nodes not idle (logs: $LOGDIR)"; }
    say "up in $((SECONDS - t0)) s: nodes $host,${host}2, partition $PARTITION, account $ACCOUNT; $S/cluster.env"
}

cancel_jobs() {
    command -v scancel >/dev/null && alive slurmctld || return 0
    local jobs
    jobs=$(squeue -h -o %A 2>/dev/null || true)
    [ -n "$jobs" ] || return 0
    say "cancelling jobs: $(echo $jobs)"
    scancel $jobs 2>/dev/null || true
    wait_for 30 "jobs to end" test -z "$(squeue -h -o %A 2>/dev/null)" || true
}

steps_gone() {  # a live job step keeps a socket (<node>_<job>.<step>) in its node's spool folder
    local f
    for f in "$STATE"/spool/*/*; do [ -S "$f" ] && return 1; done
    return 0
}

stop_daemon() {  # stop_daemon NAME: TERM the recorded PID, wait, KILL if it will not go
    local name=$1 pid
    alive "$name" || { rm -f "$RUN/$name.pid"; return 0; }
    pid=$(pid_of "$name")
    kill -TERM "$pid" 2>/dev/null || true
    local end=$((SECONDS + 20))
    while [ -d "/proc/$pid" ] && [ $SECONDS -lt $end ]; do sleep 0.2; done
    if [ -d "/proc/$pid" ]; then say "$name ($pid) ignored SIGTERM: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; fi
    rm -f "$RUN/$name.pid"
}

cmd_down() {
    [ -d "$S" ] || { say "no state folder $S: nothing to stop"; return 0; }
    export SLURM_CONF=$ETC/slurm.conf
    cancel_jobs
    wait_for 30 "job steps to exit" steps_gone || say "warning: job step sockets left in $STATE/spool"
    local name
    for name in "${DAEMONS[@]}"; do stop_daemon "$name"; done
    rm -f "$RUN"/slurmd-*.pid
    say "down: every daemon recorded under $RUN stopped"
}

cmd_status() {
    local name pid rc=0
    for name in "${DAEMONS[@]}"; do
        pid=$(pid_of "$name" 2>/dev/null || true)
        if alive "$name"; then echo "$name running (pid $pid)"; else echo "$name stopped"; rc=3; fi
    done
    return $rc
}

[ $# -eq 2 ] || usage
S=$(mkdir -p "$2" && cd "$2" && pwd)
ETC=$S/etc RUN=$S/run LOGDIR=$S/log STATE=$S/state MUNGE=$S/munge DB=$S/db
case "$1" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    *) usage ;;
esac
