"""Behaviour of the four generator variants on tiny configs."""
import pytest
import torch

from harness.models.generator import (VAL_RATIOS, Generator, mask_ratio, mask_ratio_quantile,
                                      truncated_normal_quantile, val_generator)
from harness.models.transformer import KVCache

L, W, T = 16, 32, 5


def make(token, order, **kw):
    torch.manual_seed(0)
    g = Generator(token, order, num_tokens=L, depth=2, width=W, heads=2, token_dim=3,
                  codebook_size=11, head_width=32, head_depth=2, **kw)
    # give the zero-initialised heads some weights so outputs depend on inputs
    for p in g.parameters():
        if p.abs().sum() == 0 and p.ndim > 0:
            torch.nn.init.normal_(p, std=0.05)
    return g.eval()


def tokens(token, b=2, seed=1):
    gen = torch.Generator().manual_seed(seed)
    if token == "discrete":
        return torch.randint(0, 11, (b, L), generator=gen)
    return torch.randn(b, L, 3, generator=gen)


def context(b=2):
    gen = torch.Generator().manual_seed(5)
    return torch.randn(b, T, W, generator=gen), torch.ones(b, T, dtype=torch.bool)


@pytest.mark.parametrize("token", ["discrete", "continuous"])
def test_raster_output_at_i_ignores_tokens_after_i(token):
    g = make(token, "raster")
    x = tokens(token)
    ctx, m = context()
    z1 = g.backbone(g.inputs(x), ctx, m)
    for i in (0, 5, L - 2):
        x2 = x.clone()
        x2[:, i + 1:] = tokens(token, seed=9)[:, i + 1:]
        z2 = g.backbone(g.inputs(x2), ctx, m)
        # the output at position j predicts token j from tokens < j: positions <= i + 1 see only x[:i+1]
        torch.testing.assert_close(z1[:, : i + 2], z2[:, : i + 2], atol=1e-6, rtol=0)
        assert not torch.allclose(z1[:, i + 2:], z2[:, i + 2:]) or i + 2 >= L


@pytest.mark.parametrize("token", ["discrete", "continuous"])
def test_random_order_does_not_leak_masked_content(token):
    g = make(token, "random")
    x = tokens(token)
    ctx, m = context()
    masked = g.random_mask(2, torch.Generator().manual_seed(3), torch.device("cpu"))
    assert masked.any() and not masked.all()
    x2 = x.clone()
    x2[masked] = tokens(token, seed=7)[masked]
    z1 = g.backbone(g.inputs(x, masked), ctx, m)
    z2 = g.backbone(g.inputs(x2, masked), ctx, m)
    torch.testing.assert_close(z1, z2)
    # and visible content does matter
    x3 = x.clone()
    x3[~masked] = tokens(token, seed=8)[~masked]
    assert not torch.allclose(z1, g.backbone(g.inputs(x3, masked), ctx, m))


def test_mask_ratio_is_truncated_normal():
    r = mask_ratio(20000, 0.7, 0.25, 0.0, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert r.min() >= 0.7 and r.max() <= 1.0
    # N(1, 0.25) truncated to [0.7, 1]: mean 1 - 0.25 (phi(0) - phi(-1.2)) / (Phi(0) - Phi(-1.2))
    assert abs(r.mean().item() - 0.8670) < 0.005
    # density rises towards 1: more mass in the top half of the interval
    assert (r > 0.85).float().mean() > 0.55


def test_mask_ratio_mixed_with_uniform():
    """A fraction ``uniform`` of the ratios comes from U(0, 1): the contexts of late sampling steps."""
    r = mask_ratio(40000, 0.7, 0.25, 0.25, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert r.min() >= 0.0 and r.max() <= 1.0
    # below MAR's 0.7 only the uniform part: P(r < x) = 0.25 x
    for x in (0.2, 0.5, 0.7):
        assert (r < x).float().mean().item() == pytest.approx(0.25 * x, abs=0.01)
    assert r.mean().item() == pytest.approx(0.75 * 0.8670 + 0.25 * 0.5, abs=0.005)
    # without the mixture the quantile is the truncated normal's, exactly (earlier runs' masks)
    u = torch.linspace(0, 1, 33)
    assert torch.equal(mask_ratio_quantile(u, 0.7, 0.25, 0.0), truncated_normal_quantile(u, 0.7, 0.25))
    # the mixture's quantile is monotone and spans (0, 1]
    q = mask_ratio_quantile(u, 0.7, 0.25, 0.25)
    assert (q.diff() >= 0).all() and q[0] < 1e-6 and q[-1] == pytest.approx(1.0)


def test_validation_masks_sample_j_at_grid_ratio_j_whatever_its_batch():
    g = make("continuous", "random")
    cpu = torch.device("cpu")
    masked, _ = g.validation_masks(0, 2 * VAL_RATIOS, cpu)
    counts = masked.sum(1)
    # a sample's mask depends on its index only, not on the batch it is drawn in
    for first, size in ((0, 1), (5, 3), (VAL_RATIOS + 2, 7)):
        assert torch.equal(g.validation_masks(first, size, cpu)[0], masked[first:first + size])
    # the grid repeats every VAL_RATIOS samples: the same counts, other positions
    assert torch.equal(counts[:VAL_RATIOS], counts[VAL_RATIOS:])
    assert not torch.equal(masked[:VAL_RATIOS], masked[VAL_RATIOS:])
    # counts rise with the quantile, span the training range [0.7 L, L] and average its mean (0.867 L)
    assert counts[:VAL_RATIOS].tolist() == sorted(counts[:VAL_RATIOS].tolist())
    assert 0.7 * L <= counts.min() and counts.max() == L
    assert abs(counts.float().mean().item() / L - 0.8670) < 1 / L


def test_random_mask_masks_ceil_ratio_of_tokens_with_a_fresh_order_per_sample():
    g = make("discrete", "random")
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        masked = g.random_mask(4, gen, torch.device("cpu"))
        counts = masked.sum(1)
        assert (counts == counts[0]).all() and 0.7 * L <= counts[0] <= L
    masked = g.random_mask(64, torch.Generator().manual_seed(1), torch.device("cpu"))
    assert len({tuple(row.tolist()) for row in masked}) > 1 or masked.all()


def test_one_ratio_per_batch_masks_as_mar_scatters_it():
    """The per-batch mask is the one the reference runs trained with (MAR's scatter of the first
    ``ceil(ratio L)`` tokens of each sample's order), drawn from the same random numbers."""
    g = make("discrete", "random", mask_ratio_uniform=0.5)
    for seed in range(20):
        masked = g.random_mask(8, torch.Generator().manual_seed(seed), torch.device("cpu"))
        gen = torch.Generator().manual_seed(seed)
        ratio = mask_ratio(1, 0.7, 0.25, 0.5, gen, torch.device("cpu"))
        order = torch.rand(8, L, generator=gen).argsort(dim=1)
        n = max(1, int(torch.ceil(ratio * L).item()))
        assert torch.equal(masked, torch.zeros(8, L, dtype=torch.bool).scatter(1, order[:, :n], True))


def test_one_ratio_per_sample_draws_each_samples_count_from_the_training_distribution():
    g = make("discrete", "random", mask_ratio_uniform=1.0, mask_ratio_per_sample=True)
    masked = g.random_mask(4096, torch.Generator().manual_seed(0), torch.device("cpu"))
    counts = masked.sum(1).float()
    # uniform ratios on (0, 1]: every count 1..L, each about equally often, mean (L + 1) / 2
    assert set(counts.long().tolist()) == set(range(1, L + 1))
    assert abs(counts.mean().item() - (L + 1) / 2) < 0.3
    assert counts.long().bincount().max() < 1.3 * 4096 / L


@pytest.mark.parametrize("token", ["discrete", "continuous"])
def test_per_sample_loss_is_the_mean_of_each_samples_own_mean(token):
    """With a ratio per sample, the loss weighs samples equally, as validation does, not tokens."""
    g = make(token, "random", mask_ratio_uniform=1.0, mask_ratio_per_sample=True)
    b = 6
    x, (ctx, m) = tokens(token, b=b), context(b)
    loss = g.loss(x, ctx, m, generator=torch.Generator().manual_seed(2))
    gen = torch.Generator().manual_seed(2)
    masked = g.random_mask(b, gen, torch.device("cpu"))
    assert len(set(masked.sum(1).tolist())) > 1
    z = g.backbone(g.inputs(x, masked), ctx, m)
    if token == "discrete":
        per_sample = [g.head(z[i][masked[i]]).log_softmax(-1).gather(1, x[i][masked[i]][:, None]).neg().mean()
                      for i in range(b)]
        assert loss.item() == pytest.approx(torch.stack(per_sample).mean().item(), rel=1e-5)
    else:  # the diffusion head draws (t, noise) after the mask: the same draws, token by token
        counts = masked.sum(1)
        weight = (1.0 / counts.float()).repeat_interleave(counts)
        expected = g.diffloss(x[masked], z[masked], generator=gen, weight=weight)
        assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
        # a token-level mean of the same draws differs: samples with few masked tokens count more
        gen = torch.Generator().manual_seed(2)
        g.random_mask(b, gen, torch.device("cpu"))
        assert g.diffloss(x[masked], z[masked], generator=gen).item() != pytest.approx(loss.item(), rel=1e-3)


@pytest.mark.parametrize("token", ["discrete", "continuous"])
def test_kv_cache_sampling_equals_uncached(token):
    g = make(token, "raster")
    ctx, m = context()
    null, nm = context()
    kw = dict(cfg=2.0, temperature=1.0, diffusion_steps=5, top_k=0)
    a = g.sample(ctx, m, null * 0.5, nm, generator=torch.Generator().manual_seed(0), kv_cache=True, **kw)
    b = g.sample(ctx, m, null * 0.5, nm, generator=torch.Generator().manual_seed(0), kv_cache=False, **kw)
    if token == "discrete":
        assert torch.equal(a, b)
    else:
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_a_caption_only_cache_keeps_the_captions_keys_and_reruns_every_token():
    # random-order sampling runs the whole sequence at every step with one cache per block that
    # holds only the caption's keys and values; each call must equal the uncached backbone's
    g = make("continuous", "random")
    ctx, m = context()
    caches = [KVCache(grows=False) for _ in g.blocks]
    for seed in (1, 2):  # the second call reads the cached keys and values
        x = g.inputs(tokens("continuous", seed=seed))
        assert torch.equal(g.backbone(x, ctx, m, caches), g.backbone(x, ctx, m))
    assert all(c.k is None and c.ck is not None for c in caches)


@pytest.mark.parametrize("order", ["raster", "random"])
@pytest.mark.parametrize("token", ["discrete", "continuous"])
def test_sample_losses_give_each_sample_its_loss_alone(token, order):
    # per-sample probes (the long tail's kinds) run in batches: sample i scored at first = f must
    # be what a batch of that sample alone at first = f + i gives
    g = make(token, order, mask_ratio_uniform=0.5)
    b, first = 5, 3
    x, (ctx, m) = tokens(token, b=b), context(b)
    batched = g.sample_losses(x, ctx, m, first)
    for i in range(b):
        one = (x[i:i + 1], ctx[i:i + 1], m[i:i + 1])
        alone = (g.validation_loss(*one, first + i) if order == "random"
                 else g.loss(*one, generator=val_generator(first + i)))
        torch.testing.assert_close(batched[i], alone, rtol=1e-5, atol=1e-6)
    if order == "random":
        torch.testing.assert_close(g.validation_loss(x, ctx, m, first), batched.mean())


@pytest.mark.parametrize("order", ["raster", "random"])
@pytest.mark.parametrize("token", ["discrete", "continuous"])
def test_cfg_scale_one_equals_conditional_model(token, order):
    g = make(token, order)
    ctx, m = context()
    null, nm = torch.randn_like(ctx), m
    kw = dict(temperature=1.0, steps=4, diffusion_steps=5)
    guided = g.sample(ctx, m, null, nm, cfg=1.0, generator=torch.Generator().manual_seed(0), **kw)
    plain = g.sample(ctx, m, None, None, cfg=1.0, generator=torch.Generator().manual_seed(0), **kw)
    if token == "discrete":
        assert torch.equal(guided, plain)
    else:
        torch.testing.assert_close(guided, plain, atol=1e-5, rtol=1e-5)
    # and a real guidance scale changes the result
    other = g.sample(ctx, m, null, nm, cfg=30.0, generator=torch.Generator().manual_seed(0), **kw)
    assert not torch.equal(other, plain)


@pytest.mark.parametrize("order", ["raster", "random"])
@pytest.mark.parametrize("token", ["discrete", "continuous"])
def test_sample_shapes_and_every_token_filled(token, order):
    g = make(token, order)
    ctx, m = context(3)
    out = g.sample(ctx, m, cfg=1.0, steps=6, diffusion_steps=4,
                   generator=torch.Generator().manual_seed(0))
    assert out.shape == ((3, L) if token == "discrete" else (3, L, 3))
    if token == "continuous":
        assert (out.abs().sum(-1) > 0).all()


def test_loss_is_deterministic_given_generator():
    g = make("continuous", "random")
    x, (ctx, m) = tokens("continuous"), context()
    a = g.loss(x, ctx, m, generator=torch.Generator().manual_seed(4))
    b = g.loss(x, ctx, m, generator=torch.Generator().manual_seed(4))
    assert a.item() == b.item()


def test_final_norm_and_logits_init_follow_the_config():
    """The defaults are GPT/MAR's final LayerNorm and muP's zero readout (every code equally likely
    at init); the shapes study turns the norm off and draws the readout at GPT's std."""
    from harness import config
    from harness.train.module import build_networks

    def generator(*overrides):
        cfg = config.load(["model.token=discrete", "model.size=xxs", *overrides])
        return build_networks(cfg, token_dim=4, codebook_size=64, vocabulary=["a"])["generator"]

    default = generator()
    assert isinstance(default.norm, torch.nn.LayerNorm) and default.head.weight.abs().max() == 0
    study = generator("model.final_norm=false", "model.logits_init_std=0.02")
    assert isinstance(study.norm, torch.nn.Identity)
    assert study.head.weight.std().item() == pytest.approx(0.02, rel=0.1)
