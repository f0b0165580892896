"""The GenEval ceiling: a tokenizer that reconstructs perfectly scores what the true scenes score
(1.0); one that loses the objects scores what an empty image does; the result is cached."""
from __future__ import annotations

from omegaconf import OmegaConf

from harness.geneval.ceiling import ensure_geneval_ceiling, geneval_ceiling
from harness.registry import GENEVAL_TAGS
from tests.fake_tokenizers import Blur, Identity

DATA = OmegaConf.create({"layout": "grid", "cells": 4, "resolution": 32})


def test_a_perfect_tokenizer_reaches_the_true_scenes_score():
    ceiling = geneval_ceiling(Identity(), DATA, n_per_tag=2, images_per_prompt=2)
    assert set(ceiling) == {*GENEVAL_TAGS, "overall", "true_overall"}
    assert ceiling["overall"] == ceiling["true_overall"] == 1.0


def test_a_tokenizer_that_loses_shapes_has_a_low_ceiling(tmp_path):
    tok_dir = tmp_path / "tokenizer-continuous-abc"
    first = ensure_geneval_ceiling(tok_dir, Blur(), DATA, n_per_tag=2, images_per_prompt=2)
    assert first["overall"] < 0.5 and first["true_overall"] == 1.0
    # cached beside the tokenizer: a second call does not reconstruct again
    assert ensure_geneval_ceiling(tok_dir, None, DATA, n_per_tag=2, images_per_prompt=2) == first
