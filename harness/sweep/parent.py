"""The sweep's MLflow parent run: one experiment per sweep, one parent run, a child per config.

The parent's id is kept in ``<results_dir>/<sweep>/parent_run_id`` so re-running a sweep nests its
new runs under the same parent; the children are created by the training jobs themselves
(``tracking.parent_run_id``). For a sqlite store the experiment's artifacts go to
``<results_dir>/mlartifacts/`` (an absolute path), not to a ``mlruns/`` under whichever directory
a job happened to start in.

The parent mirrors the sweep folder as a run directory's MLflow run mirrors it: ``runs.csv`` and
``analysis/`` (what ``analysis/plot_scaling.py`` writes beside it: the figures as PNG and PDF,
``fits.csv`` and the other tables, ``report.md``) are its artifacts, uploaded by ``finish_parent``
and by ``python -m harness.sync`` (``sync_parent``) whenever MLflow lacks them.

Jobs write to the store directly (sqlite, with ``store.retry`` riding out "database is locked"):
measured here, 8 processes logging 200 metrics each lost none, and a direct store needs no server
that must outlive the sweep's driver (SLURM jobs run for days after ``--no-wait``). Point
``MLFLOW_TRACKING_URI`` at an ``mlflow server`` where the store is on a shared filesystem without
reliable locks (NFS) or jobs run on other nodes.
"""
from __future__ import annotations

import logging
from pathlib import Path

from harness.errors import one_line
from harness.io import file_lock, write_text
from harness.sweep.table import TABLE
from harness.tracking import store

log = logging.getLogger(__name__)

PARENT_FILE = "parent_run_id"
PENDING_FILE = "mlflow_pending"  # beside it: the last mirror of the sweep folder failed
ANALYSIS = "analysis"  # analysis/plot_scaling.py's default output folder, and its artifact folder


def ensure_parent(sweep: str, sweep_dir: Path, uri: str, results_dir: Path,
                  params: dict[str, str]) -> str:
    """The parent run's id, created (with the experiment) on the sweep's first launch. Under a
    lock: two drivers of one sweep started together share one parent."""
    with file_lock(Path(sweep_dir) / "parent.lock"):
        return _ensure_parent(sweep, Path(sweep_dir) / PARENT_FILE, uri, results_dir, params)


def _ensure_parent(sweep: str, id_file: Path, uri: str, results_dir: Path,
                   params: dict[str, str]) -> str:
    c = store.client(uri)
    if id_file.exists():
        run_id = id_file.read_text().strip()
        try:
            store.retry(lambda: c.get_run(run_id))
            store.retry(lambda: c.update_run(run_id, status="RUNNING"))
            return run_id
        except Exception:
            pass  # the store was replaced: make a new parent
    artifact_root = Path(results_dir) / "mlartifacts" if uri.startswith("sqlite:") else None
    exp_id = store.retry(lambda: store.experiment_id(c, sweep, artifact_root))
    run = store.retry(lambda: c.create_run(exp_id, run_name=sweep,
                                           tags={"sweep": sweep, "role": "sweep-parent"}))
    from mlflow.entities import Param

    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    store.retry(lambda: c.log_batch(run.info.run_id, params=items))
    write_text(id_file, run.info.run_id + "\n")
    return run.info.run_id


def finish_parent(run_id: str, uri: str, counts: dict[str, int], table: Path | None) -> None:
    """Record the sweep's outcome on the parent: counts as metrics, the sweep folder (``table``'s
    folder: the results table, an analysis made before) as artifacts (``sync_parent``), and the
    run's status (FINISHED when nothing failed or is left)."""
    import time

    from mlflow.entities import Metric

    c = store.client(uri)
    now = int(time.time() * 1000)
    step = len(c.get_metric_history(run_id, "runs_completed"))
    store.retry(lambda: c.log_batch(run_id, metrics=[Metric(f"runs_{k}", v, now, step)
                                                     for k, v in counts.items()]))
    if table is not None:
        try:
            sync_parent(table.parent, uri, run_id)
        except Exception as e:  # the files stay in the sweep folder; harness.sync sends them later
            log.warning("MLflow parent artifacts not logged (%s); python -m harness.sync sends them",
                        one_line(e))
    done = counts.get("completed", 0) == sum(counts.values())
    store.retry(lambda: c.set_terminated(run_id, "FINISHED" if done else
                                         "FAILED" if counts.get("failed") else "KILLED"))


def mirrored_files(sweep_dir: str | Path) -> dict[Path, str]:
    """``{file: artifact folder}``: what the parent mirrors of the sweep folder: ``runs.csv`` (at
    the root) and every file under ``analysis/`` (under ``analysis/``), skipping the hidden temp
    files of writes in progress."""
    sweep_dir = Path(sweep_dir)
    files = {sweep_dir / TABLE: ""} if (sweep_dir / TABLE).is_file() else {}
    analysis = sweep_dir / ANALYSIS
    for path in sorted(analysis.rglob("*")) if analysis.is_dir() else []:
        rel = path.relative_to(sweep_dir)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            files[path] = rel.parent.as_posix()
    return files


def sync_parent(sweep_dir: str | Path, uri: str | None = None, run_id: str | None = None) -> int:
    """Upload to the parent run (``run_id``, else the one in ``parent_run_id``) the files of
    ``mirrored_files`` that it lacks or holds at another size (the table and a re-run analysis are
    rewritten in place; a file rewritten at the same size is not sent again). Returns how many
    were sent; on failure marks the sweep folder pending and raises."""
    sweep_dir = Path(sweep_dir)
    if run_id is None:
        run_id = (sweep_dir / PARENT_FILE).read_text().strip()
    pending = sweep_dir / PENDING_FILE
    try:
        c = store.client(uri)
        files = mirrored_files(sweep_dir)
        held: dict[str, dict[str, int | None]] = {}  # artifact folder -> {file name: size}
        sent = 0
        for path, folder in files.items():
            if folder not in held:
                held[folder] = {Path(a.path).name: a.file_size for a in
                                store.retry(lambda f=folder: c.list_artifacts(run_id, f or None))
                                if not a.is_dir}
            if held[folder].get(path.name) != path.stat().st_size:
                store.retry(lambda p=path, f=folder: c.log_artifact(run_id, str(p), f or None))
                sent += 1
    except Exception as e:
        write_text(pending, one_line(e) + "\n")
        raise
    pending.unlink(missing_ok=True)
    return sent
