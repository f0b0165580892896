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


def test_lr_base_width_scales_every_rate_by_base_over_width():
    """train.lr_base_width=64 at the smoke size xs (width 64) keeps train.lr; at width 192 (xl)
    a third of it, for the text path at its own scale too."""
    assert learning_rates("train.lr_base_width=64", "text.lr_scale=0.5")["generator"] == {1e-3}
    lrs = learning_rates("train.lr_base_width=64", "model.size=xl", "text.lr_scale=0.5")
    assert [*lrs["generator"], *lrs["aligner"]] == pytest.approx([1e-3 / 3, 1e-3 / 6])


def test_negative_lr_scale_is_a_user_error():
    with pytest.raises(UserError, match="text.lr_scale"):
        config.load(SMOKE + ["text.lr_scale=-1"])


def by_name(key: str, *overrides: str) -> dict[str, float]:
    """The optimiser's ``key`` (weight_decay, lr) for each trained parameter, by name."""
    cfg = config.load(SMOKE + ["train.weight_decay=0.02", *overrides])
    module = GeneratorModule(cfg, token_dim=cfg.tokenizer.channels, codebook_size=16,
                             vocabulary=vocabulary())
    [opt], _ = module.configure_optimizers()
    of = {id(p): g[key] for g in opt.param_groups for p in g["params"]}
    return {n: of[id(p)] for n, p in module.nets.named_parameters() if p.requires_grad}


def decay_by_name(*overrides: str) -> dict[str, float]:
    return by_name("weight_decay", *overrides)


@pytest.mark.parametrize("token", ["discrete", "continuous"])
def test_mup_scales_only_matrices_whose_fan_in_grows_with_width(token):
    """train.lr_width_rule=mup at width 192 (xl, base 64): hidden and output matrices of the
    generator, aligner and diffusion head at a third of the lr; the token embedding, the
    projections from fixed widths (text features, token channels, time frequencies), biases,
    norms and positions at the full lr; at the base width every lr is train.lr."""
    rule = ["train.lr_base_width=64", "train.lr_width_rule=mup", f"model.token={token}",
            "text.encoder=learned", "text.lr_scale=0.5"]
    lr = by_name("initial_lr", *rule, "model.size=xl")
    third = {n for n, v in lr.items() if v == pytest.approx(1e-3 / 3 * (0.5 if n.startswith(("text.", "aligner.")) else 1))}
    full = {n for n, v in lr.items() if v == pytest.approx(1e-3 * (0.5 if n.startswith(("text.", "aligner.")) else 1))}
    assert third | full == set(lr), "every lr is either train.lr or a third of it"
    hidden = ("generator.blocks.0.attn.q.weight", "generator.blocks.0.mlp.2.weight",
              "generator.blocks.0.cross_attn.kv.weight", "aligner.blocks.0.attn.proj.weight")
    fixed_in = ["generator.embed.weight", "generator.pos", "aligner.proj.weight",
                "generator.blocks.0.attn.q.bias", "text.blocks.0.attn.q.weight"]
    if token == "discrete":
        hidden += ("generator.head.weight",)
    else:
        hidden += ("generator.diffloss.net.blocks.0.mlp.0.weight", "generator.diffloss.net.cond.weight",
                   "generator.diffloss.net.out.weight")
        fixed_in += ["generator.diffloss.net.inp.weight", "generator.diffloss.net.time.0.weight"]
    present = set(lr)
    assert set(hidden) & present == set(hidden) and set(hidden) <= third, set(hidden) - third
    assert set(fixed_in) <= present and set(fixed_in) <= full, set(fixed_in) - full
    assert set(by_name("initial_lr", *rule).values()) == {1e-3, 5e-4}  # xs: width 64, the base


def test_mup_scales_a_head_that_follows_the_width_and_not_a_fixed_one():
    """model.head_width_ratio=0.5 at xl gives a 96-wide head whose base is half the base width,
    so its hidden matrices take a third of the lr as the full-width head's do; a head set to 96
    (model.head_width), or with train.mup_scale_head=false, keeps its width at the base and its
    hidden matrices the full lr."""
    rule = ["train.lr_base_width=64", "train.lr_width_rule=mup", "model.token=continuous",
            "text.encoder=learned", "model.size=xl"]
    hidden = "generator.diffloss.net.blocks.0.mlp.0.weight"
    cfg = config.load(SMOKE + rule + ["model.head_width_ratio=0.5"])
    assert cfg.model.head_width == 96
    assert by_name("initial_lr", *rule, "model.head_width_ratio=0.5")[hidden] == pytest.approx(1e-3 / 3)
    assert by_name("initial_lr", *rule, "model.head_width=96")[hidden] == pytest.approx(1e-3)
    assert config.load(SMOKE + ["model.head_width_ratio=0.5"]).model.head_width == 32  # xs
    fixed = by_name("initial_lr", *rule, "model.head_width_ratio=0.5", "train.mup_scale_head=false")
    assert fixed[hidden] == pytest.approx(1e-3)
    assert fixed["generator.diffloss.net.cond.weight"] == pytest.approx(1e-3 / 3)  # fan-in: the model's
    assert fixed["generator.blocks.0.mlp.2.weight"] == pytest.approx(1e-3 / 3)
    with pytest.raises(UserError, match="train.mup_scale_head"):
        config.load(SMOKE + ["train.mup_scale_head=false"])
    with pytest.raises(UserError, match="model.head_width_ratio"):
        config.load(SMOKE + ["model.head_width_ratio=0"])


def test_weight_decay_groups_are_mars():
    """As MAR's add_weight_decay: matrices, embeddings and learned tokens decay (positions too);
    biases, norm scales and the whole diffusion head do not."""
    decay = decay_by_name()
    decayed = {n for n, d in decay.items() if d == 0.02}
    assert set(decay.values()) == {0.0, 0.02}
    assert {"generator.pos", "text.pos", "generator.mask_token", "generator.start", "aligner.null",
            "text.embed.weight", "generator.embed.weight", "aligner.proj.weight",
            "generator.blocks.0.attn.q.weight", "generator.blocks.1.mlp.2.weight"} <= decayed
    assert not {"generator.embed.bias", "generator.norm.weight", "generator.blocks.0.norm1.weight",
                "aligner.blocks.0.attn.kv.bias"} & decayed
    head = {n for n in decay if n.startswith("generator.diffloss.")}
    assert {"generator.diffloss.net.out.weight", "generator.diffloss.net.blocks.0.ada.1.weight",
            "generator.diffloss.net.time.0.weight"} <= head and not head & decayed
    assert not {n for n in decayed if n.endswith(".bias")}
    # the discrete head is a plain linear layer: its matrix decays
    discrete = decay_by_name("model.token=discrete")
    assert discrete["generator.head.weight"] == 0.02 and discrete["generator.head.bias"] == 0.0


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_lr_schedule_after_warmup(schedule):
    """Linear warm-up over 5 steps, then MAR's constant rate or cosine decay towards 0.1x."""
    cfg = config.load(SMOKE + [f"train.lr_schedule={schedule}", "train.warmup_steps=5", "train.steps=20"])
    module = GeneratorModule(cfg, token_dim=cfg.tokenizer.channels, codebook_size=16, vocabulary=vocabulary())
    _, [sched] = module.configure_optimizers()
    factors = [sched["scheduler"].lr_lambdas[0](s) for s in range(20)]
    assert factors[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    if schedule == "constant":
        assert factors[5:] == [1.0] * 15
    else:
        assert factors[5] == 1.0 and factors[5:] == sorted(factors[5:], reverse=True) and factors[-1] < 0.2
