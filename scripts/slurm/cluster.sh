#!/usr/bin/env bash
# A real, single-host Slurm cluster for tests and CI: 4 fake nodes n1..n4 (one slurmd each,
# all on 127.0.0.1), one controller, accounting through slurmdbd.
#
#   bash scripts/slurm/cluster.sh up       install what is missing, start what is not running,
#                                          wait until n1..n4 are idle (idempotent; ~1 s when up)
#   bash scripts/slurm/cluster.sh down     cancel jobs, stop every daemon this script started
#   bash scripts/slurm/cluster.sh status   daemons, nodes, queue, accounting (exit 1 if not up)
#   bash scripts/slurm/cluster.sh reset    down, then delete all state (job ids, accounting db)
#   bash scripts/slurm/cluster.sh env      print `export SLURM_CONF=...` (eval-able)
#
# Accounting choice: slurmdbd backed by a real MariaDB (Debian's mariadb-server), as a private
# instance with its own datadir/socket/port under the state dir (a system MariaDB, if any, is
# left alone). Why: submitit learns that a job ended only from `sacct`; without accounting
# `sacct` fails ("Slurm accounting storage is disabled") and a job that dies without writing
# its result pickle is polled forever. accounting_storage/filetxt is gone from modern Slurm,
# jobcomp files don't answer `sacct -j` for running/requeued jobs, and a fake `sacct` shim
# would test the shim rather than Slurm. slurmdbd+MariaDB is what real clusters run.
#
# Design notes (why things are the way they are):
# - Root only, Debian only (apt-get slurm-wlm 22.05 + slurmdbd + mariadb-server + munge).
#   A policy-rc.d that exits 101 is in place during apt-get so package scripts don't try to
#   start services (there is no systemd here; this script starts every daemon itself).
# - Several slurmd daemons on one host (`slurmd -N nI`, one Port each); their spool, pid and
#   log files are per node via %n. n1..n4 are added to /etc/hosts as 127.0.0.1 because jobs
#   (e.g. a gloo rendezvous on MASTER_ADDR=n1) must be able to resolve them.
# - Daemons run as root (SlurmUser=root), so root can submit and tests need no extra users.
# - No cgroups (proctrack/linuxproc, task/none): optional, and a VM/container may not delegate
#   them. No GresTypes: a GPU request is rejected with Slurm's own "Invalid generic resource".
# - CPUs=4 per node on a 2-core box (oversubscribed on purpose, several tasks per node);
#   SlurmdParameters=config_overrides keeps slurmd from draining nodes for "too few CPUs".
# - JobRequeue=1 (batch jobs requeueable by default: `scontrol requeue`, submitit's
#   preemption/timeout requeue); KillWait=5 and AuthInfo=cred_expire=20 (a requeued job may
#   restart 20 s after the requeue instead of Slurm's default 120 s) keep requeue tests short.
# - Partition `urgent` (PriorityTier 2) preempts jobs of `debug` (Default, PreemptMode=REQUEUE,
#   GraceTime=30); SlurmctldParameters=preempt_send_user_signal delivers the job's --signal
#   (submitit: USR2@90) at preemption, as on a real preemptible cluster.
# - Configs live in the state dir; /etc/slurm/slurm.conf is made a symlink to ours (unless a
#   foreign slurm.conf is there; then export SLURM_CONF, see `env`). A config change restarts
#   the Slurm daemons on the next `up`. State (job ids, accounting) survives down/up; `reset`
#   wipes both together (never one without the other, or `sacct -j ID` would see old jobs).
set -euo pipefail

STATE=${LIFT_DIST_SLURM_STATE:-/var/lib/lift-dist-slurm}
CLUSTER=lift
ACCOUNT=lift
NODES=(n1 n2 n3 n4)
CPUS_PER_NODE=4
MEM_PER_NODE=4000            # MB; memory is not a consumable resource here (CR_CPU)
CTLD_PORT=6817
DBD_PORT=6819
SLURMD_PORT0=6821            # n1 -> 6821, n2 -> 6822, ...
MYSQL_PORT=6830
DB_PASS=lift-dist-slurm      # MariaDB bound to 127.0.0.1 only; not a secret
PACKAGES=(slurm-wlm slurmdbd mariadb-server munge)

ETC=$STATE/etc; RUN=$STATE/run; LOG=$STATE/log
export SLURM_CONF=$ETC/slurm.conf
# Daemons get a clean environment: if `up` runs inside a job or a test, SLURM_* and Python
# variables must not leak into slurmctld/slurmd (and from there into jobs).
DAEMON_ENV=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 SLURM_CONF="$SLURM_CONF")

log() { printf '[slurm-cluster] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit "${2:-1}"; }

# --- process helpers -------------------------------------------------------------------------
# PID 1 of a VM/container may be slow to reap orphans (seen here), so a daemon that exited can
# linger as a zombie: a pid file counts only if its process exists, is not a zombie and has
# the expected name (pids get reused).
pid_of() { [ -s "$1" ] && tr -dc 0-9 <"$1"; }
proc_alive() {  # pid [comm]
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }                      # drop "pid (comm) "; the state letter comes first
  [ "${stat%% *}" != Z ] || return 1
  [ -z "${2:-}" ] || [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ]
}
pid_alive() { local pid; pid=$(pid_of "$1") && [ -n "$pid" ] && proc_alive "$pid" "$2"; }

# Stop daemons given as pidfile:comm pairs: SIGTERM to all at once, wait, SIGKILL leftovers.
stop_daemons() {
  local spec pid pids=() i left
  for spec in "$@"; do
    if pid_alive "${spec%%:*}" "${spec##*:}"; then
      pid=$(pid_of "${spec%%:*}"); pids+=("$pid"); kill -TERM "$pid" 2>/dev/null || true
    fi
  done
  for ((i = 0; i < 300; i++)); do  # up to 30 s
    left=0
    for pid in "${pids[@]}"; do if proc_alive "$pid"; then left=1; fi; done
    [ "$left" = 0 ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do
    if proc_alive "$pid"; then log "pid $pid ignored SIGTERM; sending SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; fi
  done
  for spec in "$@"; do rm -f "${spec%%:*}"; done
}

wait_for() {  # seconds command...: poll until the command succeeds
  local t=$1 i; shift
  for ((i = 0; i < t * 4; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.25
  done
  return 1
}

# Run a daemon in the foreground (-D) in its own session with no inherited stdio: no
# daemonizing fork that leaves zombies, and callers such as subprocess.run(capture_output=True)
# don't wait forever on a pipe the daemon holds open.
spawn() {  # outfile command...
  local out=$1; shift
  setsid "${DAEMON_ENV[@]}" "$@" </dev/null >>"$out" 2>&1 9>&- &   # 9: the flock fd below
}

# --- install ---------------------------------------------------------------------------------
have_binaries() {
  local b
  for b in slurmctld slurmd slurmdbd sinfo sbatch srun sacct sacctmgr scontrol munge munged \
           mariadbd mariadb mariadb-install-db; do
    command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || return 1
  done
}

install_packages() {
  have_binaries && return 0
  command -v apt-get >/dev/null || die "Slurm is not installed and apt-get is not available" 3
  local policy=/usr/sbin/policy-rc.d ours=0 rc=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 755 "$policy"; ours=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT   # also when interrupted
  fi
  log "installing ${PACKAGES[*]} with apt-get (one-time; log: $STATE/apt.log)"
  {
    apt-get -q -o DPkg::Lock::Timeout=300 update &&
    DEBIAN_FRONTEND=noninteractive apt-get -q -y -o DPkg::Lock::Timeout=300 \
      -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
      install --no-install-recommends "${PACKAGES[@]}"
  } </dev/null >"$STATE/apt.log" 2>&1 || rc=$?
  if [ "$ours" = 1 ]; then rm -f "$policy"; trap - EXIT; fi
  if [ "$rc" != 0 ] || ! have_binaries; then
    tail -n 20 "$STATE/apt.log" >&2
    die "apt-get install failed (full log: $STATE/apt.log)" 3
  fi
}

# --- configuration ---------------------------------------------------------------------------
ctld_host() { hostname -s; }   # slurmctld only runs where SlurmctldHost matches the hostname

render_slurm_conf() {
  local i all
  all=$(IFS=,; echo "${NODES[*]}")
  cat <<EOF
# Generated by scripts/slurm/cluster.sh -- edit the script, not this file.
ClusterName=$CLUSTER
SlurmctldHost=$(ctld_host)(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# Step credential lifetime; it is also how long a requeued job waits before it may start
# again (default 120 s). 20 s keeps requeue tests short and is plenty for local launches.
AuthInfo=cred_expire=20
StateSaveLocation=$STATE/ctld
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdSpoolDir=$STATE/spool/%n
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmdLogFile=$LOG/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
# Trust CPUs= below even though this box has fewer cores (else nodes get drained).
SlurmdParameters=config_overrides
# No cgroups: track job processes through /proc parentage.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
ReturnToService=2
# Batch jobs requeueable by default; SIGTERM->SIGKILL after 5 s on cancel/requeue/preemption.
JobRequeue=1
KillWait=5
UnkillableStepTimeout=60
SlurmctldTimeout=30
SlurmdTimeout=60
MessageTimeout=10
InactiveLimit=0
MinJobAge=300
SchedulerType=sched/backfill
# Schedule every 5 s (default 60) so a requeued job starts soon after it becomes eligible.
SchedulerParameters=sched_interval=5,bf_interval=5
# At preemption send the job's --signal (submitit: USR2) instead of waiting for its time.
SlurmctldParameters=preempt_send_user_signal
SelectType=select/cons_tres
# Allocate CPUs only; memory is not tracked (RealMemory just caps --mem requests).
SelectTypeParameters=CR_CPU
# Jobs in a higher-PriorityTier partition (urgent) requeue jobs of lower ones (debug).
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
# Unknown accounts are rejected at submission, as on a real cluster (root has an association).
AccountingStorageEnforce=associations
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
EOF
  for i in "${!NODES[@]}"; do
    echo "NodeName=${NODES[$i]} NodeHostname=localhost NodeAddr=127.0.0.1 Port=$((SLURMD_PORT0 + i)) CPUs=$CPUS_PER_NODE RealMemory=$MEM_PER_NODE State=UNKNOWN"
  done
  cat <<EOF
PartitionName=debug Nodes=$all Default=YES MaxTime=INFINITE DefaultTime=01:00:00 PriorityTier=1 PreemptMode=REQUEUE GraceTime=30 State=UP
PartitionName=urgent Nodes=$all Default=NO MaxTime=INFINITE DefaultTime=01:00:00 PriorityTier=2 PreemptMode=OFF State=UP
EOF
}

render_slurmdbd_conf() {
  cat <<EOF
# Generated by scripts/slurm/cluster.sh -- edit the script, not this file.
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$MYSQL_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
}

render_my_cnf() {
  cat <<EOF
# Generated by scripts/slurm/cluster.sh: a private MariaDB for slurmdbd only.
[mysqld]
user=mysql
datadir=$STATE/mysql
socket=$RUN/mysql/mysqld.sock
pid-file=$RUN/mysql/mysqld.pid
log-error=$LOG/mysql/mysqld.log
bind-address=127.0.0.1
port=$MYSQL_PORT
skip-name-resolve
skip-log-bin
performance_schema=OFF
# Sizes recommended for slurmdbd, scaled down for a test box.
innodb_buffer_pool_size=64M
innodb_log_file_size=48M
innodb_lock_wait_timeout=900
innodb_flush_log_at_trx_commit=2
[client]
socket=$RUN/mysql/mysqld.sock
EOF
}

# Replace file $1 by stdin only if the content differs; returns 0 when it changed.
write_if_changed() {
  local new
  new=$(cat)
  if [ -f "$1" ] && [ "$(cat "$1")" = "$new" ]; then return 1; fi
  printf '%s\n' "$new" >"$1.tmp"
  chmod "$2" "$1.tmp"
  mv -f "$1.tmp" "$1"
}

CONF_CHANGED=0
write_configs() {
  mkdir -p "$ETC" "$RUN" "$LOG" "$STATE/ctld" "$STATE/spool"
  chmod 755 "$STATE" "$ETC" "$RUN" "$LOG"
  if render_slurm_conf | write_if_changed "$ETC/slurm.conf" 644; then CONF_CHANGED=1; fi
  # slurmdbd insists on its config being private to SlurmUser.
  if render_slurmdbd_conf | write_if_changed "$ETC/slurmdbd.conf" 600; then CONF_CHANGED=1; fi
  render_my_cnf | write_if_changed "$ETC/my.cnf" 644 || true
  # Let plain `sinfo`/`sbatch` (and submitit, which calls them) find our config.
  local etc_conf=/etc/slurm/slurm.conf
  mkdir -p /etc/slurm
  if [ -L "$etc_conf" ] || [ ! -e "$etc_conf" ]; then
    ln -sfn "$ETC/slurm.conf" "$etc_conf"
  elif ! cmp -s "$etc_conf" "$ETC/slurm.conf"; then
    log "note: $etc_conf is not ours; use: eval \"\$(bash $0 env)\""
  fi
}

ensure_hosts() {
  # Node names (and this host's name, which slurmctld looks up) must resolve.
  local missing=() n
  for n in "${NODES[@]}" "$(ctld_host)"; do
    getent hosts "$n" >/dev/null 2>&1 || missing+=("$n")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  # Append rather than rewrite: /etc/hosts is often a bind mount that cannot be replaced.
  echo "127.0.0.1 ${missing[*]}  # lift-dist-slurm" >>/etc/hosts
  log "added to /etc/hosts: 127.0.0.1 ${missing[*]}"
}

# --- daemons ---------------------------------------------------------------------------------
munge_ok() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
  munge_ok && return 0
  if [ ! -s /etc/munge/munge.key ]; then  # Debian's postinst normally creates it
    if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key
    else dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; fi
  fi
  chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
  install -d -o munge -g munge -m 755 /run/munge
  install -d -o munge -g munge -m 700 /var/lib/munge /var/log/munge
  # munged refuses to run as root; --force gets past a stale socket left by a killed munged.
  spawn "$LOG/munged.out" runuser -u munge -- /usr/sbin/munged --foreground --force
  wait_for 10 munge_ok || die "munged did not start (see /var/log/munge/munged.log, $LOG/munged.out)"
  touch "$RUN/munged.ours"   # `down` stops munged only if this script started it
}

# shellcheck disable=SC2120  # called with arguments through wait_for
mysql_root() { mariadb --defaults-file="$ETC/my.cnf" -uroot "$@"; }

start_mariadb() {
  # mariadbd runs as user mysql: its socket, pid file and error log live in dirs it owns.
  install -d -o mysql -g mysql -m 755 "$RUN/mysql" "$LOG/mysql"
  if ! pid_alive "$RUN/mysql/mysqld.pid" mariadbd; then
    if [ ! -d "$STATE/mysql/mysql" ]; then
      log "initialising MariaDB datadir $STATE/mysql"
      rm -rf "$STATE/mysql"; install -d -o mysql -g mysql -m 750 "$STATE/mysql"
      mariadb-install-db --defaults-file="$ETC/my.cnf" --user=mysql --skip-test-db \
        --auth-root-authentication-method=socket </dev/null >"$LOG/mariadb-install-db.log" 2>&1 ||
        die "mariadb-install-db failed, see $LOG/mariadb-install-db.log"
    fi
    spawn "$LOG/mysql/mysqld.out" /usr/sbin/mariadbd --defaults-file="$ETC/my.cnf"
  fi
  wait_for 60 mysql_root -e 'SELECT 1' || die "MariaDB did not start, see $LOG/mysql/mysqld.log"
  # shellcheck disable=SC2119
  mysql_root <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
EOF
}

slurm_specs() {  # pidfile:comm of every Slurm daemon, compute nodes first
  local n
  for n in "${NODES[@]}"; do echo "$RUN/slurmd-$n.pid:slurmd"; done
  echo "$RUN/slurmctld.pid:slurmctld"
  echo "$RUN/slurmdbd.pid:slurmdbd"
}

restart_if_config_changed() {
  [ "$CONF_CHANGED" = 1 ] || return 0
  local specs s running=0
  mapfile -t specs < <(slurm_specs)
  for s in "${specs[@]}"; do if pid_alive "${s%%:*}" "${s##*:}"; then running=1; fi; done
  if [ "$running" = 1 ]; then
    log "configuration changed: restarting the Slurm daemons"
    stop_daemons "${specs[@]}"
  fi
}

start_slurmdbd() {
  pid_alive "$RUN/slurmdbd.pid" slurmdbd || spawn "$LOG/slurmdbd.out" /usr/sbin/slurmdbd -D
  # sacctmgr talks to slurmdbd directly; it answers once the database schema is in place.
  wait_for 60 sacctmgr -n -P list cluster || die "slurmdbd did not answer, see $LOG/slurmdbd.log"
}

register_accounting() {
  # Cluster first (before slurmctld connects), then an account with root in it.
  if [ -z "$(sacctmgr -n -P list cluster "$CLUSTER" format=cluster 2>/dev/null)" ]; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
  fi
  if [ -z "$(sacctmgr -n -P list account "$ACCOUNT" format=account 2>/dev/null)" ]; then
    sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description="lift-dist tests" Organization=lift-dist >/dev/null
  fi
  if [ -z "$(sacctmgr -n -P list assoc cluster="$CLUSTER" account="$ACCOUNT" user=root format=user 2>/dev/null)" ]; then
    sacctmgr -i add user root Account="$ACCOUNT" Cluster="$CLUSTER" >/dev/null
  fi
}

start_slurmctld() {
  pid_alive "$RUN/slurmctld.pid" slurmctld || spawn "$LOG/slurmctld.out" /usr/sbin/slurmctld -D
  wait_for 30 scontrol ping || die "slurmctld did not answer, see $LOG/slurmctld.log"
}

start_slurmds() {
  local n
  for n in "${NODES[@]}"; do
    mkdir -p "$STATE/spool/$n"
    pid_alive "$RUN/slurmd-$n.pid" slurmd || spawn "$LOG/slurmd-$n.out" /usr/sbin/slurmd -D -N "$n"
  done
}

nodes_idle() {
  # Every node listed once, each idle or busy with jobs (mixed/allocated), none down/drained.
  local states
  states=$(sinfo -h -N -p debug -o '%N %T' 2>/dev/null) || return 1
  [ "$(wc -l <<<"$states")" -eq "${#NODES[@]}" ] || return 1
  ! grep -Eqv ' (idle|mixed|allocated|completing)$' <<<"$states"
}

wait_nodes() {
  wait_for 30 nodes_idle && return 0
  # Nodes left down/drained by an earlier crash don't come back on their own: resume them.
  local all; all=$(IFS=,; echo "${NODES[*]}")
  log "resuming nodes: $(sinfo -h -N -p debug -o '%N=%T' | tr '\n' ' ')"
  scontrol update NodeName="$all" State=RESUME >/dev/null 2>&1 || true
  wait_for 30 nodes_idle || { sinfo -N >&2 || true; die "nodes did not become idle, see $LOG/slurmd-*.log"; }
}

# --- commands --------------------------------------------------------------------------------
queue_empty() { [ -z "$(squeue -h -o %i 2>/dev/null)" ]; }

need_root() { [ "$(id -u)" = 0 ] || die "must run as root" 2; }

cmd_up() {
  need_root
  mkdir -p "$STATE"
  local t0=$SECONDS
  install_packages
  write_configs
  ensure_hosts
  restart_if_config_changed
  start_munge
  start_mariadb
  start_slurmdbd
  register_accounting
  start_slurmctld
  start_slurmds
  wait_nodes
  log "up in $((SECONDS - t0))s: $(sinfo -h -o '%P %D %T' | tr '\n' ' ')(SLURM_CONF=$SLURM_CONF)"
}

cmd_down() {
  need_root
  if pid_alive "$RUN/slurmctld.pid" slurmctld; then
    # Jobs would otherwise outlive their slurmd (slurmstepd keeps running on its own).
    local jobs
    jobs=$(squeue -h -o %i 2>/dev/null | sort -u | tr '\n' ' ')
    # shellcheck disable=SC2086  # word splitting wanted: one argument per job id
    if [ -n "${jobs// }" ]; then scancel $jobs >/dev/null 2>&1 || true; fi
    wait_for 20 queue_empty || log "jobs still in the queue at shutdown"
  fi
  local specs
  mapfile -t specs < <(slurm_specs)
  stop_daemons "${specs[@]}"
  stop_daemons "$RUN/mysql/mysqld.pid:mariadbd"
  if [ -f "$RUN/munged.ours" ]; then
    stop_daemons /run/munge/munged.pid:munged; rm -f "$RUN/munged.ours"
  fi
  log "down"
}

cmd_status() {
  local rc=0 n
  show() {
    if pid_alive "$1" "$2"; then printf '  %-10s running (pid %s)\n' "$3" "$(pid_of "$1")"
    else printf '  %-10s stopped\n' "$3"; rc=1; fi
  }
  echo "state dir: $STATE   SLURM_CONF=$SLURM_CONF"
  echo "daemons:"
  if munge_ok; then echo "  munged     running"; else echo "  munged     stopped"; rc=1; fi
  show "$RUN/mysql/mysqld.pid" mariadbd mariadbd
  show "$RUN/slurmdbd.pid" slurmdbd slurmdbd
  show "$RUN/slurmctld.pid" slurmctld slurmctld
  for n in "${NODES[@]}"; do show "$RUN/slurmd-$n.pid" slurmd "slurmd $n"; done
  if pid_alive "$RUN/slurmctld.pid" slurmctld; then
    echo "nodes:"; sinfo -N -o '  %10N %10P %10T %5c %m' || rc=1
    echo "queue:"; squeue -o '  %8i %8P %20j %10T %5D %R' || rc=1
  fi
  if pid_alive "$RUN/slurmdbd.pid" slurmdbd; then
    echo "accounting (cluster|account|user):"; sacctmgr -n -P list assoc format=cluster,account,user | sed 's/^/  /' || rc=1
  fi
  return $rc
}

cmd_reset() {
  cmd_down
  log "deleting $STATE"
  rm -rf "$STATE"
  if [ -L /etc/slurm/slurm.conf ]; then rm -f /etc/slurm/slurm.conf; fi
}

# One `up`/`down` at a time (parallel test sessions may all call `up`); the lock file sits
# next to the state dir so `reset` can delete the latter.
if [ "$(id -u)" = 0 ] && [[ "${1:-}" =~ ^(up|down|reset|install)$ ]]; then
  mkdir -p "$(dirname "$STATE")"
  exec 9>"$STATE.lock"
  flock -w 900 9 || die "another cluster.sh holds $STATE.lock"
fi

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  reset) cmd_reset ;;
  env) echo "export SLURM_CONF=$SLURM_CONF" ;;
  install) need_root; mkdir -p "$STATE"; install_packages ;;
  *) echo "usage: $0 up|down|status|reset|env|install" >&2; exit 64 ;;
esac
