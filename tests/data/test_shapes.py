"""The shapes world: deterministic, captions true of the pixels, held-out combinations held out."""
from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
import torch

from harness.data import shapes
from harness.registry import GENEVAL_TAGS
from harness.data.shapes import COLORS, RELATIONS, SHAPES, ShapesWorld, is_held_out, render, vocabulary
from harness.errors import UserError

N = 2000


@pytest.fixture(scope="module")
def train_scenes():
    ds = ShapesWorld("train", N, seed=0)
    return [ds.scene(i) for i in range(N)]


def test_same_seed_split_index_gives_same_pixels_and_caption():
    a, b = ShapesWorld("train", 50, seed=3), ShapesWorld("train", 5000, seed=3)
    for i in (0, 7, 49):
        assert np.array_equal(a.image(i), b.image(i))
        assert a.caption(i) == b.caption(i)


def test_different_seeds_and_splits_differ():
    base = ShapesWorld("train", 20, seed=0)
    for other in (ShapesWorld("train", 20, seed=1), ShapesWorld("val", 20, seed=0)):
        same = sum(np.array_equal(base.image(i), other.image(i)) for i in range(20))
        assert same == 0


def test_getitem_is_float_tensor_in_unit_range():
    item = ShapesWorld("val", 4, resolution=32)[2]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert -1.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert item["index"] == 2 and isinstance(item["caption"], str)


def test_bad_split_is_a_user_error():
    with pytest.raises(UserError, match="split"):
        ShapesWorld("training", 4)


def test_tags_are_roughly_uniform(train_scenes):
    counts = {t: sum(s.tag == t for s in train_scenes) for t in GENEVAL_TAGS}
    assert all(abs(c - N / 6) < 0.2 * N / 6 for c in counts.values()), counts


@pytest.mark.parametrize("res", [32, 64])
def test_metadata_bboxes_match_pixels(res):
    ds = ShapesWorld("test", 150, resolution=res)
    for i in range(len(ds)):
        scene, img = ds.scene(i), ds.image(i).astype(float)
        meta = scene.metadata(res)
        outside = np.ones((res, res), bool)
        for obj in meta["objects"]:
            x0, y0, x1, y1 = obj["bbox"]
            assert x1 - x0 >= 6 * res / 32 and y1 - y0 >= 6 * res / 32
            outside[y0:y1, x0:x1] = False
            patch, bg = img[y0:y1, x0:x1], shapes.background_image(scene, res)[y0:y1, x0:x1]
            colour = np.asarray(COLORS[obj["color"]], float)
            covered = np.linalg.norm(patch - colour, axis=-1) < np.linalg.norm(patch - bg, axis=-1)
            fill = {"circle": 0.45, "square": 0.6, "triangle": 0.3}[obj["class"]]  # of a floor/ceil box
            assert covered.mean() > fill, (i, obj)
        diff = np.abs(img - shapes.background_image(scene, res)).max(axis=-1)
        assert diff[outside].max() <= 1.0, i


def test_counting_captions_match_objects(train_scenes):
    words = {w: n for n, w in shapes.COUNT_WORDS.items()}
    counting = [s for s in train_scenes if s.tag == "counting"]
    assert counting
    for s in counting:
        number = next(words[w] for w in s.caption.split() if w in words)
        plural = next(w for w in s.caption.split() if w in shapes.PLURALS.values())
        assert number == len(s.objects) >= 2
        assert {o.shape for o in s.objects} == {plural[:-1]}
        meta = s.metadata(32)
        assert meta["include"] == [{"class": plural[:-1], "count": number}]
        assert meta["exclude"] == [{"class": plural[:-1], "count": number + 1}]


def test_other_tags_name_every_object(train_scenes):
    for s in train_scenes:
        if s.tag == "counting":
            continue
        named = [g["class"] for g in s.metadata(32)["include"]]
        assert sorted(named) == sorted(o.shape for o in s.objects)
        for o in s.objects:
            assert o.shape in s.caption
            if s.tag in ("colors", "color_attr"):
                assert o.color in s.caption


def test_position_relations_hold_with_margin(train_scenes):
    position = [s for s in train_scenes if s.tag == "position"]
    assert {s.metadata(32)["include"][1]["position"][0] for s in position} == set(RELATIONS)
    for s in position:
        ref, subj = s.objects
        rel, target = s.metadata(32)["include"][1]["position"]
        assert target == 0
        dx, dy = subj.cx - ref.cx, subj.cy - ref.cy
        expected = {"left of": -dx, "right of": dx, "above": -dy, "below": dy}[rel]
        across = abs(dy) if rel in ("left of", "right of") else abs(dx)
        assert expected >= subj.size + ref.size and across < 0.5 * expected
        assert shapes.relations(subj.bbox(32), ref.bbox(32)) == {rel}
        assert subj.shape in s.caption.split(" ")[: len(s.caption.split()) // 2 + 3]


def test_objects_do_not_overlap(train_scenes):
    for s in train_scenes:
        for a, b in itertools.combinations(s.objects, 2):
            assert shapes._separated(a, b)


def test_train_never_shows_a_held_out_combination(train_scenes):
    assert not any(is_held_out(s) for s in train_scenes)


def test_compositional_split_uses_only_held_out_combinations():
    ds = ShapesWorld("compositional", 300)
    scenes = [ds.scene(i) for i in range(300)]
    for s in scenes:
        assert is_held_out(s) == (s.tag in ("counting", "position", "color_attr")), s.caption


def test_everything_but_the_combinations_is_seen_in_training(train_scenes):
    held = shapes.held_out_combinations()
    assert len(held["color_pairs"]) == 18 and len(held["counts"]) == 2 and len(held["arrangements"]) == 2
    items = {(o.color, o.shape) for s in train_scenes if s.tag in ("colors", "color_attr") for o in s.objects}
    assert items == {(c, s) for c in COLORS for s in SHAPES}
    counts = {(s.objects[0].shape, len(s.objects)) for s in train_scenes if s.tag == "counting"}
    assert {s for s, _ in counts} == set(SHAPES) and {n for _, n in counts} == {2, 3, 4}
    pairs = {(s.objects[1].shape, s.objects[0].shape) for s in train_scenes if s.tag == "position"}
    assert pairs == set(itertools.permutations(SHAPES, 2))


def test_vocabulary_covers_all_captions(train_scenes):
    vocab = vocabulary()
    assert vocab == sorted(set(vocab))
    words = {w for s in train_scenes for w in s.caption.split(" ")}
    words |= {w for s in (ShapesWorld("compositional", 300).scene(i) for i in range(300)) for w in s.caption.split(" ")}
    assert words <= set(vocab)


def test_scene_from_metadata_satisfies_the_prompt():
    meta = {
        "tag": "position",
        "prompt": "a photo of a red triangle above a square",
        "include": [{"class": "square", "count": 1}, {"class": "triangle", "count": 1, "color": "red", "position": ["above", 0]}],
    }
    rng = np.random.default_rng(0)
    for _ in range(20):
        s = shapes.scene_from_metadata(meta, rng)
        sq, tri = s.objects
        assert (sq.shape, tri.shape, tri.color) == ("square", "triangle", "red")
        assert shapes.relations(tri.box(), sq.box()) == {"above"}
        assert s.caption == meta["prompt"] and render(s, 32).shape == (32, 32, 3)


def test_scene_from_metadata_rejects_unknown_class():
    with pytest.raises(UserError, match="include.class"):
        shapes.scene_from_metadata({"tag": "single_object", "include": [{"class": "dog", "count": 1}]}, np.random.default_rng(0))


def test_impossible_layout_is_a_user_error():
    meta = {"tag": "position", "include": [{"class": "circle", "count": 1}, {"class": "circle", "count": 1, "position": ["left of", 1]}]}
    with pytest.raises(UserError, match="no layout"):
        shapes.scene_from_metadata(meta, np.random.default_rng(0))


@pytest.fixture(scope="module")
def grid_scenes():
    ds = ShapesWorld("train", 600, seed=0, layout="grid", cells=4)
    return [ds.scene(i) for i in range(600)]


def test_grid_layout_puts_one_object_inside_each_of_its_cells(grid_scenes):
    """In the grid layout (the CPU study's) every object lies inside its own cell of the 4x4 grid,
    so with 8x8-pixel tokens at 32x32 an object is exactly one token."""
    for s in grid_scenes:
        cells = set()
        for o in s.objects:
            col, row = int(o.cx * 4), int(o.cy * 4)
            x0, y0, x1, y1 = o.box()
            assert col / 4 <= x0 and x1 <= (col + 1) / 4 and row / 4 <= y0 and y1 <= (row + 1) / 4
            cells.add((col, row))
        assert len(cells) == len(s.objects)
        for a, b in itertools.combinations(s.objects, 2):
            assert shapes._separated(a, b, shapes._GRID_GAP)
    assert {s.tag for s in grid_scenes} == set(GENEVAL_TAGS)


def test_grid_layout_renders_score_one_on_geneval(tmp_path):
    from harness.geneval.export import export, score
    from harness.geneval.prompts import make_prompts, write_jsonl

    prompts = make_prompts(20, 0)
    by_text = {p["prompt"]: p for p in prompts}

    class Renderer:
        def generate(self, texts, seed):
            rng = np.random.default_rng(seed)
            return np.stack([render(shapes.scene_from_metadata(by_text[t], rng, "grid", 4), 32)
                             for t in texts])

    out = export(write_jsonl(prompts, tmp_path / "p.jsonl"), Renderer(), tmp_path / "out", 2)
    assert score(out)["overall"] == 1.0


def test_grid_layout_is_part_of_the_data_key_and_validated():
    from harness import config as C
    from harness.data.datasets import data_key

    free, grid = C.load([]), C.load(["data.layout=grid"])
    assert data_key(free.data) != data_key(grid.data)
    with pytest.raises(UserError, match="data.layout"):
        C.load(["data.layout=tiles"])
    with pytest.raises(UserError, match="data.cells"):
        C.load(["data.layout=grid", "data.cells=9"])


def test_scenes_and_held_out_sets_do_not_depend_on_python_hash_seed():
    """Every process must draw the same world: a run's data, its evaluation prompts and the
    held-out split are built in different processes (PYTHONHASHSEED differs between them)."""
    import subprocess
    import sys

    code = ("from harness.data.shapes import ShapesWorld, held_out_combinations as h\n"
            "w = ShapesWorld('train', 300, layout='grid'); c = ShapesWorld('compositional', 100)\n"
            "print(repr([w.caption(i) for i in range(300)] + [c.caption(i) for i in range(100)]"
            " + sorted(repr(sorted(map(sorted, v) if k == 'color_pairs' else v)) for k, v in h().items())))")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout
            for seed in ("1", "2", "3")}
    assert len(outs) == 1


def test_without_nuisance_a_scene_keeps_its_objects_and_cells_and_loses_the_rest():
    """nuisance="none": the same captions, shapes, colours and cells as the full world, on one
    plain background, every object of one size at its cell's centre; and GenEval still holds."""
    from harness.geneval.rules import score_image

    full = ShapesWorld("train", 40, layout="grid", cells=4)
    plain = ShapesWorld("train", 40, layout="grid", cells=4, nuisance="none")
    sizes = set()
    for i in range(40):
        a, b = full.scene(i), plain.scene(i)
        assert a.caption == b.caption and b.gradient == (0.0, 0.0)
        assert [(o.shape, o.color) for o in a.objects] == [(o.shape, o.color) for o in b.objects]
        assert [(int(o.cx * 4), int(o.cy * 4)) for o in a.objects] == [(int(o.cx * 4), int(o.cy * 4)) for o in b.objects]
        assert all((o.cx * 4) % 1 == pytest.approx(0.5) for o in b.objects)
        sizes |= {round(o.size, 9) for o in b.objects}
        assert score_image(plain.image(i), {"tag": b.tag, "include": shapes.include_groups(b)})
    assert len(sizes) == 1 and len({plain.scene(i).background for i in range(40)}) == 1
    with pytest.raises(UserError, match="nuisance"):
        ShapesWorld("train", 4, nuisance="some")


def test_an_unnamed_colour_is_the_configured_one_and_a_named_colour_is_kept():
    """unnamed_color="blue": every object of a caption naming no colour is blue (GenEval still
    holds); captions that name colours show them; GenEval-prompt scenes follow the same rule."""
    from harness.geneval.rules import score_image

    world = ShapesWorld("train", 120, layout="grid", cells=4, nuisance="none", unnamed_color="blue")
    named_colours = set()
    for i in range(120):
        scene = world.scene(i)
        named = [w for w in scene.caption.split() if w in COLORS]
        if scene.tag in shapes.COLOR_TAGS:
            assert sorted(named) == sorted(o.color for o in scene.objects)
            named_colours |= set(named)
        else:
            assert not named and {o.color for o in scene.objects} == {"blue"}
        assert score_image(world.image(i), {"tag": scene.tag, "include": shapes.include_groups(scene)})
    assert len(named_colours) == len(COLORS)
    rng = np.random.default_rng(0)
    meta = {"tag": "counting", "include": [{"class": "circle", "count": 3}]}
    assert {o.color for o in shapes.scene_from_metadata(meta, rng, unnamed_color="blue").objects} == {"blue"}
    meta = {"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "red"}]}
    assert shapes.scene_from_metadata(meta, rng, unnamed_color="blue").objects[0].color == "red"
    with pytest.raises(UserError, match="unnamed_color"):
        ShapesWorld("train", 4, unnamed_color="white")


def test_by_shape_paints_each_unnamed_object_its_shapes_colour_and_keeps_named_colours():
    """unnamed_color="by_shape": an object whose caption names no colour takes its shape's colour
    (circle red, square green, triangle blue), in GenEval-prompt scenes too; colour captions and
    named kinds (named_scene_color="by_shape" paints those too) keep the whole palette in use."""
    world = ShapesWorld("train", 200, layout="grid", cells=4, nuisance="none", unnamed_color="by_shape")
    assert shapes.SHAPE_COLORS == {"circle": "red", "square": "green", "triangle": "blue"}
    seen = set()
    for i in range(200):
        scene = world.scene(i)
        if scene.tag in shapes.COLOR_TAGS:
            assert sorted(w for w in scene.caption.split() if w in COLORS) == sorted(o.color for o in scene.objects)
            seen |= {o.color for o in scene.objects}
        else:
            assert all(o.color == shapes.SHAPE_COLORS[o.shape] for o in scene.objects)
    assert seen == set(COLORS)
    rng = np.random.default_rng(0)
    meta = {"tag": "counting", "include": [{"class": "triangle", "count": 3}]}
    assert {o.color for o in shapes.scene_from_metadata(meta, rng, unnamed_color="by_shape").objects} == {"blue"}
    meta = {"tag": "colors", "include": [{"class": "triangle", "count": 1, "color": "red"}]}
    assert shapes.scene_from_metadata(meta, rng, unnamed_color="by_shape").objects[0].color == "red"
    kind = shapes.named_scene_objects(3, 4, "by_shape")
    assert {o.color for o in kind} == {shapes.SHAPE_COLORS[kind[0].shape]}
    assert [o.cx for o in kind] == [o.cx for o in shapes.named_scene_objects(3, 4)]


def test_unnamed_colour_is_keyed_only_when_set_and_validated():
    from harness import config as C
    from harness.data.datasets import data_key

    base = C.load([])
    assert data_key(base.data) == data_key(C.load(["data.unnamed_color=random"]).data)
    assert data_key(base.data) != data_key(C.load(["data.unnamed_color=red"]).data)
    assert C.run_key(base) != C.run_key(C.load(["data.unnamed_color=red"]))
    with pytest.raises(UserError, match="data.unnamed_color"):
        C.load(["data.unnamed_color=white"])


def test_named_scenes_are_a_zipf_tail_of_fixed_kinds_that_hold_out_nothing():
    """named_scenes: about named_fraction of the train/val/test scenes are named; kind k is drawn
    with P ∝ (k + 1)^-zipf (kind 0's share within 4 binomial SDs); a kind always shows the same
    objects, of one shape, in every split and seed; its name is its own word, in the vocabulary;
    no named scene is held out and the compositional split has none; the other scenes keep GenEval."""
    from harness.geneval.rules import score_image

    named = shapes.NamedScenes(count=64, zipf=1.5, fraction=0.5)
    n = 3000
    world = ShapesWorld("train", n, layout="grid", cells=4, nuisance="none", named=named)
    scenes = [world.scene(i) for i in range(n)]
    names = shapes.named_scene_names(64)
    kinds = [names.index(s.caption.split()[-1]) for s in scenes if s.tag == shapes.NAMED_TAG]
    assert abs(len(kinds) - n / 2) < 4 * np.sqrt(n / 4)
    p0 = shapes.named_scene_probabilities(64, 1.5)[0]
    assert abs(kinds.count(0) - p0 * len(kinds)) < 4 * np.sqrt(p0 * (1 - p0) * len(kinds))
    assert kinds.count(0) > kinds.count(1) > kinds.count(7) and len(set(kinds)) > 20
    other = ShapesWorld("val", 400, seed=5, layout="grid", cells=4, nuisance="none", named=named)
    seen = {}
    for scene in scenes + [other.scene(i) for i in range(400)]:
        if scene.tag != shapes.NAMED_TAG:
            assert score_image(render(scene, 32), {"tag": scene.tag, "include": shapes.include_groups(scene)})
            continue
        objs = [(o.shape, o.color, o.cx, o.cy) for o in scene.objects]
        assert seen.setdefault(scene.caption.split()[-1], objs) == objs
        assert len({o.shape for o in scene.objects}) == 1 and 5 <= len(objs) <= 10
        assert not is_held_out(scene)
    assert len(set(names)) == 64 and not set(names) & set(vocabulary())
    assert set(names) <= set(vocabulary(64)) and shapes.named_scene_names(8) == names[:8]
    compositional = ShapesWorld("compositional", 200, layout="grid", cells=4, named=named)
    assert all(compositional.scene(i).tag != shapes.NAMED_TAG for i in range(200))
    with pytest.raises(UserError, match="named_scenes"):
        ShapesWorld("train", 4, named=named)


def test_named_scenes_change_the_data_key_and_are_validated():
    from harness import config as C
    from harness.data.datasets import data_key

    base = ["data.layout=grid", "data.nuisance=none"]
    plain, tail = C.load(base), C.load(base + ["data.named_scenes=64"])
    assert data_key(plain.data) != data_key(tail.data)
    assert data_key(tail.data) != data_key(C.load(base + ["data.named_scenes=64", "data.named_scene_zipf=2"]).data)
    with pytest.raises(UserError, match="data.named_scene_fraction"):
        C.load(base + ["data.named_scene_fraction=1.5"])


def test_named_scenes_in_one_colour_keep_their_shapes_and_cells():
    """named_scene_color: every object of every kind in that colour, each kind's shape and cells
    those of the default (random-colour) kinds; keyed only when set; validated."""
    from harness import config as C
    from harness.data.datasets import data_key, named_scenes

    for kind in range(16):
        each = shapes.named_scene(kind, 64, 4)
        red = shapes.named_scene(kind, 64, 4, color="red")
        assert [(o.shape, o.cx, o.cy) for o in red.objects] == [(o.shape, o.cx, o.cy) for o in each.objects]
        assert {o.color for o in red.objects} == {"red"} and red.caption == each.caption
    world = ShapesWorld("train", 200, layout="grid", cells=4, nuisance="none",
                        named=shapes.NamedScenes(count=64, color="red"))
    named = [world.scene(i) for i in range(200) if world.scene(i).tag == shapes.NAMED_TAG]
    assert named and all(o.color == "red" for scene in named for o in scene.objects)
    base = ["data.layout=grid", "data.nuisance=none", "data.named_scenes=64"]
    cfg = C.load(base + ["data.named_scene_color=red"])
    assert named_scenes(cfg.data).color == "red"
    assert C.run_key(C.load(base)) == C.run_key(C.load(base + ["data.named_scene_color=random"]))
    assert data_key(C.load(base).data) != data_key(cfg.data)
    with pytest.raises(UserError, match="data.named_scene_color"):
        C.load(base + ["data.named_scene_color=white"])


def test_every_data_field_that_shapes_the_scenes_is_in_the_data_key(tmp_path):
    """data_key lists its fields by hand (earlier worlds keep their keys), so a new DataConfig
    field must be added there or its stage-0 caches would be shared: every field is either
    shown to change the key of the named grid world or named here as not shaping the data."""
    import dataclasses

    from harness import config as C
    from harness.data.datasets import data_key

    base = ["data.layout=grid", "data.nuisance=none", "data.named_scenes=64"]
    changed = {"name": "data.name=folder", "path": f"data.path={tmp_path}", "resolution": "data.resolution=64",
               "seed": "data.seed=1", "layout": "data.layout=free", "cells": "data.cells=2",
               "nuisance": "data.nuisance=full", "unnamed_color": "data.unnamed_color=red",
               "held_out": "data.held_out=caption", "named_scenes": "data.named_scenes=32", "named_scene_zipf": "data.named_scene_zipf=2",
               "named_scene_fraction": "data.named_scene_fraction=0.25",
               "named_scene_color": "data.named_scene_color=red", "train_size": "data.train_size=100",
               "val_size": "data.val_size=10"}
    not_content = {"num_workers"}
    (tmp_path / "other").mkdir()
    fields = {f.name for f in dataclasses.fields(C.DataConfig)}
    assert fields == set(changed) | not_content, "a new data field: key it in data_key, then list it here"
    for field, override in changed.items():
        start = base + [f"data.path={tmp_path / 'other'}"] if field == "name" else base  # a folder needs one
        assert data_key(C.load(start + [override]).data) != data_key(C.load(start).data), field


def test_a_redrawn_scene_says_what_its_caption_says_and_a_named_one_is_its_picture():
    """``redrawn`` (the caption-matched FID floor's draws): a named scene is its one picture again;
    any other keeps the objects its caption names (shape, count, named colour) in a new draw."""
    world = ShapesWorld("val", 200, layout="grid", cells=4, nuisance="none",
                        named=shapes.NamedScenes(count=16, zipf=1.5, fraction=0.5))
    moved = 0
    for i in range(len(world)):
        scene, again = world.scene(i), world.redrawn(i, draw=0)
        if scene.tag == shapes.NAMED_TAG:
            assert np.array_equal(again, world.image(i)) and np.array_equal(again, world.redrawn(i, 1))
            continue
        rng = np.random.default_rng([0, i])
        other = shapes.redraw(scene, rng, "grid", 4, "none")
        if scene.tag != "position":  # its relation: test_scene_from_metadata_satisfies_the_prompt
            assert shapes.include_groups(other) == shapes.include_groups(scene)
        moved += not np.array_equal(again, world.image(i))
        assert np.array_equal(again, world.redrawn(i, 0)) and again.shape == world.image(i).shape
    assert moved > 50  # grid scenes are drawn again, not copied


def test_caption_hold_out_never_names_a_held_out_combination_but_may_picture_one():
    """held_out="caption": no train caption names a held-out combination, while held-out
    arrangements appear under captions that do not name them (two_object, color_attr); the
    "compositional" split and the picture-level default are unchanged."""
    from harness import config as C
    from harness.geneval.prompts import is_held_out_prompt

    kw = dict(layout="grid", cells=4, nuisance="none", unnamed_color="by_shape")
    caption = ShapesWorld("train", 600, held_out="caption", **kw)
    scenes = [caption.scene(i) for i in range(600)]
    assert not any(is_held_out_prompt({"tag": s.tag, "include": shapes.include_groups(s)}) for s in scenes)
    pictured = [s for s in scenes if is_held_out(s)]
    assert len(pictured) > 20 and {s.tag for s in pictured} <= {"two_object", "color_attr"}
    assert {a for s in pictured for a in shapes._arrangement(*s.objects)} & shapes.held_out_combinations()["arrangements"]
    picture = ShapesWorld("train", 600, **kw)
    assert not any(is_held_out(picture.scene(i)) for i in range(600))
    comp = [ShapesWorld("compositional", 60, held_out=mode, **kw) for mode in ("picture", "caption")]
    assert [comp[0].caption(i) for i in range(60)] == [comp[1].caption(i) for i in range(60)]
    with pytest.raises(UserError, match="data.held_out"):
        C.load(["data.held_out=prompt"])
    with pytest.raises(UserError, match="held_out"):
        ShapesWorld("train", 4, held_out="prompt")
