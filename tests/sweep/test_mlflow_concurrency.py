"""Many jobs logging into one sqlite MLflow store at once lose nothing (``store.retry`` rides out
"database is locked"): the reason sweeps log to the store directly, without a server."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

REPO = Path(__file__).resolve().parents[2]
WORKER = """
import sys, time
from pathlib import Path
from harness.tracking import store
run_dir, uri, n, start = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
store.ensure_run(run_dir, "concurrency", run_dir.name, {}, None, uri)
while time.time() < start:
    time.sleep(0.01)
for step in range(n):
    store.send_metrics(run_dir, store.append_metrics(run_dir, {"loss": 1.0 / (step + 1)}, step), uri)
"""


@pytest.mark.slow
def test_eight_processes_logging_at_once_lose_no_metric(tmp_path):
    import time

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.MlflowClient(uri).search_experiments()            # create the schema once
    dirs = [tmp_path / f"job{i}" for i in range(8)]
    start = time.time() + 20                                  # all imported: then log together
    procs = []
    for d in dirs:
        d.mkdir()
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, str(d), uri, "100", str(start)],
                                      cwd=REPO, env=os.environ.copy()))
    assert [p.wait(timeout=600) for p in procs] == [0] * 8
    client = mlflow.MlflowClient(uri)
    for d in dirs:
        assert not (d / "mlflow_pending").exists(), (d / "mlflow_pending").read_text()
        steps = [m.step for m in client.get_metric_history((d / "mlflow_run_id").read_text().strip(), "loss")]
        assert sorted(steps) == list(range(100))
