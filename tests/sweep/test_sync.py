"""``python -m harness.sync``: MLflow gets what the run directories logged while it was unreachable,
each (metric, step) exactly once, in the store each run was configured with; a sweep's parent run
gets what its sweep folder holds."""
from __future__ import annotations

import mlflow

from harness import config as C
from harness.run_dir import RunDir
from harness.run_status import write_status
from harness.sweep import parent, records
from harness.sync import main
from harness.tracking import store
from harness.tracking.logger import RunLogger, flatten
from harness.tracking.size_metrics import STEP as SIZE_STEP, size_metrics


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


def test_sync_replays_a_childs_size_and_eval_metrics_and_its_sweeps_parent(tmp_path, capsys):
    """A child run logged while MLflow was down (its size as params and ``model/*`` metrics, as
    training logs them; its evaluation as ``eval/*``), and the sweep folder's table and analysis:
    one sync sends the child each once and the parent its artifacts, in the store of the runs."""
    uri = f"sqlite:///{tmp_path}/runs.db"
    results = tmp_path / "results"
    sweep_dir = results / "smoke"
    (sweep_dir / "analysis").mkdir(parents=True)
    (sweep_dir / "runs.csv").write_text("run_key,status\nr1,completed\n")
    (sweep_dir / "analysis" / "scaling.png").write_bytes(b"\x89PNG not really")
    (sweep_dir / "analysis" / "fits.csv").write_text("metric,x,exponent\n")
    parent_id = parent.ensure_parent("smoke", sweep_dir, uri, results, {"sweep": "smoke"})
    run_dir = results / "runs" / "r1"
    run_dir.mkdir(parents=True)
    cfg = C.load([f"results_dir={results}", f"tracking.uri={uri}", f"tracking.parent_run_id={parent_id}",
                  "model.size=xs"])
    C.save(cfg, run_dir / "config.yaml")
    run_id = store.ensure_run(run_dir, "smoke", "r1", {"size": "xs"}, parent_id, uri)
    store.mark_pending(run_dir, "server down")
    info = {"params": 1000, "train_flops": 6e9}
    logger = RunLogger(run_dir, uri)  # offline: the run is marked pending
    params = {**flatten(C.to_container(cfg)), **info}
    logger.log_hyperparams(params)
    logger.log_metrics(size_metrics(info, cfg.model), step=SIZE_STEP)
    store.append_metrics(run_dir, {"eval/fid": 170.0, "eval/val_loss": 3.7}, 20)

    assert main([str(results)]) == 0
    out = capsys.readouterr().out
    assert f"r1: {4 + 2 + len(params)} item(s) sent" in out  # model/*, eval/*, params
    assert "smoke (parent): 3 item(s) sent" in out
    run = mlflow.MlflowClient(uri).get_run(run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent_id
    assert {k: run.data.params[k] for k in ("params", "train_flops", "model.size")} == \
        {"params": "1000", "train_flops": "6000000000.0", "model.size": "xs"}
    assert run.data.metrics == {**size_metrics(info, cfg.model), "eval/fid": 170.0, "eval/val_loss": 3.7}
    for key in run.data.metrics:
        assert len(mlflow.MlflowClient(uri).get_metric_history(run_id, key)) == 1, key
    listed = {a.path for folder in (None, "analysis")
              for a in mlflow.MlflowClient(uri).list_artifacts(parent_id, folder)}
    assert {"runs.csv", "analysis/scaling.png", "analysis/fits.csv"} <= listed
    assert main([str(results)]) == 0
    assert "r1: 0 item(s) sent" in (out := capsys.readouterr().out) and "smoke (parent): 0 item(s) sent" in out


def test_sync_closes_the_mlflow_run_of_a_run_its_job_closed_or_failed(tmp_path, capsys):
    """MLflow down when the job closed the run: the run directory says how the run ended (its
    last attempt ``completed``, or status ``failed``) and the sync sets that state, once; a run
    still open (training, or stopped mid-way) stays RUNNING."""
    uri = f"sqlite:///{tmp_path}/runs.db"
    results = tmp_path / "results"
    ids = {}
    for name in ("closed", "failed", "open"):
        run_dir = results / "runs" / name
        run_dir.mkdir(parents=True)
        C.save(C.load([f"results_dir={results}", f"tracking.uri={uri}"]), run_dir / "config.yaml")
        ids[name] = store.ensure_run(run_dir, "sync-test", name, {}, None, uri)
        records.log_attempt(run_dir, "start")
    records.log_attempt(results / "runs" / "closed", "completed")
    write_status(results / "runs" / "failed", "failed", reason="x")
    records.log_attempt(results / "runs" / "failed", "failed")

    assert main([str(results)]) == 0
    out = capsys.readouterr().out
    assert "closed: 1 item(s) sent" in out and "failed: 1 item(s) sent" in out and "open: 0" in out
    client = mlflow.MlflowClient(uri)
    assert {n: client.get_run(i).info.status for n, i in ids.items()} == \
        {"closed": "FINISHED", "failed": "FAILED", "open": "RUNNING"}
    assert main([str(results)]) == 0 and "closed: 0 item(s) sent" in capsys.readouterr().out
