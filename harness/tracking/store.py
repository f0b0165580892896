"""The run directory is the source of truth; MLflow is a mirror that may be down.

Every metric is appended to ``<run_dir>/metrics.jsonl`` first, then sent to MLflow. If MLflow
fails (server down, sqlite locked past the retries), the run goes on and ``mlflow_pending`` is left
in the run directory; ``sync_run`` (``python -m harness.sync``) later sends whatever MLflow lacks,
comparing (key, step) so nothing is logged twice. The MLflow run id lives in ``mlflow_run_id`` so
a resumed or requeued job continues the same MLflow run.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from harness.io import write_text
from harness.tracking import tracking_uri

log = logging.getLogger(__name__)
T = TypeVar("T")

RUN_ID_FILE = "mlflow_run_id"
PENDING_FILE = "mlflow_pending"
METRICS_LOG = "metrics.jsonl"


def client(uri: str | None = None):
    """The process's MLflow client for ``uri``: built once (on sqlite, building one opens the
    database and checks its schema, ~0.1-0.2 s, which a run used to pay at every logging step)."""
    return _client(uri or tracking_uri(), os.getcwd())


@functools.lru_cache(maxsize=8)
def _client(uri: str, cwd: str):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri)


def retry(fn: Callable[[], T], attempts: int = 5, delay: float = 0.5) -> T:
    """Call ``fn`` with exponential backoff (sqlite 'database is locked', a restarting server)."""
    for i in range(attempts):
        try:
            return fn()
        except Exception:
            if i == attempts - 1:
                raise
            time.sleep(delay * 2 ** i)
    raise AssertionError("unreachable")


def default_artifact_root(uri: str) -> Path | None:
    """For a sqlite store, artifacts go to ``mlartifacts/`` beside the database file — not to a
    ``mlruns/`` under whatever directory a job happened to start in (MLflow's default)."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts"
    return None


def experiment_id(c, name: str, artifact_root: Path | None = None) -> str:
    """The experiment's id, created if missing (with an absolute artifact location)."""
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    root = artifact_root or default_artifact_root(c.tracking_uri)
    location = (root / name).resolve().as_uri() if root else None
    try:
        return c.create_experiment(name, artifact_location=location)
    except Exception:
        return c.get_experiment_by_name(name).experiment_id


def ensure_run(run_dir: str | Path, experiment: str, name: str, tags: dict[str, str],
               parent_run_id: str | None = None, uri: str | None = None) -> str:
    """The MLflow run of this run directory, created on first call and reused on resume."""
    run_dir = Path(run_dir)
    id_file = run_dir / RUN_ID_FILE
    if id_file.exists():
        return id_file.read_text().strip()
    c = client(uri)
    all_tags = dict(tags, **{"mlflow.runName": name, "run_dir": str(run_dir.resolve())})
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = retry(lambda: c.create_run(experiment_id(c, experiment), tags=all_tags, run_name=name))
    write_text(id_file, run.info.run_id)
    return run.info.run_id


def append_metrics(run_dir: str | Path, metrics: dict[str, float], step: int) -> list[dict]:
    """Append metrics to the run's local log (the copy that is never lost)."""
    now = int(time.time() * 1000)
    rows = [{"key": k, "value": float(v), "step": int(step), "timestamp": now}
            for k, v in metrics.items()]
    path = Path(run_dir) / METRICS_LOG
    with open(path, "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())
    return rows


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / METRICS_LOG
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a crash mid-write; the next sync has the rest
    return rows


def mark_pending(run_dir: str | Path, reason: str) -> None:
    write_text(Path(run_dir) / PENDING_FILE, reason + "\n")


def send_metrics(run_dir: str | Path, rows: list[dict], uri: str | None = None) -> bool:
    """Send rows to MLflow; on failure mark the run pending and return False."""
    from mlflow.entities import Metric

    run_dir = Path(run_dir)
    id_file = run_dir / RUN_ID_FILE
    if not rows:
        return True
    if not id_file.exists():
        mark_pending(run_dir, "no MLflow run id yet")
        return False
    run_id = id_file.read_text().strip()
    try:
        c = client(uri)
        metrics = [Metric(r["key"], r["value"], r["timestamp"], r["step"]) for r in rows]
        for i in range(0, len(metrics), 900):
            retry(lambda chunk=metrics[i: i + 900]: c.log_batch(run_id, metrics=chunk))
        return True
    except Exception as e:
        log.warning("MLflow unavailable (%s); metrics kept in %s", str(e).splitlines()[0], run_dir)
        mark_pending(run_dir, str(e).splitlines()[0])
        return False


def _on_run(run_dir: str | Path, what: str, action: Callable[[Any, str], None],
            uri: str | None = None) -> bool:
    """Run ``action(client, run_id)`` against the run's MLflow run, with retries; on failure warn,
    mark the run pending for ``harness.sync`` and return False (the run itself goes on)."""
    id_file = Path(run_dir) / RUN_ID_FILE
    if not id_file.exists():
        return False
    try:
        action(client(uri), id_file.read_text().strip())
        return True
    except Exception as e:
        log.warning("MLflow %s not logged (%s)", what, str(e).splitlines()[0])
        mark_pending(run_dir, str(e).splitlines()[0])
        return False


def log_params(run_dir: str | Path, params: dict[str, Any], uri: str | None = None) -> bool:
    from mlflow.entities import Param

    def action(c, run_id: str) -> None:
        logged = retry(lambda: c.get_run(run_id)).data.params
        new = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in logged]
        for i in range(0, len(new), 90):
            retry(lambda chunk=new[i: i + 90]: c.log_batch(run_id, params=chunk))

    return _on_run(run_dir, "params", action, uri)


def log_artifact(run_dir: str | Path, path: str | Path, artifact_path: str | None = None,
                 uri: str | None = None) -> bool:
    return _on_run(run_dir, f"artifact {path}",
                   lambda c, run_id: retry(lambda: c.log_artifact(run_id, str(path), artifact_path)),
                   uri)


def set_tags(run_dir: str | Path, tags: dict[str, str], uri: str | None = None) -> bool:
    def action(c, run_id: str) -> None:
        for k, v in tags.items():
            retry(lambda k=k, v=v: c.set_tag(run_id, k, str(v)))

    return _on_run(run_dir, "tags", action, uri)


def sync_run(run_dir: str | Path, uri: str | None = None) -> int:
    """Send MLflow every locally logged metric it lacks; returns how many were sent."""
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    id_file = run_dir / RUN_ID_FILE
    if not id_file.exists():
        return 0
    run_id = id_file.read_text().strip()
    c = client(uri)
    have: set[tuple[str, int]] = set()
    for key in {r["key"] for r in rows}:
        for m in retry(lambda key=key: c.get_metric_history(run_id, key)):
            have.add((m.key, m.step))
    missing, seen = [], set()
    for r in rows:
        k = (r["key"], r["step"])
        if k not in have and k not in seen:
            seen.add(k)
            missing.append(r)
    (run_dir / PENDING_FILE).unlink(missing_ok=True)
    if missing and not send_metrics(run_dir, missing, uri):
        raise RuntimeError(f"MLflow still unavailable for {run_dir}")
    return len(missing)
