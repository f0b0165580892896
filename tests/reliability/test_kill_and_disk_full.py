"""kill -9 of a training job (three times) and a full disk: nothing lost, nothing half-written."""
import errno
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from harness import config, io
from harness.tracking import store
from harness.train import read_status, run_dir, train


def _step(run):
    rows = [r["step"] for r in store.read_metrics(run) if r["key"] == "train/loss"]
    return max(rows) if rows else -1


@pytest.mark.slow
def test_kill_9_three_times_then_rerun_equals_an_uninterrupted_run(smoke, results_dir, tmp_path):
    overrides = smoke("train.steps=60", "train.checkpoint_every=5", "train.log_every=1",
                      "train.val_every=20", "model.token=discrete", "model.order=raster",
                      "train.threads=1")  # same thread count in both processes: same float sums
    straight = train(config.load(overrides))

    other = tmp_path / "other"
    other.mkdir()
    (other / "stage0").symlink_to(results_dir / "stage0", target_is_directory=True)
    killed = overrides[:-1] + [f"results_dir={other}"]
    run = run_dir(config.load(killed))
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    rng = random.Random(0)
    for attempt in range(3):
        proc = subprocess.Popen([sys.executable, "-m", "harness.train", *killed], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        target = _step(run) + rng.randint(6, 14)
        deadline = time.time() + 240
        while _step(run) < target and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert read_status(run)["status"] == "running", attempt
    resumed = train(config.load(killed))
    assert read_status(resumed)["status"] == "trained"
    # Tolerance, not bit equality: the killed runs train in fresh processes, whose CPU kernels
    # (oneDNN/BLAS dispatch) may sum in another order than the test process; in one process a
    # resume is bit-identical (tests/train/test_train.py).
    a = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    print(f"largest weight difference after 3 kills: {worst:.2e}")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    val = lambda r: {m["step"]: m["value"] for m in store.read_metrics(r) if m["key"] == "val/loss"}
    print(f"val/loss@60: uninterrupted {val(straight)[60]!r}, killed 3x {val(resumed)[60]!r}")
    assert abs(val(straight)[60] - val(resumed)[60]) <= 1e-4 * abs(val(straight)[60])


def test_disk_full_leaves_the_previous_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    io.write_json(target, {"fid": 1.0})

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.os, "fsync", no_space)
    with pytest.raises(OSError, match="No space left"):
        io.write_json(target, {"fid": 2.0, "geneval_overall": 0.5})
    assert io.read_json(target) == {"fid": 1.0}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_disk_full_while_updating_the_results_table_keeps_the_old_table(tmp_path, monkeypatch):
    from harness.sweep import table

    path = tmp_path / "runs.csv"
    table.upsert(path, [{"run_key": "a", "seed": 0, "status": "completed", "fid": 3.0}])
    before = path.read_text()
    monkeypatch.setattr(io.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(OSError):
        table.upsert(path, [{"run_key": "b", "seed": 0, "status": "completed", "fid": 4.0}])
    assert path.read_text() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
