"""Faults inside a training run: corrupt checkpoints and non-finite losses."""
import pytest
import torch

from harness import config
from harness.run_dir import RunDir
from harness.run_status import read_status
from harness.train.module import NonFiniteLoss
from harness.train.run import train


def test_truncated_checkpoint_falls_back_to_the_previous_one_with_a_warning(smoke):
    cfg = config.load(smoke("train.steps=20", "train.checkpoint_every=10"))
    run = RunDir(train(cfg))
    assert run.prev_checkpoint.exists()
    data = run.last_checkpoint.read_bytes()
    run.last_checkpoint.write_bytes(data[: len(data) // 3])
    with pytest.warns(UserWarning, match="last.ckpt"):
        assert run.latest_checkpoint() == run.prev_checkpoint
    run.prev_checkpoint.write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning):
        assert run.latest_checkpoint() is None


def test_checkpoints_load_with_weights_only(smoke):
    run = train(config.load(smoke("train.steps=10")))
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 10


def test_nan_loss_fails_the_run_with_step_and_reason(smoke, monkeypatch):
    from harness.models.generator import Generator

    original = Generator.loss
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        loss = original(self, *args, **kwargs)
        calls["n"] += 1
        return loss * float("nan") if self.training and calls["n"] > 7 else loss

    monkeypatch.setattr(Generator, "loss", poisoned)
    cfg = config.load(smoke("train.steps=20"))
    with pytest.raises(NonFiniteLoss):
        train(cfg)
    status = read_status(RunDir.of(cfg).path)
    assert status["status"] == "failed"
    assert "nan" in status["reason"] and status["step"] >= 5
