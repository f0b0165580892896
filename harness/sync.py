"""``python -m harness.sync [RESULTS_DIR]``: send MLflow whatever the run directories logged that
it lacks (a run's ``metrics.jsonl`` is the source of truth; MLflow is a mirror that may have been
down or locked). Safe to run at any time and repeatedly: nothing is logged twice."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.errors import UserError, cli_main, one_line
from harness.tracking import store


def _run_uri(run_dir: Path) -> str | None:
    """The store the run was configured to log to (``tracking.uri`` in its config.yaml)."""
    path = run_dir / "config.yaml"
    if not path.exists():
        return None
    from omegaconf import OmegaConf

    return OmegaConf.select(OmegaConf.load(path), "tracking.uri", default=None)


def sync_all(results_dir: str | Path, uri: str | None = None, only_pending: bool = False) -> dict[str, int]:
    """``run key -> metrics sent`` for every run dir with an MLflow run id (to ``uri``, else the
    store in the run's config, else the default store); raises if any run could not be synced."""
    runs = Path(results_dir) / "runs"
    sent, failed = {}, []
    for run_dir in sorted(p for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []:
        if not (run_dir / store.RUN_ID_FILE).exists():
            continue
        if only_pending and not (run_dir / store.PENDING_FILE).exists():
            continue
        try:
            sent[run_dir.name] = store.sync_run(run_dir, uri or _run_uri(run_dir))
        except Exception as e:
            failed.append(f"{run_dir.name}: {one_line(e)}")
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
        print(f"{key}: {n} metric(s) sent")
    print(f"{len(sent)} run(s) in sync")
    return 0


if __name__ == "__main__":
    sys.exit(main())
