"""What a sweep job leaves in its run directory, under ``<run_dir>/jobs/``.

- ``job.json``       the latest submission: launcher, job id, sweep, time (written by the driver);
- ``run.lock``       held (``flock``) by the job while it works on the run: a live job on this
                     machine, and a guard against two jobs training one run at once;
- ``attempts.jsonl`` one line per start, preemption, failure and completion of the job (requeues
                     show here); the run is closed when its last line is ``completed``;
- the job's logs (``<pid>_0_log.out/err`` for a local job, ``<job id>_0_log.out/err`` from
  submitit), or links to them for SLURM arrays.
"""
from __future__ import annotations

import fcntl
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from harness.io import append_jsonl, file_lock, read_json, read_jsonl, write_json
from harness.run_dir import RunDir

def write_job(run_dir: str | Path, launcher: str, job_id: str, sweep: str) -> None:
    write_json(RunDir(run_dir).job_record,
               {"launcher": launcher, "job_id": str(job_id), "sweep": sweep, "submitted": time.time()})


def read_job(run_dir: str | Path) -> dict | None:
    path = RunDir(run_dir).job_record
    return read_json(path) if path.exists() else None


@contextmanager
def run_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold the run's lock for the duration (waits while another job holds it)."""
    with file_lock(RunDir(run_dir).run_lock):
        yield


def is_locked(run_dir: str | Path) -> bool:
    """Whether a job on this machine is working on the run right now."""
    path = RunDir(run_dir).run_lock
    if not path.exists():
        return False
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


def log_attempt(run_dir: str | Path, event: str, **extra) -> None:
    """Append one event (``start``, ``preempted``, ``failed``, ``completed``) to attempts.jsonl."""
    row = {"event": event, "time": time.time(), "host": socket.gethostname(), "pid": os.getpid(),
           **extra}
    append_jsonl(RunDir(run_dir).attempts, [row])


def read_attempts(run_dir: str | Path) -> list[dict]:
    """The events in order; a line cut short by a kill while it was appended is left out."""
    return read_jsonl(RunDir(run_dir).attempts)


def is_closed(run_dir: str | Path) -> bool:
    """Whether the last job to work on the run finished all of it: every seed evaluated, MLflow
    caught up and its run set FINISHED, the table row written. The job logs ``completed`` only
    after all of those, and its next start (more seeds, a re-run) opens the run again."""
    attempts = read_attempts(run_dir)
    return bool(attempts) and attempts[-1]["event"] == "completed"


def read_eval(run_dir: str | Path, seed: int, default_seed: int) -> dict | None:
    """The metrics of one evaluation seed, or None while it is not evaluated."""
    path = RunDir(run_dir).eval_metrics(seed, default_seed)
    return read_json(path) if path.exists() else None


def link_logs(run_dir: str | Path, paths: list[Path]) -> None:
    """Make a job's logs, written elsewhere (a SLURM array folder), visible in the run dir."""
    target = RunDir(run_dir).jobs
    target.mkdir(parents=True, exist_ok=True)
    for p in paths:
        p = Path(p).resolve()
        if p.parent == target.resolve():
            continue
        link = target / p.name
        if not link.exists() and not link.is_symlink():
            link.symlink_to(p)
