"""``python -m harness.sync``: MLflow gets what the run directories logged while it was unreachable,
each (metric, step) exactly once, in the store each run was configured with."""
from __future__ import annotations

import mlflow

from harness import config as C
from harness.sync import main
from harness.tracking import store
from harness.run_dir import RunDir


def test_sync_sends_only_what_mlflow_lacks(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/runs.db"
    results = tmp_path / "results"
    run_dir = results / "runs" / "r1"
    run_dir.mkdir(parents=True)
    C.save(C.load([f"results_dir={results}", f"tracking.uri={uri}"]), run_dir / "config.yaml")
    run_id = store.ensure_run(run_dir, "sync-test", "r1", {"token": "discrete"}, None, uri)
    rows = [row for step in range(10) for row in store.append_metrics(run_dir, {"loss": 1 / (step + 1)}, step)]
    assert store.send_metrics(run_dir, rows[:3], uri)          # the store saw the first 3 steps...
    store.mark_pending(run_dir, "server down")                 # ...then went away
    (results / "runs" / "never-started").mkdir()               # no MLflow run: skipped

    # MLFLOW_TRACKING_URI points elsewhere (tests/conftest.py): the run's own tracking.uri wins
    assert main([str(results)]) == 0
    assert "r1: 7 item(s) sent" in capsys.readouterr().out
    history = mlflow.MlflowClient(uri).get_metric_history(run_id, "loss")
    assert sorted(m.step for m in history) == list(range(10))
    assert not RunDir(run_dir).mlflow_pending.exists()
    assert main([str(results), "--pending"]) == 0 and "0 run(s) in sync" in capsys.readouterr().out
    assert main([str(results)]) == 0 and "r1: 0 item(s) sent" in capsys.readouterr().out
