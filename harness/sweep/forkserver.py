"""Local jobs forked from a server that imported torch, Lightning, MLflow and the harness once.

A fresh Python process spends ~11 s importing those before a run's first step; in a smoke sweep,
a debugging loop or the test suite that is most of the wall time. A ``multiprocessing``
forkserver pays it once per sweep: the server imports :data:`PRELOAD` and forks one child per job.
Each job is still its own process (its own signals, its own death by SIGKILL, its own torch
thread pool; nothing inherited from the driver, which never imports torch), so the reliability
properties of one-process-per-run hold.

A job's stdout and stderr go to ``<folder>/<pid>_0_log.out/err`` (the names submitit uses), its
exit code says whether it succeeded, and the last line of its stderr why not.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

import harness

PRELOAD = ["torch", "lightning", "mlflow", "mlflow.store.tracking.sqlalchemy_store", "alembic.command",
           "PIL.PngImagePlugin", "harness.sweep.jobs", "harness.train.run", "harness.evaluate.run",
           "harness.tokenizers.stage0", "harness.evaluate.fid", "harness.text.cache"]
_ctx = None


class JobFailed(RuntimeError):
    """A forked job exited with a non-zero code; the message is the last line of its stderr."""


def context() -> mp.context.ForkServerContext:
    """The forkserver context, its server started (it imports :data:`PRELOAD` in the background,
    so that the driver's own work overlaps with the imports)."""
    global _ctx
    if _ctx is None:
        # the server imports the harness by name and ignores this process's sys.path
        repo = str(Path(harness.__file__).resolve().parents[1])
        paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
        if repo not in paths:
            os.environ["PYTHONPATH"] = os.pathsep.join([repo, *filter(None, paths)])
        _ctx = mp.get_context("forkserver")
        _ctx.set_forkserver_preload(PRELOAD)
        from multiprocessing import forkserver

        forkserver.ensure_running()
    return _ctx


def _child(fn: Callable[[], object], folder: str, env: dict[str, str]) -> None:
    """The job's process: its output to its log files, Ctrl-C as KeyboardInterrupt, then ``fn()``."""
    out_dir = Path(folder)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, stream, fd in (("out", "stdout", 1), ("err", "stderr", 2)):
        f = open(out_dir / f"{os.getpid()}_0_log.{name}", "a", buffering=1)
        os.dup2(f.fileno(), fd)  # what C code and subprocesses write goes there too
        setattr(sys, stream, f)
    os.environ.update(env)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # the server ignores Ctrl-C
    try:
        fn()
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
    sys.stderr.flush()


class ForkedJob:
    """One job forked from the server: the part of submitit's job interface the launcher uses."""

    def __init__(self, fn: Callable[[], object], folder: Path, timeout_min: float,
                 env: dict[str, str] | None = None):
        self.folder = Path(folder)
        self.process = context().Process(target=_child, args=(fn, str(folder), dict(env or {})))
        self.process.start()
        self.job_id = str(self.process.pid)
        self.deadline = time.monotonic() + timeout_min * 60
        self.timed_out = False

    @property
    def stderr(self) -> Path:
        return self.folder / f"{self.job_id}_0_log.err"

    @property
    def stdout(self) -> Path:
        return self.folder / f"{self.job_id}_0_log.out"

    def done(self) -> bool:
        """Whether the process has exited; past its time limit it is stopped as by Ctrl-C (its run
        resumes from the last checkpoint on the next launch)."""
        if self.process.exitcode is not None:
            return True
        if time.monotonic() > self.deadline and not self.timed_out:
            self.timed_out = True
            self.cancel()
        return self.process.exitcode is not None

    def cancel(self, check: bool = False, grace_s: float = 120.0) -> None:
        """Ctrl-C the job and wait for it to stop (it releases its run's lock, flushes its
        metrics); SIGKILL if it has not after ``grace_s``."""
        if self.process.exitcode is not None:
            return
        os.kill(self.process.pid, signal.SIGINT)
        self.process.join(grace_s)
        if self.process.exitcode is None:
            self.process.kill()
            self.process.join()

    def result(self) -> None:
        """Wait for the job; raise :class:`JobFailed` with its error if it failed."""
        self.process.join()
        if self.process.exitcode != 0:
            lines = self.stderr.read_text().strip().splitlines() if self.stderr.exists() else []
            why = lines[-1] if lines else f"exit code {self.process.exitcode}"
            raise JobFailed(why)
