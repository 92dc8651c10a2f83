#!/usr/bin/env bash
# local_slurm.sh - a real single-node Slurm on localhost, for CI and for trying the pipeline.
#
#   local_slurm.sh start        install (if needed) and start munge, MariaDB, slurmdbd, slurmctld,
#                               slurmd; idempotent: does nothing when the cluster is already healthy.
#                               Waits until the node is idle and `sacct` answers.
#   local_slurm.sh stop         cancel all jobs, stop every daemon it started (by pid file) and
#                               whatever its slurmd left running.
#   local_slurm.sh status       show daemons, node and accounting; exit 0 only when healthy.
#   local_slurm.sh env          print `export SLURM_CONF=...` for this cluster, to `eval` in a shell.
#   local_slurm.sh stop-dbd | start-dbd | restart-dbd
#                               stop/start only slurmdbd (fault injection: accounting goes away).
#   local_slurm.sh stop-ctld | start-ctld
#                               stop/start only slurmctld, its jobs and state kept (fault
#                               injection: the controller restarts under a run).
#
# Debian 12 packages (Slurm 22.05), runs as root, needs no systemd. It runs from its own
# configuration only and leaves the machine's alone: /etc/slurm, /etc/munge, /run/munge and
# /run/mysqld are never touched. Everything it writes lives under QUANTPIPE_SLURM_DIR (default
# .slurm/ in this checkout, which git ignores; see below): conf files, pid files, logs, spool, controller
# state, the MariaDB datadir, the munge key and the munge and MariaDB sockets. Client commands
# (sinfo, sbatch, squeue, sacct) find this cluster through SLURM_CONF:
#   eval "$(bash workflow/scripts/local_slurm.sh env)"
# and jobs submitted from that shell inherit it. `stop` stops every process it started; only the
# Debian packages it installed stay.
#
# A start that finds slurmctld not running is a *fresh* start: the controller state AND the
# accounting database are wiped together (job ids restart at 1; keeping only one of the two makes
# `sacct -j 1` return an old job). A start that finds slurmctld running only starts what is missing.
# The node advertises its CPU's vector and INT8 flags (avx2, avx512_vnni, amx_int8, ...) as node
# features, for `--constraint` (the node classes of profiles/slurm).
# Before it starts a daemon it checks that the daemon's TCP port is free: a port held by another
# Slurm (the machine's own, or another checkout's) is an error that names the port and its holder.
#
# Environment:
#   QUANTPIPE_SLURM_DIR     state directory; the munge and mysql users must reach it, so every
#                           directory above it must be open to others. Default <checkout>/.slurm,
#                           or, where a directory above the checkout is closed to others (a home
#                           folder of mode 750), /var/tmp/quantpipe-slurm-<checksum of the
#                           checkout's path>; `start` and `status` say which
#   QUANTPIPE_SLURM_CPUS    CPUs the node advertises (default 8; more than the machine has, so a
#                           sweep of small jobs runs concurrently; wrong for benchmarks)
#   QUANTPIPE_SLURM_MEM_MB  RealMemory of the node in MB (default 64000; like the CPUs, more than the
#                           machine has, so that jobs asking for a profile's memory run side by side)
#   QUANTPIPE_SLURM_GPUS    fake GPUs (gres gpu, files are symlinks to /dev/null; default 2)
#   QUANTPIPE_SLURM_MAXTIME partition MaxTime (default 2-00:00:00)
#   QUANTPIPE_SLURM_TIMEOUT seconds to wait for each daemon (default 60)
#   QUANTPIPE_SLURM_CTLD_PORT, QUANTPIPE_SLURM_SLURMD_PORT, QUANTPIPE_SLURM_DBD_PORT
#                           TCP ports of slurmctld, slurmd and slurmdbd, on all addresses
#                           (default 6817, 6818, 6819, Slurm's own; choose others beside another
#                           Slurm)
# Changing CPUS/MEM/GPUS/MAXTIME takes effect on the next fresh start (stop, then start); changing
# a port, on the next start (which restarts the Slurm daemons with it).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# others_can_enter DIR: DIR and every directory above it are open (o+x) to other users.
others_can_enter() {
    local dir=$1 mode
    while [[ $dir != / ]]; do
        mode=$(stat -c %a "$dir") || return 1
        ((8#$mode & 1)) || return 1
        dir=$(dirname "$dir")
    done
}
# The checkout's own .slurm where munge and mysql can reach it; else one place per checkout that
# they can, outside it (the only files this script writes outside the checkout).
default_dir() {
    if others_can_enter "$REPO"; then
        echo "$REPO/.slurm"
    else
        echo "/var/tmp/quantpipe-slurm-$(printf %s "$REPO" | cksum | cut -d' ' -f1)"
    fi
}
DIR=$(realpath -m "${QUANTPIPE_SLURM_DIR:-$(default_dir)}")
CPUS=${QUANTPIPE_SLURM_CPUS:-8}
MEM_MB=${QUANTPIPE_SLURM_MEM_MB:-64000}
NGPUS=${QUANTPIPE_SLURM_GPUS:-2}
MAXTIME=${QUANTPIPE_SLURM_MAXTIME:-2-00:00:00}
TIMEOUT=${QUANTPIPE_SLURM_TIMEOUT:-60}
CTLD_PORT=${QUANTPIPE_SLURM_CTLD_PORT:-6817}
SLURMD_PORT=${QUANTPIPE_SLURM_SLURMD_PORT:-6818}
DBD_PORT=${QUANTPIPE_SLURM_DBD_PORT:-6819}
CLUSTER=quantpipe
NODE=$(hostname -s)

ETC=$DIR/etc
RUN=$DIR/run
LOG=$DIR/log
STATE=$DIR/state
DATADIR=$DIR/mysql
MUNGEDIR=$DIR/munge
GPUDEV=$DIR/dev
# The sockets live in their own directories, owned by the daemon that creates them (as /run/munge
# and /run/mysqld are); munged refuses a socket directory that others may write to.
MUNGE_SOCKET=$RUN/munge/munge.socket.2
MYSQL_SOCKET=$RUN/mysqld/mysqld.sock
ACCT_DB=slurm_acct_db
PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)

export SLURM_CONF=$ETC/slurm.conf
# Run from inside a job, this script's own processes must not look like a job's (see leftovers).
unset SLURM_CLUSTER_NAME
T0=${EPOCHREALTIME/[.,]/}

# say MESSAGE: a progress line with the seconds since this invocation began.
say() {
    local us=$((${EPOCHREALTIME/[.,]/} - T0))
    printf '[local_slurm %3d.%01ds] %s\n' $((us / 1000000)) $((us % 1000000 / 100000)) "$*"
}
warn() { say "WARNING: $*" >&2; }

# die MESSAGE [LOGFILE...]: print the message and the tail of each log, exit 1.
die() {
    local msg=$1
    shift
    say "ERROR: $msg" >&2
    local f
    for f in "$@"; do
        if [[ -s $f ]]; then
            echo "----- last 25 lines of $f -----" >&2
            tail -n 25 "$f" >&2
            echo "----- end of $f -----" >&2
        fi
    done
    exit 1
}

# wait_for SECONDS WHAT CMD...: poll CMD every 0.2 s until it succeeds; on timeout print CMD's
# last output and return 1.
wait_for() {
    local secs=$1 what=$2
    shift 2
    local deadline=$((SECONDS + secs)) out
    until out=$("$@" 2>&1); do
        if ((SECONDS >= deadline)); then
            say "timed out after ${secs}s waiting for $what; last try of '$*' said:" >&2
            printf '%s\n' "${out:-(nothing)}" | tail -n 5 | sed 's/^/    /' >&2
            return 1
        fi
        sleep 0.2
    done
}

# ---------------------------------------------------------------- processes and pid files

# The daemons, their pid file, process name (/proc/PID/comm) and log.
pidfile_of() {
    case $1 in
    munged) echo "$MUNGEDIR/munged.pid" ;;
    mariadbd) echo "$DATADIR/mariadbd.pid" ;;
    slurmdbd | slurmctld | slurmd) echo "$RUN/$1.pid" ;;
    esac
}
log_of() {
    case $1 in
    munged) echo "$MUNGEDIR/munged.log" ;;
    mariadbd) echo "$LOG/mariadb.log" ;;
    slurmdbd | slurmctld | slurmd) echo "$LOG/$1.log" ;;
    esac
}

# running PID: the process exists and is not a zombie (PID 1 here may be slow to reap them).
running() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat:0:1} != [ZX] ]]
}

# pid_of NAME: print the pid if the pid file names a live process called NAME.
pid_of() {
    local f pid comm
    f=$(pidfile_of "$1")
    [[ -r $f ]] || return 1
    pid=$(tr -dc '0-9' <"$f")
    [[ -n $pid ]] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    running "$pid" || return 1
    # mariadbd may show up as mysqld (older name); both are "our" server.
    if [[ $comm == "$1" || ($1 == mariadbd && $comm == mysqld) ]]; then
        echo "$pid"
        return 0
    fi
    return 1
}
alive() { pid_of "$1" >/dev/null; }

# stop_daemons NAME...: SIGTERM them all at once, wait up to 10 s, then SIGKILL what is left.
stop_daemons() {
    local name pid pids=() names=()
    for name in "$@"; do
        if pid=$(pid_of "$name"); then
            say "stopping $name (pid $pid)"
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
            names+=("$name")
        fi
    done
    local i k left
    for ((i = 0; i < 100; i++)); do
        left=0
        for pid in "${pids[@]}"; do running "$pid" && left=1; done
        ((left)) || break
        sleep 0.1
    done
    for k in "${!pids[@]}"; do
        if running "${pids[k]}"; then
            warn "${names[k]} (pid ${pids[k]}) ignored SIGTERM for 10 s: killing it"
            kill -KILL "${pids[k]}" 2>/dev/null || true
        fi
    done
    for name in "$@"; do rm -f "$(pidfile_of "$name")"; done
}

# spawn LOG CMD...: run CMD detached in its own session, with stdin from /dev/null, output to LOG
# and every other inherited fd closed (our lock, and any pipe of whoever ran us: a CI step that
# captures our output must not hang on the daemons' inherited pipes).
spawn() {
    local out=$1
    shift
    (
        for fd in /proc/self/fd/*; do
            fd=${fd##*/}
            ((fd > 2)) && eval "exec $fd>&-" 2>/dev/null
        done
        exec setsid "$@"
    ) </dev/null >>"$out" 2>&1 &
    disown || true
}

# ---------------------------------------------------------------- installation

packages_missing() {
    local p missing=()
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    echo "${missing[*]}"
}

POLICY=/usr/sbin/policy-rc.d
POLICY_BACKUP=""
restore_policy() {
    if [[ -n $POLICY_BACKUP ]]; then
        mv -f "$POLICY_BACKUP" "$POLICY"
        POLICY_BACKUP=""
    elif grep -q 'quantpipe local_slurm.sh' "$POLICY" 2>/dev/null; then
        rm -f "$POLICY"
    fi
}

install_packages() {
    local missing
    missing=$(packages_missing)
    [[ -z $missing ]] && return 0
    [[ $EUID -eq 0 ]] || die "packages missing ($missing) and not root: cannot install them"
    mkdir -p "$LOG"
    local apt_log=$LOG/apt.log
    local to_install
    read -r -a to_install <<<"$missing"
    say "installing Debian packages: $missing (log: $apt_log)"
    # Package scripts must not start daemons (no systemd here; we start our own copies).
    # The machine's own policy-rc.d, if any, is put back however we exit.
    POLICY_BACKUP=""
    if [[ -e $POLICY ]]; then
        POLICY_BACKUP=$(mktemp /usr/sbin/policy-rc.d.quantpipe.XXXXXX)
        cp -p "$POLICY" "$POLICY_BACKUP"
    fi
    trap restore_policy EXIT
    trap 'exit 130' INT TERM
    printf '#!/bin/sh\n# written by quantpipe local_slurm.sh during apt-get install\nexit 101\n' >"$POLICY"
    chmod 755 "$POLICY"
    local rc=0
    {
        export DEBIAN_FRONTEND=noninteractive
        apt-get -o DPkg::Lock::Timeout=300 update &&
            apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends "${to_install[@]}"
    } >"$apt_log" 2>&1 || rc=$?
    restore_policy
    trap - EXIT INT TERM
    ((rc == 0)) || die "apt-get failed (exit $rc)" "$apt_log"
    missing=$(packages_missing)
    [[ -z $missing ]] || die "still missing after apt-get: $missing" "$apt_log"
    say "packages installed"
}

mariadbd_bin() {
    local b
    for b in /usr/sbin/mariadbd /usr/sbin/mysqld; do
        [[ -x $b ]] && { echo "$b"; return 0; }
    done
    die "no mariadbd/mysqld binary found"
}

# ---------------------------------------------------------------- configuration

# node_features: the CPU's vector and INT8 flags, comma-separated, as a cluster advertises its CPU
# generations for `--constraint` (node classes in profiles/slurm select nodes by them).
node_features() {
    local flags f found=()
    flags=" $(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | cut -d: -f2) "
    for f in avx2 avx512f avx512_vnni avx512_bf16 avx_vnni amx_int8 amx_bf16; do
        [[ $flags == *" $f "* ]] && found+=("$f")
    done
    local IFS=,
    echo "${found[*]}"
}

# slurm_conf: print the slurm.conf this script wants (start writes it; a running cluster whose
# file differs in more than the QUANTPIPE_SLURM_* lines is restarted with it).
slurm_conf() {
    local gres_node="" gres_types="" features
    if ((NGPUS > 0)); then
        gres_node="Gres=gpu:$NGPUS"
        gres_types="GresTypes=gpu"
    fi
    features=$(node_features)
    cat <<EOF
# Written by workflow/scripts/local_slurm.sh at a fresh start or when its settings change; do not edit.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# our munged, not the machine's (auth/munge and cred/munge both read socket=)
AuthInfo=cred_expire=10,socket=$MUNGE_SOCKET
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
MailProg=/bin/true
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
# scheduling: start jobs at once (defaults make 20 tiny jobs take 26 s instead of ~2 s)
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=2
# one slurmd starting hundreds of jobs on a small machine answers late: with the default 10 s,
# srun's step launch fails ("Socket timed out on send/recv operation") and so does the job
MessageTimeout=60
SelectType=select/cons_tres
# memory is a consumable resource, as on real clusters: only then does a job's --mem reach the
# node as a limit (with CR_Core alone nothing is enforced); a job without --mem gets 2000 MB per CPU
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=2000
# reject at submit time what can never run (unknown partition, too many GPUs/CPUs, too long)
EnforcePartLimits=ALL
# time limits: enforced exactly; requeue allowed; cancelled jobs do not block the node for 30 s
OverTimeLimit=0
KillWait=5
JobRequeue=1
MinJobAge=600
InactiveLimit=0
# the node advertises the configured CPUs/memory, not what the machine has
SlurmdParameters=config_overrides
$gres_types
# accounting through slurmdbd, so that sacct (and submitit, snakemake) see finished jobs
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
# for slurmdbd, the munge socket is given here (slurmdbd.conf's AuthInfo on the other side)
AccountingStoragePass=$MUNGE_SOCKET
AccountingStorageTRES=gres/gpu
# memory limits without cgroups: the accounting poller reads each step's RSS every 10 s and kills
# a step that uses more than the job's --mem (the job ends OUT_OF_MEMORY). Each poll of each step
# reads all of /proc: every 2 s, 200 jobs in flight (400 steps) kept both cores busy in the kernel
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=10
JobAcctGatherParams=OverMemoryKill
JobCompType=jobcomp/none

NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB $gres_node ${features:+Features=$features} State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=$MAXTIME State=UP
PartitionName=gpu Nodes=$NODE Default=NO MaxTime=$MAXTIME State=UP
EOF
}

# The lines of a slurm.conf that this script fixes (not comments, not the node, partition and GPU
# lines that QUANTPIPE_SLURM_* set: those take effect on a fresh start only).
fixed_lines() { grep -v -e '^#' -e '^$' -e '^NodeName=' -e '^PartitionName=' -e '^GresTypes=' "$@"; }
conf_outdated() {
    [[ -f $ETC/slurm.conf ]] && ! diff -q <(slurm_conf | fixed_lines) <(fixed_lines "$ETC/slurm.conf") >/dev/null
}

write_configs() {
    mkdir -p "$ETC" "$RUN" "$LOG" "$STATE/slurmctld" "$STATE/slurmd" "$GPUDEV"
    chmod 755 "$DIR" "$ETC" "$RUN" "$LOG"

    local gpu_files=() i
    for ((i = 0; i < NGPUS; i++)); do
        ln -sfn /dev/null "$GPUDEV/gpu$i"
        gpu_files+=("$GPUDEV/gpu$i")
    done
    slurm_conf >"$ETC/slurm.conf.new"
    mv -f "$ETC/slurm.conf.new" "$ETC/slurm.conf"

    {
        echo "# Written by workflow/scripts/local_slurm.sh: fake GPUs, each file a symlink to /dev/null"
        echo "AutoDetect=off"
        if ((NGPUS > 0)); then
            local f
            for f in "${gpu_files[@]}"; do echo "NodeName=$NODE Name=gpu File=$f"; done
        fi
    } >"$ETC/gres.conf"

    # slurmdbd refuses a slurmdbd.conf readable by others.
    (
        umask 077
        cat >"$ETC/slurmdbd.conf" <<EOF
# Written by workflow/scripts/local_slurm.sh
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
DebugLevel=info
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
# localhost: through the socket that MYSQL_UNIX_PORT names (see start_slurmdbd)
StorageHost=localhost
StorageUser=root
StorageLoc=$ACCT_DB
EOF
    )
    chmod 600 "$ETC/slurmdbd.conf"
}

# ---------------------------------------------------------------- the daemons, one by one

munge_ok() { munge -n -S "$MUNGE_SOCKET" | unmunge -S "$MUNGE_SOCKET"; }

start_munge() {
    if alive munged; then return 0; fi
    say "starting munged"
    mkdir -p "$MUNGEDIR"
    chown munge:munge "$MUNGEDIR"
    chmod 700 "$MUNGEDIR"
    local key=$MUNGEDIR/munge.key
    if [[ ! -s $key ]]; then
        dd if=/dev/urandom of="$key" bs=1024 count=1 status=none
    fi
    chown munge:munge "$key"
    chmod 400 "$key"
    rm -rf "${MUNGE_SOCKET%/*}"
    install -d -o munge -g munge -m 0755 "${MUNGE_SOCKET%/*}"
    spawn "$MUNGEDIR/munged.out" runuser -u munge -- /usr/sbin/munged \
        --key-file="$key" --pid-file="$MUNGEDIR/munged.pid" --log-file="$MUNGEDIR/munged.log" \
        --seed-file="$MUNGEDIR/munged.seed" --socket="$MUNGE_SOCKET"
    wait_for "$TIMEOUT" munged munge_ok ||
        die "munged did not come up" "$MUNGEDIR/munged.log" "$MUNGEDIR/munged.out"
    say "munged up (pid $(pid_of munged))"
}

mysql_q() { mariadb --no-defaults --protocol=socket -S "$MYSQL_SOCKET" -u root -N -B -e "$1"; }

start_mariadb() {
    if alive mariadbd; then return 0; fi
    local bin
    bin=$(mariadbd_bin)
    local log=$LOG/mariadb.log
    if [[ -S $MYSQL_SOCKET ]] && mysql_q 'SELECT 1' >/dev/null 2>&1; then
        die "a MariaDB server whose pid file is lost still answers on $MYSQL_SOCKET; stop it first"
    fi
    touch "$log"
    chown mysql:mysql "$log"
    if [[ ! -d $DATADIR/mysql ]]; then
        say "initialising the MariaDB datadir $DATADIR"
        rm -rf "$DATADIR"
        install -d -o mysql -g mysql -m 0750 "$DATADIR"
        mariadb-install-db --no-defaults --user=mysql --datadir="$DATADIR" \
            --auth-root-authentication-method=socket --skip-test-db --skip-name-resolve \
            >"$LOG/mariadb-install-db.log" 2>&1 ||
            die "mariadb-install-db failed" "$LOG/mariadb-install-db.log"
    fi
    rm -rf "${MYSQL_SOCKET%/*}"
    install -d -o mysql -g mysql -m 0755 "${MYSQL_SOCKET%/*}"
    say "starting MariaDB (socket only: $MYSQL_SOCKET)"
    spawn "$log" "$bin" --no-defaults --user=mysql --datadir="$DATADIR" \
        --socket="$MYSQL_SOCKET" --pid-file="$DATADIR/mariadbd.pid" --log-error="$log" \
        --skip-networking --skip-name-resolve \
        --innodb-buffer-pool-size=128M --innodb-log-file-size=64M \
        --innodb-lock-wait-timeout=900 --innodb-flush-log-at-trx-commit=2 \
        --max-allowed-packet=64M
    wait_for "$TIMEOUT" MariaDB mysql_q 'SELECT 1' || die "MariaDB did not come up" "$log"
    wait_for 10 "MariaDB pid file" alive mariadbd || die "MariaDB pid file missing" "$log"
    say "MariaDB up (pid $(pid_of mariadbd))"
}

dbd_answers() { sacctmgr -n -P list cluster format=cluster; }

start_slurmdbd() {
    if alive slurmdbd; then return 0; fi
    say "starting slurmdbd"
    # slurmdbd.conf cannot name a MariaDB socket; the client library takes it from MYSQL_UNIX_PORT.
    spawn "$LOG/slurmdbd.out" env MYSQL_UNIX_PORT="$MYSQL_SOCKET" /usr/sbin/slurmdbd
    wait_for "$TIMEOUT" slurmdbd dbd_answers ||
        die "slurmdbd did not come up" "$LOG/slurmdbd.log" "$LOG/slurmdbd.out" "$LOG/mariadb.log"
    say "slurmdbd up (pid $(pid_of slurmdbd))"
}

register_cluster() {
    if ! dbd_answers 2>/dev/null | grep -qx "$CLUSTER"; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null ||
            die "could not register cluster $CLUSTER in slurmdbd" "$LOG/slurmdbd.log"
    fi
}

start_slurmctld() {
    if alive slurmctld; then return 0; fi
    say "starting slurmctld"
    spawn "$LOG/slurmctld.out" /usr/sbin/slurmctld
    wait_for "$TIMEOUT" slurmctld scontrol ping ||
        die "slurmctld did not come up" "$LOG/slurmctld.log" "$LOG/slurmctld.out"
    say "slurmctld up (pid $(pid_of slurmctld))"
}

start_slurmd() {
    if alive slurmd; then return 0; fi
    say "starting slurmd (node $NODE: $CPUS CPUs, ${MEM_MB} MB, $NGPUS fake GPUs)"
    spawn "$LOG/slurmd.out" /usr/sbin/slurmd
    wait_for "$TIMEOUT" slurmd alive slurmd ||
        die "slurmd did not start" "$LOG/slurmd.log" "$LOG/slurmd.out"
}

node_state() { sinfo -h -N -n "$NODE" -o %t 2>/dev/null | head -n 1; }
node_usable() { [[ $(node_state) =~ ^(idle|mix|alloc|comp)$ ]]; }
node_idle() { [[ $(node_state) == idle ]]; }
sacct_answers() { sacct -n -X -S now -E now; }

# ---------------------------------------------------------------- ports and leftovers

# listeners PORT: a line for each socket listening on TCP PORT; nothing when the port is free.
listeners() {
    if command -v ss >/dev/null; then
        ss -Hltnp "sport = :$1"
    else # in /proc/net/tcp* the local address ends in the port in hex; state 0A is LISTEN
        awk -v port="$(printf ':%04X' "$1")" '$4 == "0A" && substr($2, length($2) - 4) == port' \
            /proc/net/tcp /proc/net/tcp6 2>/dev/null
    fi
}

# check_port DAEMON PORT VARIABLE: exit naming the holder and the fix if PORT is taken.
check_port() {
    local daemon=$1 port=$2 variable=$3 found pid holder="" conf state fix
    found=$(listeners "$port") || true
    [[ -z $found ]] && return 0
    pid=$(grep -o 'pid=[0-9]*' <<<"$found" | head -n 1 | cut -d= -f2) || true
    if [[ -n $pid ]]; then
        holder=" by $(cat "/proc/$pid/comm" 2>/dev/null || echo '?') (pid $pid)"
        conf=$(tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | sed -n 's/^SLURM_CONF=//p' | head -n 1) || true
    fi
    fix="Stop it if it is not needed, or give this cluster another port"
    if [[ -n ${conf:-} ]] && grep -qs 'Written by workflow/scripts/local_slurm.sh' "$conf"; then
        state=${conf%/etc/slurm.conf}
        holder+=", the local Slurm of $state"
        fix="Stop that one with 'QUANTPIPE_SLURM_DIR=$state bash $0 stop', or give this cluster another port"
    elif [[ $holder == " by slurm"* ]]; then
        fix="Leave this machine's own Slurm running and give this cluster another port"
    elif [[ -z $pid ]]; then
        holder+=" (the holder is not visible to this user: see 'ss -ltnp')"
    fi
    die "TCP port $port, which $daemon needs, is already in use$holder. $fix: '$variable=<free port> bash $0 start' (QUANTPIPE_SLURM_CTLD_PORT, _SLURMD_PORT and _DBD_PORT choose all three)"
}

# check_ports DAEMON...: check the port of each daemon named that is not running yet.
check_ports() {
    local d
    for d in "$@"; do
        alive "$d" && continue
        case $d in
        slurmctld) check_port slurmctld "$CTLD_PORT" QUANTPIPE_SLURM_CTLD_PORT ;;
        slurmd) check_port slurmd "$SLURMD_PORT" QUANTPIPE_SLURM_SLURMD_PORT ;;
        slurmdbd) check_port slurmdbd "$DBD_PORT" QUANTPIPE_SLURM_DBD_PORT ;;
        esac
    done
}

# Processes of this cluster that its daemons no longer account for: a step's slurmstepd (started
# with slurmd's environment, which has our SLURM_CONF) and any process of a job (our SLURM_CONF,
# and the SLURM_CLUSTER_NAME that Slurm gives a job, in its environment). A job's process whose parent exits becomes init's child, and
# proctrack/linuxproc then neither signals nor waits for it: one that ignores SIGTERM outlives
# its job.
leftovers() {
    local file pid stat ancestors=" " up=$BASHPID
    while ((up > 1)); do # never this script or what runs it
        ancestors+="$up "
        stat=$(cat "/proc/$up/stat" 2>/dev/null) || break
        read -r _ up _ <<<"${stat##*) }" # after the command name: state, parent pid, ...
    done
    for file in $(grep -lzxF "SLURM_CONF=$SLURM_CONF" /proc/[0-9]*/environ 2>/dev/null); do
        pid=${file#/proc/}
        pid=${pid%/environ}
        [[ $ancestors != *" $pid "* ]] || continue
        if grep -qzx "SLURM_CLUSTER_NAME=$CLUSTER" "$file" 2>/dev/null ||
            [[ $(cat "/proc/$pid/comm" 2>/dev/null) == slurmstepd ]]; then
            echo "$pid"
        fi
    done
}

# An older version of this script linked /etc/slurm/slurm.conf to its own file: say so, and leave
# the machine's /etc/slurm to its owner.
note_old_link() {
    local sys=/etc/slurm/slurm.conf
    if [[ -L $sys && $(readlink "$sys") == */quantpipe-slurm/etc/slurm.conf ]]; then
        warn "$sys links to $(readlink "$sys"), made by an older local_slurm.sh; this one leaves /etc/slurm alone (clients use SLURM_CONF). Remove the link, and put back the $sys.before-quantpipe.* file it moved aside if there is one."
    fi
}

# ---------------------------------------------------------------- subcommands

all_daemons=(munged mariadbd slurmdbd slurmctld slurmd)

healthy() {
    local d
    for d in "${all_daemons[@]}"; do alive "$d" || return 1; done
    scontrol ping >/dev/null 2>&1 && node_usable && sacct_answers >/dev/null 2>&1
}

check_settings() {
    local v
    for v in CPUS MEM_MB NGPUS TIMEOUT; do
        [[ ${!v} =~ ^[0-9]+$ ]] || die "QUANTPIPE_SLURM_$v must be a whole number, not '${!v}'"
    done
    ((CPUS >= 1 && MEM_MB >= 100)) || die "need QUANTPIPE_SLURM_CPUS >= 1 and QUANTPIPE_SLURM_MEM_MB >= 100"
    [[ $MAXTIME =~ ^([0-9]+-)?[0-9:]+$|^UNLIMITED$ ]] ||
        die "QUANTPIPE_SLURM_MAXTIME must look like 2-00:00:00, not '$MAXTIME'"
    for v in CTLD_PORT SLURMD_PORT DBD_PORT; do
        [[ ${!v} =~ ^[0-9]+$ ]] && ((${!v} >= 1 && ${!v} <= 65535)) ||
            die "QUANTPIPE_SLURM_$v must be a TCP port number, not '${!v}'"
    done
    ((CTLD_PORT != SLURMD_PORT && CTLD_PORT != DBD_PORT && SLURMD_PORT != DBD_PORT)) ||
        die "QUANTPIPE_SLURM_CTLD_PORT, _SLURMD_PORT and _DBD_PORT must differ"
    # a Unix socket's path has at most 107 bytes
    ((${#MUNGE_SOCKET} < 108 && ${#MYSQL_SOCKET} < 108)) ||
        die "the state directory $DIR is too deep for the munge and MariaDB sockets in it: set QUANTPIPE_SLURM_DIR to a shorter path"
}

# The cluster keeps the settings of its last fresh start: say so when the environment asks for
# other ones.
warn_if_config_differs() {
    local want="NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB"
    if ! grep -q "^$want " "$ETC/slurm.conf" ||
        ! grep -q "^PartitionName=cpu .*MaxTime=$MAXTIME " "$ETC/slurm.conf" ||
        [[ $(grep -c '^NodeName=.* Name=gpu ' "$ETC/gres.conf") != "$NGPUS" ]]; then
        warn "the running cluster was started with other settings than QUANTPIPE_SLURM_CPUS/MEM_MB/GPUS/MAXTIME ask for now; run '$0 stop' then '$0 start' to apply them"
    fi
}

cmd_start() {
    [[ $EUID -eq 0 ]] || die "must run as root (the daemons run as root/munge/mysql)"
    check_settings
    note_old_link
    if [[ -z ${QUANTPIPE_SLURM_DIR:-} && $DIR != "$REPO/.slurm" ]]; then
        say "state in $DIR: a directory above $REPO is closed to others, and the munge and mysql users must reach the state (QUANTPIPE_SLURM_DIR chooses another place)"
    fi
    mkdir -p "$DIR"
    if [[ -f $ETC/slurm.conf ]] && ! conf_outdated && healthy; then
        say "already up and healthy: node $NODE $(node_state), accounting answers ($DIR)"
        warn_if_config_differs
        return 0
    fi
    install_packages
    mkdir -p "$DIR"
    chmod 755 "$DIR"
    local user
    for user in munge mysql; do # their daemons keep their files and sockets in here
        runuser -u "$user" -- test -x "$DIR" ||
            die "user $user cannot reach $DIR: a directory above it is closed to others (chmod o+x it), or set QUANTPIPE_SLURM_DIR to a path that all users can reach"
    done

    local fresh=0
    if ! alive slurmctld; then
        fresh=1
        say "fresh start in $DIR: controller state and accounting database are cleared together"
        stop_daemons slurmd slurmdbd
        rm -rf "$STATE/slurmctld" "$STATE/slurmd"
        write_configs
    else
        say "slurmctld is running: starting only what is missing"
        [[ -f $ETC/slurm.conf ]] || die "slurmctld runs but $ETC/slurm.conf is missing; run stop first"
        if conf_outdated; then
            say "$ETC/slurm.conf differs from what this script writes: restarting slurmdbd, slurmctld and slurmd with the new one (jobs, controller state and accounting kept)"
            stop_daemons slurmd slurmctld slurmdbd
            write_configs
        fi
    fi

    check_ports slurmdbd slurmctld slurmd
    start_munge
    start_mariadb
    if ((fresh)); then
        mysql_q "DROP DATABASE IF EXISTS $ACCT_DB" || die "could not clear the accounting database" "$LOG/mariadb.log"
    fi
    start_slurmdbd
    register_cluster
    start_slurmctld
    start_slurmd

    say "waiting for node $NODE to register"
    if ((fresh)); then
        wait_for "$TIMEOUT" "node $NODE idle" node_idle ||
            die "node $NODE is '$(node_state)', not idle" "$LOG/slurmd.log" "$LOG/slurmctld.log"
    else
        if ! wait_for 10 "node $NODE usable" node_usable; then
            say "node $NODE is '$(node_state)': resuming it"
            scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
            wait_for "$TIMEOUT" "node $NODE usable" node_usable ||
                die "node $NODE is '$(node_state)'" "$LOG/slurmd.log" "$LOG/slurmctld.log"
        fi
    fi
    wait_for "$TIMEOUT" "sacct to answer" sacct_answers ||
        die "sacct does not answer" "$LOG/slurmdbd.log" "$LOG/slurmctld.log"
    say "ready: cluster $CLUSTER, node $NODE $(node_state), partitions cpu (default) and gpu; sacct answers"
    say "clients find it through SLURM_CONF: eval \"\$(bash $0 env)\" sets it in your shell"
}

queue_empty() { [[ -z $(squeue -h -o %A 2>/dev/null) ]]; }

cmd_stop() {
    if alive slurmctld; then
        local jobs
        jobs=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ')
        if [[ -n ${jobs// /} ]]; then
            say "cancelling jobs: $jobs"
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true
            wait_for 15 "jobs to end" queue_empty || true
        fi
    fi
    # the Slurm daemons first (they still need munge and, for slurmdbd, MariaDB to shut down)
    stop_daemons slurmd slurmctld slurmdbd
    local pids
    pids=$(leftovers | tr '\n' ' ')
    if [[ -n $pids ]]; then
        say "killing what the jobs left running: $pids"
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null || true
    fi
    stop_daemons mariadbd munged
    say "stopped (state kept in $DIR until the next start clears it)"
}

cmd_status() {
    local d pid ok=0
    echo "state directory: $DIR"
    for d in "${all_daemons[@]}"; do
        if pid=$(pid_of "$d"); then
            printf '  %-10s running (pid %s)\n' "$d" "$pid"
        else
            printf '  %-10s NOT running\n' "$d"
            ok=1
        fi
    done
    if alive slurmctld && scontrol ping >/dev/null 2>&1; then
        sinfo -o '%P %a %l %D %t %c %m %G %N' 2>&1 | sed 's/^/  /'
        node_usable || { echo "  node $NODE is not usable: $(node_state)"; ok=1; }
    else
        echo "  slurmctld does not answer"
        ok=1
    fi
    if sacct_answers >/dev/null 2>&1; then
        echo "  sacct answers"
    else
        echo "  sacct does NOT answer"
        ok=1
    fi
    if ((ok == 0)); then echo "healthy"; else echo "NOT healthy"; fi
    return $ok
}

cmd_stop_dbd() { stop_daemons slurmdbd; }

cmd_start_dbd() {
    [[ -f $ETC/slurmdbd.conf ]] || die "no $ETC/slurmdbd.conf: run '$0 start' first"
    DBD_PORT=$(sed -n 's/^DbdPort=//p' "$ETC/slurmdbd.conf") # the port the cluster started with
    check_ports slurmdbd
    start_munge
    start_mariadb
    start_slurmdbd
    wait_for "$TIMEOUT" "sacct to answer" sacct_answers ||
        die "sacct does not answer" "$LOG/slurmdbd.log"
    say "slurmdbd up, sacct answers"
}

cmd_start_ctld() {
    [[ -f $ETC/slurm.conf ]] || die "no $ETC/slurm.conf: run '$0 start' first"
    CTLD_PORT=$(sed -n 's/^SlurmctldPort=//p' "$ETC/slurm.conf") # the port the cluster started with
    check_ports slurmctld
    start_slurmctld
    wait_for "$TIMEOUT" "node $NODE usable" node_usable ||
        die "node $NODE is '$(node_state)'" "$LOG/slurmd.log" "$LOG/slurmctld.log"
    say "slurmctld up again, node $NODE $(node_state)"
}

cmd_env() {
    printf 'export SLURM_CONF=%q\n' "$SLURM_CONF"
    [[ -f $SLURM_CONF ]] || warn "$SLURM_CONF does not exist yet: run '$0 start'"
}

usage() {
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
}

main() {
    local cmd=${1:-}
    case $cmd in
    start | stop | status | env | stop-dbd | start-dbd | restart-dbd | stop-ctld | start-ctld) ;;
    -h | --help | help) usage; return 0 ;;
    *) usage >&2; return 2 ;;
    esac
    case $cmd in
    status) cmd_status; return ;;
    env) cmd_env; return ;;
    esac
    # One invocation at a time (spawn closes the lock fd 9 in every daemon).
    mkdir -p "$DIR"
    exec 9>"$DIR/.lock"
    flock -w 300 9 || die "another local_slurm.sh holds $DIR/.lock"
    case $cmd in
    start) cmd_start ;;
    stop) cmd_stop ;;
    stop-dbd) cmd_stop_dbd ;;
    start-dbd) cmd_start_dbd ;;
    restart-dbd) cmd_stop_dbd && cmd_start_dbd ;;
    stop-ctld) stop_daemons slurmctld ;;
    start-ctld) cmd_start_ctld ;;
    esac
}

main "$@"
