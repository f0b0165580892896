"""The optimiser's parameter groups: a frozen text encoder is not trained, the text path learns at
``text.lr_scale`` times the generator's rate (the remedy for the text-path collapse)."""
import pytest
from harness import config
from harness.data.shapes import vocabulary
from harness.errors import UserError
from harness.train.module import GeneratorModule

from tests.conftest import SMOKE


def learning_rates(*overrides: str) -> dict[str, set[float]]:
    """The learning rates the optimiser gives each network's parameters (empty: not trained)."""
    cfg = config.load(SMOKE + ["train.lr=1e-3", *overrides])
    module = GeneratorModule(cfg, token_dim=cfg.tokenizer.channels, codebook_size=16,
                             vocabulary=vocabulary())
    [opt], _ = module.configure_optimizers()
    lr_of = {id(p): g["initial_lr"] for g in opt.param_groups for p in g["params"]}
    trained = sum(len(g["params"]) for g in opt.param_groups)
    assert trained == len(lr_of) == sum(p.requires_grad for p in module.nets.parameters())
    return {k: {lr_of[id(p)] for p in net.parameters() if id(p) in lr_of}
            for k, net in module.nets.items()}


def test_frozen_encoder_is_not_trained_and_the_text_path_learns_at_its_scale():
    lrs = learning_rates("text.train_encoder=false", "text.lr_scale=0.1")
    assert lrs["text"] == set()
    assert lrs["aligner"] == {1e-3 * 0.1}
    assert lrs["generator"] == {1e-3}


def test_lr_scale_zero_freezes_the_text_path():
    lrs = learning_rates("text.lr_scale=0")
    assert lrs["text"] == set() and lrs["aligner"] == set()
    assert lrs["generator"] == {1e-3}


def test_default_trains_every_network_at_one_rate():
    assert learning_rates() == {"text": {1e-3}, "aligner": {1e-3}, "generator": {1e-3}}


def test_negative_lr_scale_is_a_user_error():
    with pytest.raises(UserError, match="text.lr_scale"):
        config.load(SMOKE + ["text.lr_scale=-1"])
