"""``python -m harness.sync [RESULTS_DIR]``: send MLflow whatever the run directories hold that it
lacks: metrics, params and artifacts (a run directory is the source of truth; MLflow is a mirror
that may have been down or locked). Safe to run at any time and repeatedly: nothing is sent twice."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.errors import UserError, cli_main, one_line
from harness.run_dir import RunDir
from harness.tracking import store


def _run_uri(run: RunDir) -> str | None:
    """The store the run was configured to log to (``tracking.uri`` in its config.yaml)."""
    path = run.config
    if not path.exists():
        return None
    from omegaconf import OmegaConf

    return OmegaConf.select(OmegaConf.load(path), "tracking.uri", default=None)


def sync_all(results_dir: str | Path, uri: str | None = None, only_pending: bool = False) -> dict[str, int]:
    """``run key -> items sent`` for every run dir with an MLflow run id (to ``uri``, else the
    store in the run's config, else the default store); raises if any run could not be synced."""
    sent, failed = {}, []
    for run in RunDir.all_in(results_dir):
        if not run.mlflow_run_id.exists():
            continue
        if only_pending and not run.mlflow_pending.exists():
            continue
        try:
            sent[run.name] = store.sync_run(run.path, uri or _run_uri(run))
        except Exception as e:
            failed.append(f"{run.name}: {one_line(e)}")
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
