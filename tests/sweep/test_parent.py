"""The sweep's parent run mirrors the sweep folder: the results table and the analysis (figures as
PNG, fits.csv, ...) become its artifacts at the sweep's end, again only when they change, and a
failure leaves the folder marked pending for ``python -m harness.sync`` without failing the sweep."""
from __future__ import annotations

import mlflow
import numpy as np
from PIL import Image

from harness.sweep import parent
from harness.tracking import store


def sweep_folder(root):
    """A sweep folder as a finished sweep and its analysis leave it, with a write in progress."""
    sweep_dir = root / "smoke"
    (sweep_dir / "analysis").mkdir(parents=True)
    (sweep_dir / "runs.csv").write_text("run_key,status\na,completed\n")
    Image.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(sweep_dir / "analysis" / "scaling.png")
    (sweep_dir / "analysis" / "fits.csv").write_text("metric,x,exponent\n")
    (sweep_dir / "analysis" / ".fits.csv.x1.tmp").write_text("half a file")
    (sweep_dir / "parent.lock").touch()
    return sweep_dir


def on_disk(sweep_dir) -> dict[str, int]:
    """What the parent should hold: artifact path -> size."""
    return {f"{folder}/{path.name}".lstrip("/"): path.stat().st_size
            for path, folder in parent.mirrored_files(sweep_dir).items()}


def artifacts(client, run_id) -> dict[str, int]:
    files = {}
    for folder in (None, "analysis"):
        files.update({a.path: a.file_size for a in client.list_artifacts(run_id, folder) if not a.is_dir})
    return files


def unreachable(*args, **kwargs):
    raise OSError()  # as a store that is down may: no message


def test_finish_parent_mirrors_the_sweep_folder(tmp_path, monkeypatch, caplog):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    sweep_dir = sweep_folder(tmp_path)
    run_id = parent.ensure_parent("smoke", sweep_dir, uri, tmp_path, {"sweep": "smoke"})
    client = mlflow.MlflowClient(uri)

    parent.finish_parent(run_id, uri, {"completed": 1}, sweep_dir / "runs.csv")
    assert set(on_disk(sweep_dir)) == {"runs.csv", "analysis/fits.csv", "analysis/scaling.png"}
    assert artifacts(client, run_id) == on_disk(sweep_dir)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert parent.sync_parent(sweep_dir, uri) == 0  # nothing changed, nothing sent

    (sweep_dir / "analysis" / "fits.csv").write_text("metric,x,exponent\nfid,params,-0.1\n")  # a re-run
    assert parent.sync_parent(sweep_dir, uri) == 1
    assert artifacts(client, run_id) == on_disk(sweep_dir)

    # MLflow fails: the sweep still ends (status set), the folder is marked for harness.sync
    monkeypatch.setattr(store, "RETRY_DELAY_S", 0.0)
    (sweep_dir / "runs.csv").write_text("run_key,status\na,completed\nb,failed\n")
    monkeypatch.setattr(mlflow.MlflowClient, "log_artifact", unreachable)
    parent.finish_parent(run_id, uri, {"completed": 1, "failed": 1}, sweep_dir / "runs.csv")
    assert (sweep_dir / parent.PENDING_FILE).read_text().strip() == "OSError"
    assert "MLflow parent artifacts not logged (OSError)" in caplog.text
    assert client.get_run(run_id).info.status == "FAILED"
    monkeypatch.undo()
    assert parent.sync_parent(sweep_dir, uri) == 1 and not (sweep_dir / parent.PENDING_FILE).exists()
    assert artifacts(client, run_id) == on_disk(sweep_dir)
