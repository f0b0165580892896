"""The caption-use diagnostic: a model trained to read captions loses more with a shuffled or null
caption than with the true one; the CLI writes one row per completed run."""
from __future__ import annotations

import csv

import pytest
import torch

from analysis import caption_use
from harness import config
from harness.text.aligner import context_spread
from harness.train.run import train


def test_a_model_that_reads_captions_loses_more_without_them(smoke, tmp_path):
    # discrete raster learns caption -> first tokens quickly (tests/train: its loss falls fastest)
    run = train(config.load(smoke("model.token=discrete", "model.order=raster", "train.steps=60",
                                  "train.lr=3e-3", "text.dropout_prob=0.3")))
    losses = caption_use.caption_losses(run, n=32)
    assert set(losses) == {"true", "shuffled", "shuffled_within", "null", "context_spread"}
    assert losses["shuffled_within"] == losses["shuffled"]  # no named scenes: one kind, one shuffle
    assert 0 < losses["context_spread"] < 2
    assert losses["true"] < losses["shuffled"] and losses["true"] < losses["null"], losses
    table = tmp_path / "runs.csv"
    with open(table, "w", newline="") as f:
        w = csv.DictWriter(f, ["run_key", "token", "order", "size", "params", "status", "run_dir"])
        w.writeheader()
        w.writerow({"run_key": run.name, "token": "discrete", "order": "raster", "size": "xs",
                    "params": 1, "status": "completed", "run_dir": str(run)})
    out = caption_use.main(["--runs", str(table), "--out", str(tmp_path / "out"), "--n", "32"])
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 1 and float(rows[0]["gain"]) == pytest.approx(losses["shuffled"] - losses["true"])
    assert float(rows[0]["gain_within"]) == pytest.approx(float(rows[0]["gain"]))


def test_the_within_kind_shuffle_gives_names_to_named_scenes_and_descriptions_to_the_rest():
    captions = [f"a photo of {i} circles" for i in range(40)]
    names = {"bakotu", "dilepa", "rosivu"}
    for i, name in zip((3, 17, 18, 30), ("a bakotu", "an image of a dilepa", "a rosivu", "a photo of a bakotu")):
        captions[i] = name
    plain, within = caption_use.shuffled_order(captions, 5), caption_use.shuffled_order(captions, 5, names)
    assert sorted(plain) == sorted(within) == list(range(40))
    named = [i in (3, 17, 18, 30) for i in range(40)]
    assert any(named[i] != named[j] for i, j in enumerate(plain))
    assert all(named[i] == named[j] for i, j in enumerate(within))
    assert sum(i != j for i, j in enumerate(within)) > 30  # a shuffle, not the identity
    assert caption_use.shuffled_order(captions, 5, {"nowhere"}) == plain  # one kind: the plain shuffle


def test_context_spread_is_zero_for_a_collapsed_text_path_and_ignores_padding():
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(64, 6, dtype=torch.bool)
    mask[:, 4:] = False
    distinct = torch.randn(64, 6, 8, generator=g)
    assert context_spread(distinct, mask).item() == pytest.approx(1.0, abs=0.1)
    collapsed = torch.randn(1, 6, 8, generator=g).expand(64, -1, -1).clone()
    collapsed[:, 4:] = torch.randn(64, 2, 8, generator=g)  # padding may differ: it is not read
    assert context_spread(collapsed, mask).item() == pytest.approx(0.0, abs=1e-6)
