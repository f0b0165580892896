"""Run a sweep job in its own process, forked from the harness's forkserver (as the local
launcher does): a real, separate process (its own signals, its own death by SIGKILL, no MLflow
connection or torch thread pool inherited from the test process), started in milliseconds."""
from __future__ import annotations

from harness.run_dir import RunDir
from harness.sweep.forkserver import ForkedJob
from harness.sweep.jobs import RunJob


def run_job(cfg, seeds: list[int], sweep: str, table_path, env: dict[str, str] | None = None,
            timeout: float = 900) -> int:
    """``RunJob(cfg, seeds, sweep, table_path)()`` in a forked process with ``env`` added; returns
    its exit code (negative: the signal that ended it)."""
    job = ForkedJob(RunJob(cfg, list(seeds), sweep, table_path), RunDir.of(cfg).jobs,
                    timeout_min=timeout / 60 + 1, env=env)
    job.process.join(timeout)
    if job.process.exitcode is None:
        job.process.kill()
        job.process.join()
        raise AssertionError(f"the forked job did not end within {timeout} s")
    return job.process.exitcode
