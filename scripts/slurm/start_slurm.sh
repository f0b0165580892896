#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for the sweep tests (`--launcher slurm`) and for
# trying a sweep before taking it to a real cluster. Needs root and apt (Debian); no systemd.
#
# Starts munged, MariaDB + slurmdbd (accounting: without `sacct` submitit cannot tell that a job
# ended and waits forever), slurmctld and slurmd, writes /etc/slurm/{slurm,slurmdbd}.conf, and
# waits until the node is idle. Idempotent: with everything up it returns in about a second.
# Stop with scripts/slurm/stop_slurm.sh (stops only what this script started).
#
# env: SLURM_BASE=/tmp/local-slurm   state, spool, logs, pid files
#      SLURM_PARTITION=debug         the one partition (sweeps' launcher.slurm.partition)
#      SLURM_ACCOUNTING=1            0 = no slurmdbd/MariaDB (then sacct, and submitit, cannot work)
set -euo pipefail
BASE=${SLURM_BASE:-/tmp/local-slurm}
PART=${SLURM_PARTITION:-debug}
ACCT=${SLURM_ACCOUNTING:-1}
RUN=$BASE/run; LOG=$BASE/log
CONF=/etc/slurm/slurm.conf          # the default path: sbatch, squeue, sacct need no SLURM_CONF
DBDCONF=/etc/slurm/slurmdbd.conf
t0=$(date +%s)
say() { echo "[start_slurm +$(( $(date +%s) - t0 ))s] $*"; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
retry_until() { local n=$1; shift; for _ in $(seq 1 "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done; return 1; }

[ "$(id -u)" = 0 ] || { echo "start_slurm.sh: needs root" >&2; exit 3; }

# -- packages (Debian's slurm-wlm 22.05) -----------------------------------------------------
mkdir -p "$RUN" "$LOG" "$BASE/state" "$BASE/spool" /etc/slurm
PKGS="slurmctld slurmd slurm-client munge"; BINS="slurmctld slurmd sbatch munged"
if [ "$ACCT" = 1 ]; then PKGS="$PKGS slurmdbd mariadb-server"; BINS="$BINS slurmdbd mariadbd"; fi
need=0; for b in $BINS; do command -v "$b" >/dev/null || [ -x "/usr/sbin/$b" ] || need=1; done
if [ "$need" = 1 ]; then
  command -v apt-get >/dev/null || { echo "start_slurm.sh: SLURM missing and no apt-get" >&2; exit 3; }
  say "installing $PKGS"
  export DEBIAN_FRONTEND=noninteractive
  APT="apt-get -q -o DPkg::Lock::Timeout=300"   # wait for a dpkg lock another install holds
  ok=0
  for i in 1 2 3; do
    if $APT update >"$LOG/apt.log" 2>&1 && $APT install -y --no-install-recommends $PKGS >>"$LOG/apt.log" 2>&1; then ok=1; break; fi
    say "apt failed (see $LOG/apt.log), retry $i"; sleep 10
  done
  [ "$ok" = 1 ] || { tail -20 "$LOG/apt.log" >&2; exit 3; }
  say "installed"
fi

# -- munge (authentication between the daemons and the clients) ------------------------------
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge; dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
fi
chown munge:munge /etc/munge /etc/munge/munge.key; chmod 700 /etc/munge; chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge; chmod 755 /run/munge
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  say "munged already running"
else
  runuser -u munge -- /usr/sbin/munged --force
  retry_until 50 test -s /run/munge/munged.pid
  cp /run/munge/munged.pid "$RUN/munged.pid"
  say "munged started (pid $(cat "$RUN/munged.pid"))"
fi
munge -n | unmunge >/dev/null

# -- slurm.conf (before accounting: sacctmgr reads it too) -----------------------------------
HOST=$(hostname -s)
if [ "$ACCT" = 1 ]; then
  ACCT_LINES="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1"
else
  ACCT_LINES="AccountingStorageType=accounting_storage/none"
fi
# the node's exact topology from `slurmd -C` (a mismatch drains the node); 95% of RAM for jobs
NODELINE=$(slurmd -C | head -1 | sed -E 's/ RealMemory=[0-9]+//')
MEM=$(( $(awk '/MemTotal/{print $2}' /proc/meminfo) / 1024 * 95 / 100 ))
NEWCONF=$(cat <<CONF
# written by scripts/slurm/start_slurm.sh
ClusterName=localci
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire is also how long a requeued job waits before it may start again (default 120 s)
AuthInfo=cred_expire=10
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
${ACCT_LINES}
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# schedule every few seconds, so a requeued job restarts in ~10-20 s instead of minutes
SchedulerParameters=bf_interval=1,sched_interval=5
ReturnToService=2
SlurmctldPort=6817
SlurmdPort=6818
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MinJobAge=300
KillWait=5
${NODELINE} NodeAddr=127.0.0.1 RealMemory=${MEM} State=UNKNOWN
PartitionName=${PART} Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
)
CONF_CHANGED=0
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$NEWCONF" ]; then
  printf '%s\n' "$NEWCONF" > "$CONF"; CONF_CHANGED=1; say "wrote $CONF"
fi

# -- accounting: MariaDB + slurmdbd ----------------------------------------------------------
if [ "$ACCT" = 1 ]; then
  mkdir -p /run/mysqld; chown mysql:mysql /run/mysqld
  [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >"$LOG/mariadb-install.log" 2>&1
  if mariadb-admin ping >/dev/null 2>&1; then
    say "mariadb already running"
  else
    setsid /usr/sbin/mariadbd --user=mysql --datadir=/var/lib/mysql --socket=/run/mysqld/mysqld.sock \
      --bind-address=127.0.0.1 --innodb-lock-wait-timeout=900 --innodb-buffer-pool-size=256M \
      --log-error="$LOG/mariadb.log" </dev/null >>"$LOG/mariadb.out" 2>&1 &
    echo $! > "$RUN/mariadbd.pid"
    retry_until 120 mariadb-admin ping || { tail -20 "$LOG/mariadb.log" >&2; exit 1; }
    say "mariadb started (pid $(cat "$RUN/mariadbd.pid"))"
  fi
  mariadb -uroot -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  NEWDBD=$(cat <<CONF
# written by scripts/slurm/start_slurm.sh
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
DebugLevel=info
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
CONF
)
  if [ ! -f "$DBDCONF" ] || [ "$(cat "$DBDCONF")" != "$NEWDBD" ]; then
    printf '%s\n' "$NEWDBD" > "$DBDCONF"; say "wrote $DBDCONF"
  fi
  chown root:root "$DBDCONF"; chmod 600 "$DBDCONF"
  if alive "$RUN/slurmdbd.pid"; then
    say "slurmdbd already running (pid $(cat "$RUN/slurmdbd.pid"))"
  else
    /usr/sbin/slurmdbd          # daemonizes and writes its PidFile
    say "slurmdbd started"
  fi
  retry_until 60 sacctmgr -n list cluster || { tail -20 "$LOG/slurmdbd.log" >&2; exit 1; }
  sacctmgr -n -P list cluster format=cluster | grep -qx localci || sacctmgr -i add cluster localci >/dev/null
fi

# -- the controller and the node daemon ------------------------------------------------------
if alive "$RUN/slurmctld.pid"; then
  say "slurmctld already running (pid $(cat "$RUN/slurmctld.pid"))"
  if [ "$CONF_CHANGED" = 1 ]; then scontrol reconfigure; say "reconfigured"; fi
else
  /usr/sbin/slurmctld -i          # daemonizes; -i ignores state it cannot recover
  say "slurmctld started"
fi
if alive "$RUN/slurmd.pid"; then
  say "slurmd already running (pid $(cat "$RUN/slurmd.pid"))"
else
  /usr/sbin/slurmd
  say "slurmd started"
fi

# -- ready when the node is idle (a trailing '*' means not responding: no match) -------------
for _ in $(seq 1 120); do
  st=$(sinfo -h -N -n "$HOST" -o '%t' 2>/dev/null | head -1 || true)
  case "$st" in
    idle|mix|alloc) say "ready: node $HOST is $st"; exit 0 ;;
    drain*|down*|fail*) scontrol update nodename="$HOST" state=resume 2>/dev/null || true ;;
  esac
  sleep 1
done
echo "start_slurm.sh: the node did not become idle" >&2; sinfo -R >&2 || true
tail -n 30 "$LOG/slurmctld.log" "$LOG/slurmd.log" >&2
exit 1
