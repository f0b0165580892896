"""``python -m harness.tracking.ui [--port P] [--host H]``: serve the MLflow store in a browser.

Runs ``mlflow server`` over the project's store (``MLFLOW_TRACKING_URI``, default
``sqlite:///results/mlflow.db``) on 127.0.0.1 (loopback only, unless ``--host`` says otherwise),
port ``--port``, else ``$MLFLOW_UI_PORT``, else 5000. A sweep is an experiment named after it;
its runs table (the parent run, a child per config) is at ``/#/experiments/<id>/runs`` and its
chart view at ``...?compareRunsMode=CHART``, both printed for each experiment at start. A child
carries its size and cost as ``model/*`` metrics and its evaluation as ``eval/*`` (one value each),
so a scatter chart there puts e.g. ``eval/fid`` against ``model/params``; the parent's artifacts
hold the results table and the analysis figures. Artifacts that runs logged to local paths are
read from there.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from harness.errors import UserError, cli_main
from harness.tracking import tracking_uri

DEFAULT_PORT = 5000


def server_command(uri: str, host: str, port: int, workers: int = 1) -> list[str]:
    """The ``mlflow server`` command line for a store (artifacts of new runs under the store's
    directory, so the UI and the jobs agree on where they live)."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host,
           "--port", str(port), "--workers", str(workers)]
    if uri.startswith("sqlite:///"):
        root = Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts"
        cmd += ["--artifacts-destination", str(root)]
    return cmd


def experiments(uri: str) -> list[tuple[str, str]]:
    """(name, id) of the store's experiments, newest first."""
    import mlflow

    return [(e.name, e.experiment_id) for e in mlflow.MlflowClient(uri).search_experiments(
        order_by=["creation_time DESC"])]


def _port(value: str | None) -> int:
    raw = value or os.environ.get("MLFLOW_UI_PORT") or str(DEFAULT_PORT)
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise UserError("--port", f"must be a TCP port number (1-65535), got {raw!r}")
    return int(raw)


@cli_main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m harness.tracking.ui", description=__doc__)
    p.add_argument("--port", help=f"TCP port (default: $MLFLOW_UI_PORT or {DEFAULT_PORT})")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: loopback)")
    args = p.parse_args(argv)
    uri = tracking_uri()
    if not uri.startswith("sqlite:"):
        raise UserError("MLFLOW_TRACKING_URI", f"{uri} is already a server; open it in a browser")
    db = Path(uri[len("sqlite:///"):])
    if not db.exists():
        raise UserError("MLFLOW_TRACKING_URI", f"{db} does not exist yet: run a sweep first")
    port = _port(args.port)
    base = f"http://{args.host}:{port}"
    print(f"MLflow UI for {uri}: {base}", flush=True)
    for name, exp_id in experiments(uri):
        runs = f"{base}/#/experiments/{exp_id}/runs"
        print(f"  {name}: {runs}  charts: {runs}?compareRunsMode=CHART", flush=True)
    cmd = server_command(uri, args.host, port)
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main()
