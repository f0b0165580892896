"""What a sweep job leaves in its run directory, under ``<run_dir>/jobs/``.

- ``job.json``       the latest submission: launcher, job id, sweep, time (written by the driver);
- ``run.lock``       held (``flock``) by the job while it works on the run: a live job on this
                     machine, and a guard against two jobs training one run at once;
- ``attempts.jsonl`` one line per start and per preemption of the job (requeues show here);
- the submitit logs (``<job id>_0_log.out/err``), or links to them for SLURM arrays.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from harness.io import file_lock, read_json, write_json

JOBS = "jobs"


def jobs_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / JOBS


def write_job(run_dir: str | Path, launcher: str, job_id: str, sweep: str) -> None:
    write_json(jobs_dir(run_dir) / "job.json",
               {"launcher": launcher, "job_id": str(job_id), "sweep": sweep, "submitted": time.time()})


def read_job(run_dir: str | Path) -> dict | None:
    path = jobs_dir(run_dir) / "job.json"
    return read_json(path) if path.exists() else None


@contextmanager
def run_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold the run's lock for the duration (waits while another job holds it)."""
    with file_lock(jobs_dir(run_dir) / "run.lock"):
        yield


def is_locked(run_dir: str | Path) -> bool:
    """Whether a job on this machine is working on the run right now."""
    path = jobs_dir(run_dir) / "run.lock"
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
    path = jobs_dir(run_dir) / "attempts.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row, default=str) + "\n")


def read_attempts(run_dir: str | Path) -> list[dict]:
    path = jobs_dir(run_dir) / "attempts.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def eval_path(run_dir: str | Path, seed: int, default_seed: int) -> Path:
    """Where ``harness.evaluate.run.evaluate(run_dir, seed)`` leaves its metrics: ``metrics.json`` for
    the run's own ``eval.seed``, ``metrics-seed<s>.json`` for any other (``metrics_path`` there,
    without loading the config again)."""
    name = "metrics.json" if seed == default_seed else f"metrics-seed{seed}.json"
    return Path(run_dir) / name


def read_eval(run_dir: str | Path, seed: int, default_seed: int) -> dict | None:
    """The metrics of one evaluation seed, or None while it is not evaluated."""
    path = eval_path(run_dir, seed, default_seed)
    return read_json(path) if path.exists() else None


def link_logs(run_dir: str | Path, paths: list[Path]) -> None:
    """Make a job's logs, written elsewhere (a SLURM array folder), visible in the run dir."""
    target = jobs_dir(run_dir)
    target.mkdir(parents=True, exist_ok=True)
    for p in paths:
        p = Path(p).resolve()
        if p.parent == target.resolve():
            continue
        link = target / p.name
        if not link.exists() and not link.is_symlink():
            link.symlink_to(p)
