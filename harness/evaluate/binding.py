"""Does a trained run bind a caption's colour where it draws the object? Measured on single-object
colour captions ("a photo of a red circle") of the shapes world's grid layout, at the object's cell.

    python -m harness.evaluate.binding RUN_DIR [--cfg 1 5] [--scenes 192] [--draws 16] [--seed 0]

Two questions, asked of the model at the contexts where it decides the object (random order: every
cell masked, the first sampling step, and every other cell shown, the last; raster: the true
prefix, the cells before the object's):

  * Does the transformer carry the colour? Across scenes, the share of the variance of its output
    ``z`` at the object's cell that the named colour explains (the class means' sum of squares over
    the total, adjusted for the number of classes as R² is), and the same for the named shape. A
    colour that is linearly decodable but a small share of ``z`` is a weak direction that the
    head has to amplify to draw it.
  * Does the head draw it? ``draws`` tokens at the cell (the run's temperature and diffusion steps;
    guidance at each ``--cfg``, 1 = none): the share that are objects, and of those the share in
    the named shape and in the named colour (chance: 1/6). A drawn token is named by its nearest
    object token among the scenes' own (continuous) or by its code (discrete: one (colour, shape)
    is one code with the patch tokenizers); the object test is ``cell_probe.ObjectTest``.

In raster order both are also reported by the object's cell, in quarters of the order
(``by_cell``): after an empty prefix of i cells the object is at cell i with chance 1/(cells - i),
so the quarters ask one model at growing chances of an object.

Calibration items 54 and 57 in ``docs/results/cpu-study``: the colour share tracks GenEval's
colour score across the study's models, and within a raster model it does not follow the chance
of an object. Written to ``RUN_DIR/binding.json`` (``variance_share``, per context, ``draws``: one
row per context and scale, and ``by_cell``) and mirrored to MLflow under ``eval/``.
"""
from __future__ import annotations

from pathlib import Path

import torch

from harness.data.shapes import Scene
from harness.errors import cli_main
from harness.evaluate.cell_probe import (ObjectTest, draw_at, draw_generator, grid_scenes, probe_parser, run_probe,
                                         scene_tokens)
from harness.sampling import Sampler


def colour_scenes(data, n: int, seed: int) -> list[Scene]:
    """``n`` training-distribution single-object colour scenes of the run's world."""
    return grid_scenes(data, "colors", n, [seed, 54], "binding")


def variance_share(z: torch.Tensor, labels: list[str]) -> float:
    """The share of ``z``'s variance (rows: scenes) that the labels' class means explain, adjusted
    for the number of classes k as R^2 is (1 - (1 - share)(n - 1)/(n - k)): unadjusted, n rows of
    noise alone would give (k - 1)/(n - 1)."""
    z = z.double() - z.double().mean(0)
    index = torch.tensor([sorted(set(labels)).index(x) for x in labels])
    n, k = len(labels), int(index.max()) + 1
    means = torch.zeros(k, z.shape[1], dtype=z.dtype).index_add_(0, index, z)
    means /= torch.bincount(index).to(z.dtype)[:, None]
    share = float((means[index] ** 2).sum() / (z ** 2).sum())
    return 1 - (1 - share) * (n - 1) / (n - k) if n > k else float("nan")


class Namer:
    """(shape, colour) of drawn object tokens, from the scenes' own object tokens."""

    def __init__(self, tokens: torch.Tensor, names: list[tuple[str, str]]):
        self.names = sorted(set(names))
        index = torch.tensor([self.names.index(n) for n in names])
        if tokens.dtype == torch.long:
            self.codes = {int(c): self.names[i] for c, i in zip(tokens, index)}
            self.centres = None
        else:
            self.centres = torch.stack([tokens[index == i].mean(0) for i in range(len(self.names))])

    def __call__(self, drawn: torch.Tensor) -> list[tuple[str, str] | None]:
        if self.centres is None:
            return [self.codes.get(int(c)) for c in drawn]
        return [self.names[i] for i in torch.cdist(drawn.float(), self.centres.float()).argmin(1).tolist()]


@torch.no_grad()
def binding(sampler: Sampler, scenes: list[Scene], scales: list[float], draws: int, seed: int) -> dict:
    """The module docstring's measurements for ``sampler``'s run on ``scenes``."""
    cfg, g = sampler.cfg, sampler.nets["generator"]
    tokens, occ = scene_tokens(sampler, scenes, "binding")
    rows = torch.arange(len(scenes))
    cell = occ.float().argmax(1)  # the one object's cell
    wanted = [(s.objects[0].shape, s.objects[0].color) for s in scenes]
    is_object, name = ObjectTest(tokens, occ), Namer(tokens[rows, cell], wanted)
    ctx, cmask = sampler.context([s.caption for s in scenes])
    null, null_mask = sampler.nets["aligner"](*sampler.nets["aligner"].null_features(len(scenes)))
    if g.order == "random":
        alone = torch.zeros_like(occ).scatter(1, cell[:, None], True)
        contexts = {"all masked": g.inputs(tokens, torch.ones_like(occ)), "others shown": g.inputs(tokens, alone)}
    else:
        contexts = {"true prefix": g.inputs(tokens)}
    guided = any(scale != 1.0 for scale in scales)
    # raster: the object's cell in quarters of the order, where the chance that the cell holds the
    # object (after an empty prefix of i cells, 1/(cells - i)) grows along the grid (item 57)
    quarters = cell_quarters(occ.shape[1]) if g.order == "raster" else []
    out = {"variance_share": {}, "draws": [], **({"by_cell": []} if quarters else {})}
    for k, (context, x) in enumerate(contexts.items()):
        z = g.backbone(x, ctx, cmask)[rows, cell]
        zu = g.backbone(x, null, null_mask)[rows, cell] if guided else None  # the null branch: guidance only
        out["variance_share"][context] = shares(z, wanted)
        in_quarter = [(cell >= lo) & (cell < hi) for lo, hi in quarters]
        cell_rows = [{"cells": f"{lo}-{hi - 1}", "scenes": int(inside.sum()),
                      **shares(z[inside], [w for w, i in zip(wanted, inside.tolist()) if i]), "draws": []}
                     for (lo, hi), inside in zip(quarters, in_quarter)]
        if quarters:
            out["by_cell"] += cell_rows
        for scale in scales:
            drawn = draw_at(g, z, zu, scale, draws, cfg.sample, draw_generator(seed, k, scale))
            objects = is_object(drawn)
            index = objects.nonzero()[:, 0]
            got, want = name(drawn[index]), [wanted[i // draws] for i in index.tolist()]
            out["draws"].append({"order": g.order, "context": context, "cfg": scale, "n": int(objects.numel()),
                                 **drawn_shares(objects, got, want, draws)})
            for row, inside in zip(cell_rows, in_quarter):
                row["draws"].append({"cfg": scale, **drawn_shares(objects, got, want, draws, inside)})
    return out


def cell_quarters(cells: int) -> list[tuple[int, int]]:
    """The grid's cells in four ranges of the raster order, ``[(first, last + 1), ...]``."""
    edges = [round(cells * i / 4) for i in range(5)]
    return list(zip(edges[:-1], edges[1:]))


def shares(z: torch.Tensor, wanted: list[tuple[str, str]]) -> dict[str, float]:
    """The colour's and the shape's share of ``z``'s variance across scenes."""
    return {"colour": variance_share(z, [w[1] for w in wanted]),
            "shape": variance_share(z, [w[0] for w in wanted])}


def drawn_shares(objects: torch.Tensor, got: list, want: list, draws: int,
                 inside: torch.Tensor | None = None) -> dict[str, float]:
    """Of the tokens drawn (``draws`` per scene, ``objects``: which are objects), the share that are
    objects; of those, the share in the named shape and in the named colour (``got``, ``want``: the
    objects' (shape, colour) and the caption's). ``inside``: only the scenes it marks."""
    if inside is not None:
        scene_of = torch.arange(objects.numel()) // draws
        keep = inside[scene_of[objects]].tolist()
        objects = objects[inside[scene_of]]
        got, want = [a for a, k in zip(got, keep) if k], [b for b, k in zip(want, keep) if k]

    def share(part: int) -> float:
        hits = sum(a is not None and a[part] == b[part] for a, b in zip(got, want))
        return hits / len(got) if got else float("nan")

    return {"object": len(got) / max(objects.numel(), 1), "shape_given_object": share(0),
            "colour_given_object": share(1)}


def measure(run_dir: str | Path, scales: list[float], scenes: int = 192, draws: int = 16, seed: int = 0) -> dict:
    """Measure and write ``binding.json`` for a trained run (the module docstring)."""
    return run_probe(run_dir, scales, scenes, draws,
                     lambda sampler, cfg, scales: binding(sampler, colour_scenes(cfg.data, scenes, seed), scales,
                                                          draws, seed),
                     lambda run: run.binding)


@cli_main
def main(argv: list[str] | None = None) -> None:
    parser = probe_parser("python -m harness.evaluate.binding", __doc__, (192, "single-object colour scenes"),
                          (16, "tokens drawn per scene, context and scale"))
    args = parser.parse_args(argv)
    result = measure(args.run_dir, args.cfg, args.scenes, args.draws, args.seed)
    for context, share in result["variance_share"].items():
        print(f"{context}: variance share of z: colour {share['colour']:.3f}, shape {share['shape']:.3f}")
    print(f"{'context':>13} {'cfg':>4} {'object':>7} {'shape|obj':>9} {'colour|obj':>10} {'n':>5}")
    for r in result["draws"]:
        print(f"{r['context']:>13} {r['cfg']:>4g} {r['object']:>7.3f} {r['shape_given_object']:>9.3f} "
              f"{r['colour_given_object']:>10.3f} {r['n']:>5}")
    for r in result.get("by_cell", []):
        drawn = "; ".join(f"cfg {d['cfg']:g}: object {d['object']:.3f}, colour|obj {d['colour_given_object']:.3f}"
                          for d in r["draws"])
        print(f"cells {r['cells']:>5} ({r['scenes']} scenes): colour share {r['colour']:.3f}, "
              f"shape {r['shape']:.3f}; {drawn}")


if __name__ == "__main__":
    main()
