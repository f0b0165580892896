"""The occupancy probe: which cells of a counting scene hold objects (in the token grid's order),
and a model that counts exactly reads as one: no object once the count is complete, the true share
of objects otherwise, in both orders."""
from __future__ import annotations

import pytest
import torch

from harness.data.datasets import to_float
from harness.data.shapes import render
from harness.evaluate import occupancy
from harness.evaluate.cell_probe import occupied_cells
from harness.tokenizers.autoencoder import patchify
from tests.fake_probe_sampler import DATA, FakeSampler, Patches


def _is_object_patch(tokens: torch.Tensor) -> torch.Tensor:
    """A patch of the plain background is one colour; a patch with an object is not."""
    return (tokens - tokens[..., :1]).abs().amax(-1) > 1e-3


def test_occupied_cells_are_the_patches_that_hold_objects():
    scenes = occupancy.counting_scenes(DATA, 24, seed=3)
    assert {s.tag for s in scenes} == {"counting"}
    for scene in scenes:
        occ = occupied_cells(scene, DATA.cells)
        assert int(occ.sum()) == len(scene.objects) >= 2
        pixels = to_float(torch.from_numpy(render(scene, DATA.resolution)[None]))
        assert torch.equal(_is_object_patch(patchify(pixels, 8)[0]), occ)


class CountingGenerator:
    """Knows the count: a masked cell (random) or the next position (raster) is an object with
    probability (objects the caption asks for - objects visible) / cells left. ``backbone`` passes
    that probability on as the row's z; ``draw`` turns it into an object or an empty patch."""

    def __init__(self, order: str, object_token: torch.Tensor, empty_token: torch.Tensor):
        self.order, self.num_tokens = order, 16
        self.object_token, self.empty_token = object_token, empty_token

    def inputs(self, tokens, masked=None):
        return tokens, masked

    def backbone(self, x, ctx, cmask):
        tokens, masked = x
        obj = _is_object_patch(tokens).float()
        if self.order == "random":
            seen = (obj * ~masked).sum(1, keepdim=True)
            left = masked.sum(1, keepdim=True)
        else:
            seen = obj.cumsum(1) - obj
            left = torch.arange(16, 0, -1).expand_as(obj)
        return ((ctx[:, None] - seen) / left).clamp(0, 1).expand_as(obj)[..., None]

    def draw(self, rows, guided, cfg, generator, **kw):
        assert not guided
        hit = torch.rand(rows.shape[0], generator=generator) < rows[:, 0]
        return torch.where(hit[:, None], self.object_token, self.empty_token)


def _sampler(generator, counts: dict[str, int]) -> FakeSampler:
    """The context of a caption is the number of objects it asks for."""
    return FakeSampler(generator, {c: torch.tensor(float(n)) for c, n in counts.items()})


@pytest.mark.parametrize("order", ["random", "raster"])
def test_a_model_that_counts_puts_no_object_after_the_count_and_the_true_share_before(order):
    scenes = occupancy.counting_scenes(DATA, 192, seed=0)
    counts = {s.caption: len(s.objects) for s in scenes}
    tokens = Patches().encode(to_float(torch.from_numpy(render(scenes[0], 32)[None])))[0]
    occ = occupied_cells(scenes[0], 4)
    sampler = _sampler(CountingGenerator(order, tokens[occ][0], tokens[~occ][0]), counts)
    rows = occupancy.occupancy_rows(sampler, scenes, [1.0], draws=64, seed=0)
    assert {r["state"] for r in rows} == {"complete", "incomplete"}
    assert {r["cells_left"] for r in rows} >= {1, 2, 4, 8}
    for r in rows:
        if r["state"] == "complete":
            assert r["p_true"] == 0 and r["p_model"] == 0, r
        else:  # random: p_true is the context's own share; raster: the share over its contexts
            noise = 0.05 if order == "random" else 4 * (r["p_true"] * (1 - r["p_true"]) / r["n"]) ** 0.5 + 0.05
            assert r["p_true"] > 0 and abs(r["p_model"] - r["p_true"]) < noise, r
    last = next(r for r in rows if r["cells_left"] == 1 and r["state"] == "incomplete")
    assert last["p_true"] == 1 and last["p_model"] == 1


def test_a_rows_numbers_do_not_depend_on_the_other_scales_asked_for():
    scenes = occupancy.counting_scenes(DATA, 32, seed=1)
    counts = {s.caption: len(s.objects) for s in scenes}
    tokens = Patches().encode(to_float(torch.from_numpy(render(scenes[0], 32)[None])))[0]
    occ = occupied_cells(scenes[0], 4)

    class NoisyGenerator(CountingGenerator):
        """Counts, but draws through the generator it is given, so the draws show the randomness."""

        def draw(self, rows, guided, cfg, generator, **kw):
            n = rows.shape[0] // 2 if guided else rows.shape[0]  # guided: [cond; uncond] rows
            return super().draw(torch.full((n, 1), 0.5), False, cfg, generator)

    sampler = _sampler(NoisyGenerator("random", tokens[occ][0], tokens[~occ][0]), counts)
    alone = occupancy.occupancy_rows(sampler, scenes, [1.0], draws=4, seed=0)
    with_others = [r for r in occupancy.occupancy_rows(sampler, scenes, [1.0, 3.0], draws=4, seed=0)
                   if r["cfg"] == 1.0]
    assert alone == with_others
