"""A Lightning logger that writes to the run directory first and mirrors to MLflow."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.loggers.logger import Logger, rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

from harness.run_dir import RunDir
from harness.tracking import store


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


class RunLogger(Logger):
    """Metrics go to ``<run_dir>/metrics.jsonl`` (always) and to the run's MLflow run (best
    effort). A (key, step) already logged, e.g. before a crash and resume, is not logged again.
    After MLflow fails once the logger stops trying (each try costs retries and timeouts) and
    leaves the run marked pending for ``python -m harness.sync``. A resumed run first sends MLflow
    what the stopped attempt wrote locally but did not mirror (``store.catch_up``)."""

    def __init__(self, run_dir: str | Path, uri: str | None = None):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.uri = uri
        self._seen = {(r["key"], r["step"]) for r in store.read_metrics(self.run_dir)}
        self.offline = RunDir(self.run_dir).mlflow_pending.exists()
        if self._seen and not self.offline:
            self.offline = not store.catch_up(self.run_dir, uri)

    @property
    def name(self) -> str:
        return "run"

    @property
    def version(self) -> str:
        return self.run_dir.name

    @property
    @rank_zero_experiment
    def experiment(self) -> Path:
        return self.run_dir

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args, **kwargs) -> None:
        if isinstance(params, dict):  # kept in params.json even while MLflow is away
            sent = store.log_params(self.run_dir, flatten(params), self.uri)
            self.offline = self.offline or not sent

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        step = int(step or 0)
        fresh = {k: v for k, v in metrics.items() if (k, step) not in self._seen and k != "epoch"}
        if not fresh:
            return
        self._seen.update((k, step) for k in fresh)
        sent = store.log_metrics(self.run_dir, fresh, step, self.uri, mirror=not self.offline)
        self.offline = self.offline or not sent
