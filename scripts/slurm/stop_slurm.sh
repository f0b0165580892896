#!/usr/bin/env bash
# Stop the daemons scripts/slurm/start_slurm.sh started (by the pid files in $SLURM_BASE/run),
# and nothing else: a munged or MariaDB that was running before is left alone.
set -uo pipefail
BASE=${SLURM_BASE:-/tmp/local-slurm}
RUN=$BASE/run
stop() {  # $1 = pid file, $2 = the process name it must have (/proc/<pid>/comm)
  local f=$1 name=$2 pid
  [ -s "$f" ] || { echo "$name: not started by start_slurm.sh"; return 0; }
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null && [ "$(cat /proc/$pid/comm 2>/dev/null)" = "$name" ]; then
    kill -TERM "$pid"
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then echo "$name ($pid) ignored TERM: KILL"; kill -KILL "$pid"; fi
    echo "$name ($pid) stopped"
  else
    echo "$name: pid $pid is not a running $name"
  fi
  rm -f "$f"
}
stop "$RUN/slurmd.pid"    slurmd
stop "$RUN/slurmctld.pid" slurmctld
stop "$RUN/slurmdbd.pid"  slurmdbd
stop "$RUN/mariadbd.pid"  mariadbd
stop "$RUN/munged.pid"    munged
