"""MLflow raising exceptions without a message (``TimeoutError()``, a bare ``OSError``) while a run
logs params, metrics or artifacts: the run still completes, the failure is reported in one line,
and ``python -m harness.sync`` then gives MLflow everything the run directory holds."""
from __future__ import annotations

import mlflow
import pytest

from harness import config
from harness.errors import one_line
from harness.evaluate.run import evaluate
from harness.io import read_json
from harness.run_status import read_status
from harness.sync import main as sync_main
from harness.run_dir import RunDir
from harness.tracking import store
from harness.train.run import train


@pytest.mark.parametrize("error", [TimeoutError(), OSError(), ValueError(""), RuntimeError("\n")])
def test_one_line_never_fails(error):
    assert one_line(error) == type(error).__name__
    assert one_line(error, typed=True) == type(error).__name__
    assert one_line(OSError(5, "Input/output error\nmore"), typed=True) == "OSError: [Errno 5] Input/output error"


def _failing(error: BaseException, when=lambda *a, **k: True):
    original = {}

    def patch(name):
        def method(self, *args, **kwargs):
            if when(*args, **kwargs):
                raise error
            return original[name](self, *args, **kwargs)
        return method
    return original, patch


CASES = {  # what fails: (client method, exception, condition on its arguments)
    "params": ("log_batch", TimeoutError(), lambda *a, **k: bool(k.get("params"))),
    "metrics": ("log_batch", OSError(), lambda *a, **k: bool(k.get("metrics"))),
    "artifacts": ("log_artifact", ConnectionResetError(), lambda *a, **k: True),
}


@pytest.mark.parametrize("what", list(CASES))
def test_message_less_mlflow_errors_leave_the_run_complete_and_replayable(what, smoke, tmp_path,
                                                                        monkeypatch, caplog):
    method, error, when = CASES[what]
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setattr(store, "RETRY_DELAY_S", 0.0)
    original, patch = _failing(error, when)
    original[method] = getattr(mlflow.MlflowClient, method)
    monkeypatch.setattr(mlflow.MlflowClient, method, patch(method))
    cfg = config.load(smoke(f"tracking.uri={uri}", "train.steps=10", "train.val_every=5",
                            "train.checkpoint_every=5"))
    run = train(cfg)
    evaluate(run)
    assert read_status(run)["status"] == "completed"
    assert RunDir(run).mlflow_pending.read_text().strip() == type(error).__name__
    assert any(type(error).__name__ in r.getMessage() for r in caplog.records)

    # MLflow works again: the sync sends what it lacks, and nothing twice
    monkeypatch.setattr(mlflow.MlflowClient, method, original[method])
    assert sync_main([str(run.parent.parent), "--uri", uri]) == 0
    assert sync_main([str(run.parent.parent), "--uri", uri]) == 0
    client = mlflow.MlflowClient(uri)
    run_id = RunDir(run).mlflow_run_id.read_text().strip()
    local = store.read_metrics(run)
    for key in {r["key"] for r in local}:
        steps = sorted(m.step for m in client.get_metric_history(run_id, key))
        assert steps == sorted(r["step"] for r in local if r["key"] == key), key
    params = client.get_run(run_id).data.params
    assert params == read_json(RunDir(run).params) and "model.size" in params
    listed = {a.path for folder in ("samples", "eval") for a in client.list_artifacts(run_id, folder)}
    assert listed == {"samples/grid.png", "samples/fixed_prompts.png", "eval/metrics.json"}
    assert not RunDir(run).mlflow_pending.exists()
