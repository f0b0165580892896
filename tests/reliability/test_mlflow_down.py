"""MLflow unreachable during a run: the run completes, its metrics stay in the run directory,
and ``python -m harness.sync`` replays them once the store is back — nothing lost, nothing twice."""
import mlflow

from harness import config
from harness.io import read_json
from harness.sync import main as sync_main
from harness.tracking import store
from harness.train.run import train
from harness.run_status import read_status
from harness.run_dir import RunDir


def test_training_survives_a_dead_tracking_server_and_sync_replays(smoke, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    cfg = config.load(smoke("tracking.uri=http://127.0.0.1:9", "train.steps=10", "train.val_every=5"))
    run = train(cfg)
    assert read_status(run)["status"] == "trained"
    assert RunDir(run).mlflow_pending.exists()
    local = store.read_metrics(run)
    assert {"train/loss", "val/loss", "model/params", "model/train_flops"} <= {r["key"] for r in local}

    # the store comes back (here: a sqlite store); the run gets an MLflow run and every metric once
    uri = f"sqlite:///{tmp_path}/back.db"
    store.ensure_run(run, "recovered", run.name, {"token": "continuous"}, None, uri)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    cfg_file = run / "config.yaml"
    cfg_file.write_text(cfg_file.read_text().replace("http://127.0.0.1:9", uri))
    assert sync_main([str(run.parent.parent)]) == 0
    client = mlflow.MlflowClient(uri)
    run_id = RunDir(run).mlflow_run_id.read_text().strip()
    for key in ("train/loss", "val/loss", "model/params", "model/train_flops"):
        steps = sorted(m.step for m in client.get_metric_history(run_id, key))
        assert steps == sorted({r["step"] for r in local if r["key"] == key})
    # the size as a param (what the run logged) and as a metric (what the UI's charts plot)
    info = read_json(RunDir(run).info)
    logged = client.get_run(run_id).data
    assert logged.params["params"] == str(info["params"]) and logged.metrics["model/params"] == info["params"]
    assert not RunDir(run).mlflow_pending.exists()
