"""Multi-process training from the config alone: 2 CPU processes (DDP over gloo) learn like one.

``train.strategy=ddp_find_unused_parameters_true``: plain ``ddp`` stops at the first step because
some parameters take no part in a given step's loss (the aligner's null caption when no caption is
dropped, the generator's start token in random order)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.tracking import store

REPO = Path(__file__).resolve().parents[2]
TINY = ["data.train_size=256", "data.val_size=32", "tokenizer.steps=30", "tokenizer.hidden=32",
        "tokenizer.heads=2", "train.steps=40", "train.batch_size=16", "train.val_every=10",
        "train.checkpoint_every=10", "train.log_every=5", "train.warmup_steps=5", "train.lr=3e-3",
        "model.diffusion_steps=100", "model.size=xs", "text.width=32", "text.heads=2",
        "text.encoder_layers=1", "text.aligner_layers=1", "train.accelerator=cpu", "train.threads=1"]


def train(results: Path, uri: str, *extra: str) -> dict[int, float]:
    out = subprocess.run([sys.executable, "-m", "harness.train", *TINY, f"results_dir={results}", *extra],
                         cwd=REPO, env={**os.environ, "MLFLOW_TRACKING_URI": uri}, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = Path(out.stdout.strip().splitlines()[-1])
    return {r["step"]: r["value"] for r in store.read_metrics(run_dir) if r["key"] == "val/loss"}


@pytest.mark.slow
def test_two_cpu_processes_learn_like_one(new_sweeper):
    s = new_sweeper("ddp")
    one = train(s.results, s.uri)
    two = train(s.results, s.uri, "train.devices=2", "train.strategy=ddp_find_unused_parameters_true")
    print("val/loss, 1 process:", one, "\nval/loss, 2 processes:", two)
    assert sorted(one) == sorted(two) == [0, 10, 20, 30, 40]
    assert one[0] == two[0]                       # the same initial model
    for curve in (one, two):
        assert curve[40] < 0.5 * curve[0] and curve[40] < curve[20] < curve[0]
    assert abs(two[40] - one[40]) < 0.15 * one[40]
