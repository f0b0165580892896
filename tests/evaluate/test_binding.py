"""The colour-binding probe: a model whose transformer carries the named colour and whose head
draws it reads as binding (a large colour share of z, every object drawn in the named colour); one
that carries only the shape reads as not (no colour share, colours at chance), in both orders."""
from __future__ import annotations

import pytest
import torch

from harness.data.datasets import to_float
from harness.data.shapes import COLORS, SHAPES, render
from harness.evaluate import binding
from harness.evaluate.cell_probe import occupied_cells
from tests.fake_probe_sampler import DATA, FakeSampler, Patches

NAMES = [(shape, colour) for shape in SHAPES for colour in COLORS]


class Generator:
    """z at the object's cell (and zeros elsewhere: the probe must read the right cell): one-hot
    (shape, colour) of the caption, the colour part scaled by ``colour_weight``; ``draw`` gives an
    object with probability 1/2, of the shape in z and the colour in z when it is there, else a
    random one; from a zero row, always the empty patch."""

    def __init__(self, order: str, objects: dict, empty: torch.Tensor, colour_weight: float):
        self.order, self.num_tokens = order, 16
        self.objects, self.empty, self.colour_weight = objects, empty, colour_weight

    def inputs(self, tokens, masked=None):
        return tokens  # the true tokens whatever the mask: they only locate the object

    def backbone(self, x, ctx, cmask):
        at_object = (x - x[..., :1]).abs().amax(-1) > 1e-3  # a plain background patch is one colour
        return ctx[:, None] * at_object[..., None]

    def draw(self, rows, guided, cfg, generator, **kw):
        assert guided == (cfg != 1.0)
        rows = rows[: rows.shape[0] // 2] if guided else rows
        out = []
        for row in rows:
            shape = SHAPES[int(row[:3].argmax())]
            known = row[3:].abs().max() > 0
            colour = list(COLORS)[int(row[3:].argmax()) if known else
                                  int(torch.randint(len(COLORS), (1,), generator=generator))]
            hit = torch.rand(1, generator=generator).item() < 0.5 and row[:3].abs().max() > 0
            out.append(self.objects[(shape, colour)] if hit else self.empty)
        return torch.stack(out)


def _fake(order: str, colour_weight: float, scenes):
    images = torch.from_numpy(torch.stack([torch.from_numpy(render(s, 32)) for s in scenes]).numpy())
    tokens = Patches().encode(to_float(images))
    objects, empty = {}, None
    for s, t in zip(scenes, tokens):
        occ = occupied_cells(s, 4)
        objects[(s.objects[0].shape, s.objects[0].color)] = t[occ][0]
        empty = t[~occ][0]
    assert set(objects) == set(NAMES)  # every (shape, colour) appears among the scenes
    features = {s.caption: torch.cat([torch.eye(3)[SHAPES.index(s.objects[0].shape)], colour_weight
                                      * torch.eye(len(COLORS))[list(COLORS).index(s.objects[0].color)]])
                for s in scenes}
    return FakeSampler(Generator(order, objects, empty, colour_weight), features, null_shape=(3 + len(COLORS),))


@pytest.mark.parametrize("order", ["random", "raster"])
def test_a_model_that_binds_reads_as_binding_and_one_that_does_not_reads_as_chance(order):
    scenes = binding.colour_scenes(DATA, 160, seed=0)
    assert {s.tag for s in scenes} == {"colors"} and all(len(s.objects) == 1 for s in scenes)
    contexts = {"random": {"all masked", "others shown"}, "raster": {"true prefix"}}[order]
    binds = binding.binding(_fake(order, 1.0, scenes), scenes, [1.0, 3.0], draws=16, seed=0)
    ignores = binding.binding(_fake(order, 0.0, scenes), scenes, [1.0], draws=16, seed=0)
    assert set(binds["variance_share"]) == contexts
    for context in contexts:
        # z = (shape, colour) one-hots: colour (5/6) over colour and shape (5/6 + 2/3)
        assert binds["variance_share"][context]["colour"] == pytest.approx(5 / 9, abs=0.05)
        assert abs(ignores["variance_share"][context]["colour"]) < 0.03
        assert ignores["variance_share"][context]["shape"] > 0.95
    for r in binds["draws"]:
        assert abs(r["object"] - 0.5) < 0.05 and r["shape_given_object"] == 1 and r["colour_given_object"] == 1, r
    for r in ignores["draws"]:
        assert r["shape_given_object"] == 1 and abs(r["colour_given_object"] - 1 / 6) < 0.05, r
    if order == "random":
        assert "by_cell" not in binds
        return
    # raster: the same, by the object's cell in four quarters of the order
    assert [r["cells"] for r in binds["by_cell"]] == ["0-3", "4-7", "8-11", "12-15"]
    assert sum(r["scenes"] for r in binds["by_cell"]) == len(scenes)
    for b, i in zip(binds["by_cell"], ignores["by_cell"]):
        assert b["colour"] == pytest.approx(5 / 9, abs=0.1) and i["colour"] < 0.1, (b, i)  # ~40 scenes each
        assert [d["cfg"] for d in b["draws"]] == [1.0, 3.0] and [d["cfg"] for d in i["draws"]] == [1.0]
        assert abs(b["draws"][0]["object"] - 0.5) < 0.12 and b["draws"][0]["colour_given_object"] == 1, b
        assert abs(i["draws"][0]["colour_given_object"] - 1 / 6) < 0.1, i


def test_the_variance_share_is_adjusted_for_the_number_of_classes():
    gen = torch.Generator().manual_seed(0)
    labels = [str(i % 6) for i in range(60)]
    noise = torch.randn(60, 32, generator=gen)
    assert abs(binding.variance_share(noise, labels)) < 0.03  # unadjusted: ~5/59 = 0.085
    signal = torch.eye(6)[[int(x) for x in labels]] * 10
    assert binding.variance_share(torch.cat([signal, noise], 1), labels) > 0.7
