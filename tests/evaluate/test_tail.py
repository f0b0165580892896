"""The long tail's metrics: each named kind scored with its own caption and another kind's, on
the same picture and randomness; a kind is learned when its name removes half its loss."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from harness.data.shapes import NamedScenes, named_scene_names, named_scene_probabilities
from harness.evaluate import tail

from tests.fake_tokenizers import Identity

K = 16


class KnowsFirstKinds:
    """A stand-in for the trained module's per-sample probe: loss 0.2 when the caption names the
    pictured kind and that kind is among the first ``known``, else 1.0. Sample i's picture is read
    from its val index (``first + i`` mod K), as ``kind_losses`` passes it."""

    device = torch.device("cpu")

    def __init__(self, known: int):
        self.known, self.calls, self.batches = known, [], []

    def __call__(self, batch, index, first, probe):
        assert probe == "losses" and index == first
        names = named_scene_names(K)
        out = []
        for i, caption in enumerate(batch["caption"]):
            named, pictured = names.index(caption.split()[-1]), (first + i) % K
            self.calls.append((pictured, first + i, named))
            out.append(0.2 if named == pictured < self.known else 1.0)
        self.batches.append(len(out))
        return torch.tensor(out)


def test_kind_losses_pair_each_picture_with_its_own_and_a_far_caption():
    named = NamedScenes(K, 1.5, 0.5)
    own, other = tail.kind_data(named, cells=4, resolution=32, tok=Identity(),
                                 text=OmegaConf.create({"encoder": "learned", "max_len": 16}))
    assert own.tokens.shape == (K, 3, 32, 32) and torch.equal(own.tokens, other.tokens)
    module = KnowsFirstKinds(known=5)
    metrics = tail.tail_metrics(tail.kind_losses(module, own, batch_size=6),
                                tail.kind_losses(module, other, batch_size=6), named)
    assert max(module.batches) == 6  # kinds are scored in batches
    # each kind's r-th draw is val sample k + r K's, whatever the batching
    assert sorted(j for _, j, _ in module.calls) == sorted(2 * list(range(K * tail.REPEATS)))
    pictured_with = {}
    for pictured, index, named_kind in module.calls:
        pictured_with.setdefault(pictured, set()).add(named_kind)
    assert all(pictured_with[k] == {k, (k + K // 2) % K} for k in range(K))
    assert len(module.calls) == 2 * K * tail.REPEATS
    assert metrics["tail_kinds_learned"] == 5
    p = named_scene_probabilities(K, 1.5)
    assert metrics["tail_loss"] == pytest.approx(0.2 * p[:5].sum() + 1.0 * p[5:].sum())
    assert metrics["tail_gain_1_8"] == pytest.approx(0.8 * 5 / 8) and metrics["tail_gain_9_16"] == 0.0


def test_a_kind_is_learned_when_its_name_removes_half_its_loss():
    named = NamedScenes(K, 1.5, 0.5)
    other = np.ones(K)
    own = np.linspace(0.0, 1.0, K)  # 0, 1/15, ..., 7/15 <= 0.5 < 8/15
    assert tail.tail_metrics(own, other, named)["tail_kinds_learned"] == 8
    assert tail.tail_metrics(other, other, named)["tail_kinds_learned"] == 0
