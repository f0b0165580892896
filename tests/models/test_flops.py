"""Size and cost in both conventions: the paper's (params, train_flops) and what runs
(trainable_params, executed_flops), per size of the paper ladder and term by term."""
import pytest
import torch
from omegaconf import OmegaConf

from harness import config
from harness.bench import study_config
from harness.data.datasets import caption_vocabulary
from harness.models.flops import (aligner_flops, executed_flops, forward_flops,
                                  head_flops_per_token, mean_mask_ratio, text_encoder_flops,
                                  train_flops, trainable_parameters)
from harness.models.generator import mask_ratio
from harness.train.module import build_networks, counted_parameters

from tests.conftest import SMOKE

# The paper preset (sweeps/paper.yaml), continuous/random: params (generator + aligner), trainable
# params (+ the learned text encoder the preset trains by default), train FLOPs (3 x forward x
# images), executed FLOPs (x4 diffusion copies per loss token, 86.7% of tokens carry loss).
PAPER_CONTINUOUS_RANDOM = {
    "166M": (177.1e6, 191.4e6, 1.099e20, 1.521e20),
    "369M": (381.4e6, 395.7e6, 2.430e20, 3.156e20),
    "665M": (700.4e6, 714.6e6, 4.543e20, 5.659e20),
    "1.1B": (1159.1e6, 1173.3e6, 7.616e20, 9.210e20),
    "3.1B": (3285.4e6, 3299.7e6, 2.193e21, 2.547e21),
    "10.5B": (10913.9e6, 10928.1e6, 7.263e21, 8.376e21),
}


def size_and_cost(cfg):
    td, cb = cfg.tokenizer.channels, cfg.tokenizer.codebook_size
    with torch.device("meta"):
        nets = build_networks(cfg, td, cb, caption_vocabulary(cfg.data))
    return (counted_parameters(nets), trainable_parameters(nets), train_flops(cfg, td, cb),
            executed_flops(cfg, td, cb))


@pytest.mark.parametrize("size", list(PAPER_CONTINUOUS_RANDOM))
def test_paper_ladder_in_both_conventions(size):
    got = size_and_cost(study_config("continuous", "random", size, preset="paper"))
    assert got == pytest.approx(PAPER_CONTINUOUS_RANDOM[size], rel=1e-3)


def test_the_head_multiplier_counts_in_executed_flops_only_and_shrinks_with_size():
    ratios = {}
    for token in ("continuous", "discrete"):
        ratios[token] = [size_and_cost(study_config(token, "raster", s, preset="paper"))
                         for s in PAPER_CONTINUOUS_RANDOM]
    cont = [e / t for _, _, t, e in ratios["continuous"]]
    assert cont == sorted(cont, reverse=True) and cont[0] > 1.4 and cont[-1] > 1.15
    # discrete: one softmax head per token in both conventions; only the learned encoder differs
    assert all(1 <= e / t < 1.03 for _, _, t, e in ratios["discrete"])


def term(cfg, **extra):
    """executed_flops with config overrides (``model__order="random"`` sets model.order)."""
    cfg = cfg.copy()
    for key, value in extra.items():
        OmegaConf.update(cfg, key.replace("__", "."), value)
    return executed_flops(cfg, cfg.tokenizer.channels, cfg.tokenizer.codebook_size)


def test_executed_flops_term_by_term():
    cfg = config.load(SMOKE + ["model.token=continuous", "model.order=raster"])
    td, cb = cfg.tokenizer.channels, cfg.tokenizer.codebook_size
    images, L = cfg.train.batch_size * cfg.train.steps, config.num_tokens(cfg)
    head = head_flops_per_token(cfg, td, cb)
    # every extra diffusion copy of a loss token: one more forward and backward of the head
    mul = cfg.model.diffusion_batch_mul
    assert term(cfg) - term(cfg, model__diffusion_batch_mul=1) == pytest.approx(
        images * 3 * head * L * (mul - 1))
    # the paper's convention: 3 x forward, the head once per token, whatever the multiplier
    assert train_flops(cfg, td, cb) == 3 * forward_flops(cfg, td, cb) * images
    # without the multiplier, raster order, all trained, the two differ by the learned text
    # encoder only (the paper counts the model from the aligner on)
    cfg.model.diffusion_batch_mul = 1
    assert term(cfg) - train_flops(cfg, td, cb) == pytest.approx(images * 3 * text_encoder_flops(cfg))
    # a frozen text path runs forward only: 2 of its 3 forward-equivalents saved
    saved = images * 2 * (aligner_flops(cfg) + text_encoder_flops(cfg))
    assert term(cfg) - term(cfg, text__lr_scale=0.0) == pytest.approx(saved)
    # random order: the head runs on the masked tokens only
    assert term(cfg) - term(cfg, model__order="random") == pytest.approx(
        images * 3 * head * L * (1 - mean_mask_ratio(cfg)))


def test_mean_mask_ratio_is_the_samplers_mean():
    cfg = config.load([])
    m = cfg.model
    for uniform in (0.0, 0.25):
        m.mask_ratio_uniform = uniform
        draws = mask_ratio(200_000, m.mask_ratio_min, m.mask_ratio_std, uniform,
                           torch.Generator().manual_seed(0), torch.device("cpu"))
        assert mean_mask_ratio(cfg) == pytest.approx(draws.mean().item(), abs=2e-3)
    m.mask_ratio_uniform = 0.0
    assert mean_mask_ratio(cfg) == pytest.approx(0.867, abs=1e-3)
    cfg.model.mask_ratio_std = 0.0
    assert mean_mask_ratio(cfg) == 1.0


@pytest.mark.parametrize("extra, frozen", [
    ([], ()),                                            # text encoder and aligner train
    (["text.train_encoder=false"], ("text",)),           # the encoder stays at its seeded init
    (["text.lr_scale=0"], ("text", "aligner")),          # the whole text path is frozen
])
def test_trainable_parameters_leave_out_frozen_networks(extra, frozen):
    cfg = config.load(SMOKE + extra)
    nets = build_networks(cfg, cfg.tokenizer.channels, cfg.tokenizer.codebook_size, ["a", "b"])
    size = {k: sum(p.numel() for p in nets[k].parameters()) for k in nets}
    assert trainable_parameters(nets) == sum(n for k, n in size.items() if k not in frozen)
    assert counted_parameters(nets) == size["aligner"] + size["generator"]
