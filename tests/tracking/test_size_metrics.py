"""A run's size and cost as ``model/*`` metrics: every number of info.json and the model's shape,
logged once even when the run resumes (its logger finds them in metrics.jsonl)."""
from __future__ import annotations

import mlflow

from harness.tracking import store
from harness.tracking.logger import RunLogger
from harness.tracking.size_metrics import STEP, size_metrics

INFO = {"params": 223488, "trainable_params": 237920, "forward_flops": 21626880,
        "train_flops": 20761804800.0, "executed_flops": 21170749440.0, "num_tokens": 64}
MODEL = {"token": "discrete", "order": "raster", "size": "xs", "ladder": "cpu", "depth": 2, "width": 64,
         "heads": 2}


def test_size_metrics_are_the_numbers_of_info_and_the_models_shape():
    metrics = size_metrics({**INFO, "note": "text", "flag": True}, MODEL)
    assert metrics == {**{f"model/{k}": float(v) for k, v in INFO.items()},
                       "model/depth": 2.0, "model/width": 64.0}  # text and booleans are no metric
    assert all(type(v) is float for v in metrics.values())


def test_a_resumed_run_logs_its_size_once(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run_id = store.ensure_run(run_dir, "sizes", "run", {}, None, uri)
    for _ in range(2):  # the first attempt, then the resumed one (a new process: a new logger)
        RunLogger(run_dir, uri).log_metrics(size_metrics(INFO, MODEL), step=STEP)
    rows = [r for r in store.read_metrics(run_dir) if r["key"].startswith("model/")]
    assert sorted(r["key"] for r in rows) == sorted(size_metrics(INFO, MODEL))
    client = mlflow.MlflowClient(uri)
    for key, value in size_metrics(INFO, MODEL).items():
        assert [(m.step, m.value) for m in client.get_metric_history(run_id, key)] == [(STEP, value)]
