"""Validation loss in random order: each val sample is masked at a fixed ratio of a grid, with its
own randomness, so the loss of given (EMA) weights does not depend on how the val set is batched."""
from __future__ import annotations

import pytest
import torch

from harness.train.run import validation_loss
from tests.train.tiny_fit import batch, fit, module, tiny_config

VAL = 32


def val_items(cfg) -> list[dict]:
    data = batch(cfg, VAL)
    g = torch.Generator().manual_seed(7)  # other tokens than the training batch's
    data["tokens"] = (torch.randn(data["tokens"].shape, generator=g) if cfg.model.token == "continuous"
                      else torch.randint(0, 16, data["tokens"].shape, generator=g))
    return [{"tokens": data["tokens"][i], "caption": data["caption"][i]} for i in range(VAL)]


def trained(cfg):
    mod = module(cfg)
    fit(cfg, mod)  # a few steps with a short EMA, so the EMA weights are not the initial ones
    return mod.eval()


@pytest.mark.parametrize("token", ["continuous", "discrete"])
def test_random_order_val_loss_does_not_depend_on_the_val_batch_size(token):
    cfg = tiny_config(f"model.token={token}", "model.order=random", "train.ema_decay=0.5")
    mod = trained(cfg)
    items = val_items(cfg)
    losses = {size: validation_loss(mod, torch.utils.data.DataLoader(items, batch_size=size))
              for size in (8, 32, 5)}  # 5: an uneven last batch
    assert losses[8] == pytest.approx(losses[32], abs=1e-6, rel=0)
    assert losses[5] == pytest.approx(losses[32], abs=1e-6, rel=0)
    assert validation_loss(mod, torch.utils.data.DataLoader(items, batch_size=8)) == losses[8]
