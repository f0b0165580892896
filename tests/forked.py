"""Run a sweep job in its own process without paying the ~11 s of imports each time.

A multiprocessing forkserver imports torch, Lightning, MLflow and the harness once; every job is
forked from it: a real, separate process (its own signals, its own death by SIGKILL, no MLflow
connection or torch thread pool inherited from the test process), started in milliseconds.
"""
from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

PRELOAD = ["torch", "lightning", "mlflow", "harness.sweep.jobs", "harness.train",
           "harness.evaluate.run"]
_ctx = None


def context():
    global _ctx
    if _ctx is None:
        # the server imports the harness by name: it needs the repo on its path (Python 3.11's
        # forkserver ignores the parent's sys.path)
        repo = str(Path(__file__).resolve().parents[1])
        paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
        if repo not in paths:
            os.environ["PYTHONPATH"] = os.pathsep.join([repo, *filter(None, paths)])
        _ctx = mp.get_context("forkserver")
        _ctx.set_forkserver_preload(PRELOAD)
    return _ctx


def run_job(cfg, seeds: list[int], sweep: str, table_path, env: dict[str, str] | None = None,
            timeout: float = 900) -> int:
    """``RunJob(cfg, seeds, sweep, table_path)()`` in a forked process with ``env`` added; returns
    its exit code (negative: the signal that ended it)."""
    from omegaconf import OmegaConf

    from harness.sweep.jobs import run_job_from

    proc = context().Process(target=run_job_from, args=(OmegaConf.to_container(cfg), list(seeds), sweep,
                                                     str(table_path), dict(env or {})))
    proc.start()
    proc.join(timeout)
    if proc.exitcode is None:
        proc.kill()
        proc.join()
        raise AssertionError(f"the forked job did not end within {timeout} s")
    return proc.exitcode
