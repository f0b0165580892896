"""The loss floor (``harness.evaluate.loss_floor``): the world's law over a caption's layouts, the
exact conditional chances and denoiser built from it, and the floor on a stage 0 written here (tokens
made from the scenes' cell contents, so no tokenizer is trained)."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from harness import config as C
from harness.data.datasets import build_dataset
from harness.data.shapes import SHAPES, grid_cell, include_groups, sample_scene
from harness.errors import UserError
from harness.evaluate import loss_floor as F
from harness.io import read_json, write_json
from harness.models.diffloss import DiffLoss
from harness.run_dir import RunDir
from harness.tokenizers.stage0 import tokenizer_dir

WORLD = ["data.layout=grid", "data.cells=4", "data.nuisance=none", "data.unnamed_color=by_shape",
         "tokenizer.downsample=8", "tokenizer.context=patch", "data.resolution=32"]


def scene(tag: str, seed: int = 0):
    return sample_scene(np.random.default_rng(seed), "val", tag=tag, layout="grid", cells=4, nuisance="none",
                        unnamed_color="by_shape")


def law(s, jitters: int = 8):
    return F.layout_law(s, "val", "picture", 4, jitters, seed=0)


def test_a_single_object_is_anywhere_and_a_count_anywhere_but_crowded():
    layouts, p = law(scene("single_object"))
    assert len(layouts) == 16 and np.allclose(p, 1 / 16)
    s = next(s for i in range(50) if len((s := scene("counting", i)).objects) == 2)
    layouts, p = law(s, jitters=64)
    assert len(layouts) == math.comb(16, 2) and math.isclose(p.sum(), 1)
    assert all(sorted(lay) == [0] * 14 + [1 + SHAPES.index(s.objects[0].shape)] * 2 for lay in layouts)
    # two large objects in touching cells miss the grid's gap and are drawn again: such layouts are rarer
    cells = [np.flatnonzero(lay) for lay in layouts]
    touching = np.array([max(abs(a // 4 - b // 4), abs(a % 4 - b % 4)) == 1 for a, b in cells])
    assert np.allclose(p[~touching], p[~touching][0]) and p[touching].max() < p[~touching][0]


def test_a_position_caption_allows_only_layouts_that_show_its_relation():
    s = next(s for i in range(50) if include_groups(s := scene("position", i))[1]["position"][0] == "left of")
    layouts, p = law(s)
    ref, subj = (1 + SHAPES.index(o.shape) for o in s.objects)
    assert 0 < len(layouts) < 240 and math.isclose(p.sum(), 1)
    for lay in layouts:
        col = {v: lay.tolist().index(v) % 4 for v in (ref, subj)}
        assert col[subj] < col[ref]  # the subject's cell is left of the reference's
    assert tuple(F.layout_of(s.objects, 4)) in {tuple(lay) for lay in layouts}


@pytest.mark.parametrize("tag", ["position", "color_attr", "two_object", "counting"])
def test_the_world_keeps_translated_cells_alike_draw_by_draw(tag):
    """One estimate serves a translation class only if the world's rules read the cells' relative
    places alone: every translation of the chosen cells, drawn with the same seed, is kept or not
    alike (an absolute rule, say a margin to the picture's edge, would fail here)."""
    for seed in range(3):
        s = scene(tag, seed)
        for chosen in itertools.islice(itertools.permutations(range(16), len(s.objects)), 0, None, 37):
            key = F.translation_class(chosen, 4)
            rows, cols = max(r for r, _ in key), max(c for _, c in key)
            outcomes = set()
            for dr, dc in itertools.product(range(4 - rows), range(4 - cols)):
                rng = np.random.default_rng(seed)  # the same sizes and offsets for every translation
                cells = [(r + dr) * 4 + c + dc for r, c in key]
                outcomes.add(tuple(F.kept(s, cells, "val", "picture", 4, rng, 1) for _ in range(16)))
            assert len(outcomes) == 1, (s.caption, chosen)


def test_the_marginal_follows_the_known_cells():
    layouts = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.int8)
    p = np.array([0.5, 0.25, 0.25])
    own = layouts[1]
    nothing = np.zeros(3, dtype=bool)
    assert np.allclose(F.content_marginal(layouts, p, own, nothing, 0)[:2], [0.5, 0.5])
    known = np.array([True, False, False])  # cell 0 is seen empty: the object is in 1 or 2
    assert np.allclose(F.content_marginal(layouts, p, own, known, 1)[:2], [0.5, 0.5])
    assert np.allclose(F.content_marginal(layouts, p, own, known, 2)[:2], [0.5, 0.5])


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_the_posterior_mean_denoiser_is_exact_for_one_point_and_best_for_a_mixture(prediction):
    torch.manual_seed(0)
    points = torch.randn(3, 4) * 2
    head = DiffLoss(4, 3, 8, 1, 1000, 64, prediction=prediction)
    head.net = F.PosteriorMean(points, head.alphas_cumprod, prediction)
    certain = torch.tensor([[0.0, 1.0, 0.0]])
    assert head(points[1:2], certain, generator=torch.Generator().manual_seed(1)).item() < 1e-8
    # tokens drawn from the chances (0.6, 0.3, 0.1): the true chances beat wrong ones
    chances = torch.tensor([0.6, 0.3, 0.1])
    idx = torch.multinomial(chances, 400, replacement=True, generator=torch.Generator().manual_seed(2))
    true_w, flat_w = chances.expand(400, 3), torch.full((400, 3), 1 / 3)
    losses = [head(points[idx], w, generator=torch.Generator().manual_seed(3)).item() for w in (true_w, flat_w)]
    assert losses[0] < losses[1]


def fake_stage0(tmp_path, token: str, order: str, n: int = 24) -> C.DictConfig:
    """A config whose val tokens are a fixed function of each cell's content (as the study's patch
    tokenizers give), written where stage 0 would put them."""
    cfg = C.load([*WORLD, f"results_dir={tmp_path}", f"data.val_size={n}", "data.named_scenes=8",
                  "data.named_scene_fraction=0.25", f"model.token={token}", f"model.order={order}",
                  "model.diffusion_prediction=v", "model.mask_ratio_uniform=1.0"])
    world = build_dataset(cfg.data, "val")
    contents = [None] + [(s, c) for s in SHAPES for c in ("red", "green", "blue", "yellow", "purple", "orange")]
    latents = torch.randn(len(contents), 4, generator=torch.Generator().manual_seed(0))
    tokens = []
    for i in range(n):
        cell = [None] * 16
        for o in world.scene(i).objects:
            cell[grid_cell(o, 4)] = (o.shape, o.color)
        k = torch.tensor([contents.index(c) for c in cell])
        tokens.append(k.to(torch.int32) if token == "discrete" else latents[k])
    out = tokenizer_dir(cfg, token)
    out.mkdir(parents=True)
    torch.save({"tokens": torch.stack(tokens), "captions": [world.caption(i) for i in range(n)]},
               out / "tokens_val.pt")
    return cfg


def test_the_discrete_raster_floor_is_the_captions_layout_entropy(tmp_path):
    """Raster order's chain of conditionals multiplies out to the law's chance of the whole layout."""
    cfg = fake_stage0(tmp_path, "discrete", "raster")
    result = F.floor(cfg, jitters=4)
    world = build_dataset(cfg.data, "val")
    scenes = [world.scene(j) for j in range(24)]
    laws = F.caption_laws(scenes, "val", "picture", 4, jitters=4)
    for s, loss in zip(scenes, result["sample_losses"]):
        layouts, p = laws[F.caption_key(s)]
        own = [tuple(lay) for lay in layouts].index(F.layout_of(s.objects, 4))
        assert loss == pytest.approx(-math.log(p[own]) / 16, rel=1e-6, abs=1e-9), s.caption
    assert any(s.tag == "named" for s in scenes)  # a named scene costs nothing
    assert min(result["sample_losses"]) == 0.0


def test_the_continuous_random_floor_is_zero_where_the_caption_fixes_the_picture(tmp_path):
    cfg = fake_stage0(tmp_path, "continuous", "random")
    result = F.floor(cfg, jitters=4)
    world = build_dataset(cfg.data, "val")
    named = [loss for j, loss in enumerate(result["sample_losses"]) if world.scene(j).tag == "named"]
    others = [loss for j, loss in enumerate(result["sample_losses"]) if world.scene(j).tag != "named"]
    assert named and max(named) < 1e-8
    assert min(others) >= 0 and result["loss_floor"] > 0


def test_a_world_the_floor_cannot_know_is_refused():
    with pytest.raises(UserError, match="data.unnamed_color"):
        F.check_world(C.load([*WORLD[:3], "data.unnamed_color=random", *WORLD[4:]]))
    with pytest.raises(UserError, match="data.nuisance"):
        F.check_world(C.load([*WORLD[:2], "data.nuisance=full", *WORLD[3:]]))
    assert F.problem(C.load(WORLD)) is None
    assert F.problem(C.load([*WORLD, "tokenizer.downsample=4"]))[0] == "tokenizer.downsample"  # 8x8 tokens, 4x4 cells
    assert F.problem(C.load([])) is not None  # the default world: free layout, nuisance


def test_the_floor_is_computed_once_per_variant_and_the_caption_laws_once_per_world(tmp_path, monkeypatch):
    """``ensure_loss_floor`` caches the floor beside the tokenizer and the caption laws beside the
    world's data: a second call computes nothing, another variant of the world reuses the laws."""
    cfg = fake_stage0(tmp_path, "discrete", "random")
    first = F.ensure_loss_floor(cfg, jitters=2)
    assert first["loss_floor"] == pytest.approx(F.floor(cfg, jitters=2)["loss_floor"])
    monkeypatch.setattr(F, "floor", lambda *a, **k: pytest.fail("the floor was computed again"))
    assert F.ensure_loss_floor(cfg, jitters=2) == first
    monkeypatch.undo()
    monkeypatch.setattr(F, "caption_laws", lambda *a, **k: pytest.fail("the caption laws were computed again"))
    raster = OmegaConf.merge(cfg, {"model": {"order": "raster"}})
    assert F.ensure_loss_floor(raster, jitters=2)["loss_floor"] != first["loss_floor"]


def test_the_command_writes_each_runs_floor_and_its_reducible_fraction(tmp_path, capsys):
    cfg = fake_stage0(tmp_path, "discrete", "random")
    run = RunDir.of(cfg)
    run.path.mkdir(parents=True)
    C.save(cfg, run.config)
    write_json(run.eval_metrics(cfg.eval.seed, cfg.eval.seed), {"val_loss": 0.5})
    F.main([str(run.path), "--jitters", "2"])
    result = read_json(run.loss_floor)
    assert 0 < result["loss_floor"] < 0.5
    assert result["reducible_fraction"] == pytest.approx((0.5 - result["loss_floor"]) / 0.5)
    assert run.name in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        F.main([str(tmp_path / "nothing")])
    assert stop.value.code == 2


def test_evaluation_writes_the_floor_into_the_metrics_and_the_results_table(tmp_path, monkeypatch):
    """A run in a world whose floor is exact carries ``loss_floor`` (the same as ``floor``) in its
    metrics.json and its results-table row, below its validation loss."""
    from harness.evaluate import features
    from harness.evaluate.run import evaluate
    from harness.sweep.table import run_rows
    from harness.train.run import train
    from tests.evaluate.test_evaluate import TINY_FEATURES, TINY_RUN

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setattr(features, "DEFAULT_SPEC", TINY_FEATURES)
    cfg = C.load([*TINY_RUN, *WORLD, f"results_dir={tmp_path}/results", "model.token=discrete",
                  "train.steps=4", "data.val_size=16", "eval.fid_samples=16"])
    run_dir = train(cfg)
    metrics = evaluate(run_dir)
    assert metrics["loss_floor"] == pytest.approx(F.floor(C.load_saved(RunDir(run_dir).config))["loss_floor"])
    assert 0 < metrics["loss_floor"] < metrics["val_loss"]
    [row] = run_rows(run_dir, "test", [cfg.eval.seed])
    assert row["loss_floor"] == metrics["loss_floor"]
