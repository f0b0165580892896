"""The run directory is the source of truth; MLflow is a mirror that may be down.

Every metric is appended to ``<run_dir>/metrics.jsonl`` first, then sent to MLflow. If MLflow
fails (server down, sqlite locked past the retries), the run goes on and ``mlflow_pending`` is left
in the run directory; ``sync_run`` (``python -m harness.sync``) later sends whatever MLflow lacks,
comparing (key, step) so nothing is logged twice. The MLflow run id lives in ``mlflow_run_id`` so
a resumed or requeued job continues the same MLflow run. Params (``params.json``) and artifacts
(``mlflow_artifacts.json``) are kept the same way: local first, mirrored after, replayable.
"""
from __future__ import annotations

import functools
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from harness.errors import one_line
from harness.faults import fault
from harness.io import append_jsonl, file_lock, read_json, read_jsonl, write_json, write_text
from harness.run_dir import RunDir
from harness.tracking import tracking_uri

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_DELAY_S = 0.5  # first back-off of `retry` (tests that inject failures set it to 0)


def client(uri: str | None = None):
    """The process's MLflow client for ``uri``: built once (on sqlite, building one opens the
    database and checks its schema, ~0.1-0.2 s, which a run used to pay at every logging step)."""
    return _client(uri or tracking_uri(), os.getcwd())


@functools.lru_cache(maxsize=8)
def _client(uri: str, cwd: str):
    import mlflow

    c = mlflow.MlflowClient(tracking_uri=uri)
    path = sqlite_path(uri)
    if path is not None:
        # the first client of a new sqlite file creates its schema; two processes doing so at once
        # (two sweeps started together) fail with "table already exists": one at a time
        path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(path.with_name(path.name + ".lock")):
            retry(lambda: c.search_experiments(max_results=1))
    return c


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative to the current directory), else None."""
    return Path(uri[len("sqlite:///"):]).resolve() if uri.startswith("sqlite:///") else None


def retry(fn: Callable[[], T], attempts: int = 5, delay: float | None = None) -> T:
    """Call ``fn`` with exponential backoff (sqlite 'database is locked', a restarting server)."""
    delay = RETRY_DELAY_S if delay is None else delay
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
    path = sqlite_path(uri)
    return path.parent / "mlartifacts" if path is not None else None


def experiment_id(c, name: str, artifact_root: Path | None = None) -> str:
    """The experiment's id, created if missing (with an absolute artifact location)."""
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    root = artifact_root or default_artifact_root(c.tracking_uri)
    location = (root / name).resolve().as_uri() if root else None
    try:
        return c.create_experiment(name, artifact_location=location)
    except Exception:  # created by another process in between
        return c.get_experiment_by_name(name).experiment_id


def ensure_run(run_dir: str | Path, experiment: str, name: str, tags: dict[str, str],
               parent_run_id: str | None = None, uri: str | None = None) -> str:
    """The MLflow run of this run directory, created on first call and reused on resume."""
    run_dir = Path(run_dir)
    id_file = RunDir(run_dir).mlflow_run_id
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
    append_jsonl(RunDir(run_dir).metrics_log, rows)
    return rows


def log_metrics(run_dir: str | Path, metrics: dict[str, float], step: int, uri: str | None = None,
                mirror: bool = True) -> bool:
    """Append ``metrics`` at ``step`` to ``metrics.jsonl``, then (``mirror``) send them to MLflow.
    A stop between the two leaves them local only; :func:`catch_up` sends them when the run goes
    on. Returns False when MLflow failed (the run is then marked pending)."""
    rows = append_metrics(run_dir, metrics, step)
    fault("metrics.appended", run_dir)
    return send_metrics(run_dir, rows, uri) if mirror else True


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The run's local metric rows; a line cut by a crash mid-write is left out (the next sync
    has the rest)."""
    return read_jsonl(RunDir(run_dir).metrics_log)


def mark_pending(run_dir: str | Path, reason: str) -> None:
    write_text(RunDir(run_dir).mlflow_pending, reason + "\n")


def send_metrics(run_dir: str | Path, rows: list[dict], uri: str | None = None) -> bool:
    """Send rows to MLflow; on failure mark the run pending and return False."""
    from mlflow.entities import Metric

    run_dir = Path(run_dir)
    id_file = RunDir(run_dir).mlflow_run_id
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
        log.warning("MLflow unavailable (%s); metrics kept in %s", one_line(e), run_dir)
        mark_pending(run_dir, one_line(e))
        return False


def _on_run(run_dir: str | Path, what: str, action: Callable[[Any, str], None],
            uri: str | None = None) -> bool:
    """Run ``action(client, run_id)`` against the run's MLflow run, with retries; on failure warn,
    mark the run pending for ``harness.sync`` and return False (the run itself goes on). A run
    already pending is not tried again: its local copy waits for ``harness.sync``."""
    run = RunDir(run_dir)
    if not run.mlflow_run_id.exists() or run.mlflow_pending.exists():
        return False
    try:
        action(client(uri), run.mlflow_run_id.read_text().strip())
        return True
    except Exception as e:
        log.warning("MLflow %s not logged (%s)", what, one_line(e))
        mark_pending(run_dir, one_line(e))
        return False


def _send_params(c, run_id: str, params: dict[str, Any]) -> int:
    from mlflow.entities import Param

    logged = retry(lambda: c.get_run(run_id)).data.params
    new = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in logged]
    for i in range(0, len(new), 90):
        retry(lambda chunk=new[i: i + 90]: c.log_batch(run_id, params=chunk))
    return len(new)


def log_params(run_dir: str | Path, params: dict[str, Any], uri: str | None = None) -> bool:
    """Keep ``params`` in ``params.json`` (merged with earlier ones), then send MLflow those it
    lacks (MLflow refuses to change a logged param, so a resumed run sends only new ones)."""
    path = RunDir(run_dir).params
    write_json(path, {**(read_json(path) if path.exists() else {}),
                      **{k: str(v)[:6000] for k, v in params.items()}})
    return _on_run(run_dir, "params", lambda c, run_id: _send_params(c, run_id, params), uri)


def _send_artifact(c, run_id: str, run_dir: Path, rel: str, folder: str) -> None:
    retry(lambda: c.log_artifact(run_id, str(run_dir / rel), folder or None))


def log_artifacts(run_dir: str | Path, paths: dict[str | Path, str], uri: str | None = None) -> bool:
    """``{file in the run dir: artifact folder}``: recorded in ``mlflow_artifacts.json`` first
    (list them before the files are written, so a stop in between still leaves the record), then
    those that exist are uploaded. ``sync_run`` uploads what a failure or a stop left behind."""
    run_dir = Path(run_dir)
    rel = {str(Path(p).resolve().relative_to(run_dir.resolve())): folder for p, folder in paths.items()}
    manifest = RunDir(run_dir).artifacts
    write_json(manifest, {**(read_json(manifest) if manifest.exists() else {}), **rel})

    def upload(c, run_id: str) -> None:
        for name, folder in rel.items():
            if (run_dir / name).exists():
                _send_artifact(c, run_id, run_dir, name, folder)

    return _on_run(run_dir, "artifacts", upload, uri)


def sync_run(run_dir: str | Path, uri: str | None = None) -> int:
    """Send MLflow what the run directory holds and it lacks: metrics by (key, step), params by
    key (``params.json``), artifacts by name (``mlflow_artifacts.json``); nothing twice. Returns
    how many items were sent; raises when MLflow fails (the run is left marked pending)."""
    run = RunDir(run_dir)
    run_dir = run.path
    if not run.mlflow_run_id.exists():
        return 0
    run_id = run.mlflow_run_id.read_text().strip()
    c = client(uri)
    rows = read_metrics(run_dir)
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
    run.mlflow_pending.unlink(missing_ok=True)
    if missing and not send_metrics(run_dir, missing, uri):
        raise RuntimeError(f"MLflow still unavailable for {run_dir}")
    sent = len(missing)
    try:
        if run.params.exists():
            sent += _send_params(c, run_id, read_json(run.params))
        listed: dict[str, set[str]] = {}  # artifact folder -> file names MLflow holds
        for name, folder in (read_json(run.artifacts) if run.artifacts.exists() else {}).items():
            if folder not in listed:
                listed[folder] = {Path(a.path).name for a in
                                  retry(lambda f=folder: c.list_artifacts(run_id, f or None))}
            if (run_dir / name).exists() and Path(name).name not in listed[folder]:
                _send_artifact(c, run_id, run_dir, name, folder)
                sent += 1
    except Exception as e:
        mark_pending(run_dir, one_line(e))
        raise
    return sent


def close_run(run_dir: str | Path, state: str, uri: str | None = None) -> int:
    """Set the run's MLflow run to ``state`` (FINISHED, FAILED) unless it is there already;
    returns 1 if it was changed, 0 if not (or the run has no MLflow run); raises when MLflow fails."""
    id_file = RunDir(run_dir).mlflow_run_id
    if not id_file.exists():
        return 0
    run_id, c = id_file.read_text().strip(), client(uri)
    if retry(lambda: c.get_run(run_id)).info.status == state:
        return 0
    retry(lambda: c.set_terminated(run_id, state))
    return 1


def catch_up(run_dir: str | Path, uri: str | None = None) -> bool:
    """Before a run goes on (a resume) and before it is completed: send MLflow whatever the run
    directory holds that it lacks (a stop between a metric's write and its mirror leaves one
    behind). Skipped for a run already marked pending (``python -m harness.sync`` replays it);
    on failure the run is marked pending and goes on. Returns whether MLflow is in sync."""
    run = RunDir(run_dir)
    if run.mlflow_pending.exists() or not run.mlflow_run_id.exists():
        return False
    try:
        sent = sync_run(run_dir, uri)
    except Exception as e:
        log.warning("MLflow not caught up (%s); kept in %s", one_line(e), run_dir)
        mark_pending(run_dir, one_line(e))
        return False
    if sent:
        log.info("sent MLflow %d item(s) the run directory held and it lacked", sent)
    return True
