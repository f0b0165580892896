"""``python -m harness.sync [RESULTS_DIR]``: send MLflow whatever the run directories hold that it
lacks: metrics, params, artifacts and the run's end state (a run directory is the source of truth;
MLflow is a mirror that may have been down or locked), and each sweep's parent run what its sweep
folder holds (the results table, the analysis: ``harness.sweep.parent.sync_parent``). Safe to run
at any time and repeatedly: nothing is sent twice."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.errors import UserError, cli_main, one_line
from harness.run_dir import RunDir
from harness.sweep import parent, records
from harness.tracking import store


def _tracking(run: RunDir) -> tuple[str | None, str | None]:
    """(``tracking.uri``, ``tracking.parent_run_id``) of the run's config.yaml: the store it was
    configured to log to, and its sweep's parent run."""
    path = run.config
    if not path.exists():
        return None, None
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(path)
    return (OmegaConf.select(cfg, "tracking.uri", default=None),
            OmegaConf.select(cfg, "tracking.parent_run_id", default=None))


def final_state(run: RunDir) -> str | None:
    """The MLflow state the run directory says its run ended in: FINISHED once its sweep job
    closed it, FAILED when it failed; None while it is open (training, or stopped mid-way)."""
    from harness.run_status import read_status

    if records.is_closed(run.path):
        return "FINISHED"
    return "FAILED" if read_status(run.path)["status"] == "failed" else None


def sync_all(results_dir: str | Path, uri: str | None = None, only_pending: bool = False) -> dict[str, int]:
    """``name -> items sent`` for every run dir with an MLflow run id (to ``uri``, else the store
    in the run's config, else the default store), then for every sweep folder with a parent run
    (``<sweep> (parent)``, to the store of its runs); raises if any could not be synced.
    ``only_pending``: only those marked ``mlflow_pending``."""
    sent, failed = {}, []
    parent_uris: dict[str, str | None] = {}  # a parent run id -> the store its child runs log to
    for run in RunDir.all_in(results_dir):
        run_uri, parent_id = _tracking(run)
        if parent_id:
            parent_uris.setdefault(parent_id, run_uri)
        if not run.mlflow_run_id.exists():
            continue
        if only_pending and not run.mlflow_pending.exists():
            continue
        try:
            sent[run.name] = store.sync_run(run.path, uri or run_uri)
            state = final_state(run)
            if state:
                sent[run.name] += store.close_run(run.path, state, uri or run_uri)
        except Exception as e:
            failed.append(f"{run.name}: {one_line(e)}")
    for id_file in sorted(Path(results_dir).glob(f"*/{parent.PARENT_FILE}")):
        sweep_dir, name = id_file.parent, f"{id_file.parent.name} (parent)"
        if only_pending and not (sweep_dir / parent.PENDING_FILE).exists():
            continue
        run_id = id_file.read_text().strip()
        try:
            sent[name] = parent.sync_parent(sweep_dir, uri or parent_uris.get(run_id), run_id)
        except Exception as e:
            failed.append(f"{name}: {one_line(e)}")
    if failed:
        raise RuntimeError("MLflow sync failed for " + "; ".join(failed))
    return sent


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.sync", description=__doc__)
    p.add_argument("results_dir", nargs="?", default="results")
    p.add_argument("--pending", action="store_true", help="only runs marked mlflow_pending")
    p.add_argument("--uri", help="tracking URI (default: MLFLOW_TRACKING_URI or results/mlflow.db)")
    args = p.parse_args(argv)
    if not Path(args.results_dir).is_dir():
        raise UserError("results_dir", f"{args.results_dir} is not a directory")
    sent = sync_all(args.results_dir, args.uri, args.pending)
    for key, n in sent.items():
        print(f"{key}: {n} item(s) sent")
    print(f"{len(sent)} run(s) in sync")
    return 0


if __name__ == "__main__":
    sys.exit(main())
