"""Does a trained run know when a scene's objects are all drawn? Its object probability per cell,
against the truth, on counting scenes of the shapes world's grid layout.

    python -m harness.evaluate.occupancy RUN_DIR [--cfg 1 5] [--scenes 96] [--draws 8] [--seed 0]

Counting is where random order fell behind raster in the default study (calibration items 29, 30
and 45 in ``docs/results/cpu-study``). With one object per cell, a counting scene is drawn
correctly only if, late in sampling, the model gives a cell an object exactly when objects are
still missing. This measures that directly, on true scenes (training-distribution counting
captions, each cell's occupancy known from the scene):

  * random order: ``m`` cells masked at random, the rest shown; the model's object probability at
    each masked cell;
  * raster order: each position given its true prefix; ``m`` = the cells left, this one included.

Each context is "complete" when every object of the scene is already visible (truth: no object
in any cell left) and "incomplete" otherwise (truth: the share of the cells left that hold one).
The probability is the share of ``draws`` tokens drawn at the cell (the run's temperature and
diffusion steps; guidance at each ``--cfg``, 1 = none) that are objects: a continuous token is an
object when it is farther from the mean empty-cell latent than half the median object latent's
distance; a discrete code when it is none of the codes the tokenizer gives empty cells.

Written to ``RUN_DIR/occupancy.json`` (rows: order, cfg, cells_left, state, p_model, p_true, n)
and mirrored to MLflow under ``eval/``. A model that counts puts ~0 probability on complete
contexts and p_true on incomplete ones.
"""
from __future__ import annotations

from pathlib import Path

import torch

from harness.data.shapes import Scene
from harness.errors import cli_main
from harness.evaluate.cell_probe import (ObjectTest, draw_at, draw_generator, grid_scenes, probe_parser, run_probe,
                                         scene_tokens)
from harness.sampling import Sampler

CELLS_LEFT = (1, 2, 4, 8)  # random order: masked cells per context


def counting_scenes(data, n: int, seed: int) -> list[Scene]:
    """``n`` training-distribution counting scenes of the run's world (no named scenes)."""
    return grid_scenes(data, "counting", n, [seed, 45], "occupancy")


@torch.no_grad()
def occupancy_rows(sampler: Sampler, scenes: list[Scene], scales: list[float], draws: int,
                   seed: int) -> list[dict]:
    """The module docstring's table for ``sampler``'s run on ``scenes``."""
    cfg, g = sampler.cfg, sampler.nets["generator"]
    tokens, occ = scene_tokens(sampler, scenes, "occupancy")
    is_object = ObjectTest(tokens, occ)
    ctx, cmask = sampler.context([s.caption for s in scenes])
    null, null_mask = sampler.nets["aligner"](*sampler.nets["aligner"].null_features(len(scenes)))
    guided = any(scale != 1.0 for scale in scales)  # the null-caption branch is needed only then

    def uncond(x: torch.Tensor, index) -> torch.Tensor | None:
        return g.backbone(x, null, null_mask)[index] if guided else None

    L = g.num_tokens
    sums: dict[tuple, list[float]] = {}

    def add(key, p_model: torch.Tensor, p_true: torch.Tensor):
        acc = sums.setdefault(key, [0.0, 0.0, 0])
        acc[0] += float(p_model.sum()); acc[1] += float(p_true.sum()); acc[2] += p_model.numel()

    if g.order == "random":
        for m in CELLS_LEFT:
            order = torch.rand(len(scenes), L, generator=draw_generator(seed, m)).argsort(1)
            masked = torch.zeros(len(scenes), L, dtype=torch.bool).scatter(1, order[:, :m], True)
            x = g.inputs(tokens, masked)
            z, zu = g.backbone(x, ctx, cmask)[masked], uncond(x, masked)
            complete = ~(occ & masked).any(1)
            truth = occ[masked].view(-1, m).float()
            for scale in scales:
                gen = draw_generator(seed, m, scale)
                p = is_object(draw_at(g, z, zu, scale, draws, cfg.sample, gen)).float().view(-1, m, draws).mean(2)
                for state, sel in (("complete", complete), ("incomplete", ~complete)):
                    add((scale, m, state), p[sel], truth[sel])
    else:
        x = g.inputs(tokens)
        z, zu = g.backbone(x, ctx, cmask), uncond(x, slice(None))
        before = occ.long().cumsum(1) - occ.long()  # objects in the prefix
        complete = before == occ.sum(1, keepdim=True)
        for i in range(L):
            for scale in scales:
                gen = draw_generator(seed, L - i, scale)
                zu_i = zu[:, i] if zu is not None else None
                p = is_object(draw_at(g, z[:, i], zu_i, scale, draws, cfg.sample, gen)).float().view(-1, draws).mean(1)
                for state, sel in (("complete", complete[:, i]), ("incomplete", ~complete[:, i])):
                    add((scale, L - i, state), p[sel], occ[sel, i].float())
    return [{"order": g.order, "cfg": scale, "cells_left": m, "state": state, "p_model": a[0] / a[2],
             "p_true": a[1] / a[2], "n": a[2]}
            for (scale, m, state), a in sorted(sums.items()) if a[2]]


def occupancy(run_dir: str | Path, scales: list[float], scenes: int = 96, draws: int = 8,
              seed: int = 0) -> list[dict]:
    """Measure and write ``occupancy.json`` for a trained run (the module docstring)."""
    return run_probe(run_dir, scales, scenes, draws,
                     lambda sampler, cfg, scales: occupancy_rows(sampler, counting_scenes(cfg.data, scenes, seed),
                                                                 scales, draws, seed),
                     lambda run: run.occupancy)


@cli_main
def main(argv: list[str] | None = None) -> None:
    parser = probe_parser("python -m harness.evaluate.occupancy", __doc__, (96, "counting scenes"),
                          (8, "tokens drawn per cell and context"))
    args = parser.parse_args(argv)
    rows = occupancy(args.run_dir, args.cfg, args.scenes, args.draws, args.seed)
    print(f"{'cfg':>4} {'left':>4} {'state':>10} {'p_model':>8} {'p_true':>7} {'n':>5}")
    for r in rows:
        print(f"{r['cfg']:>4g} {r['cells_left']:>4} {r['state']:>10} {r['p_model']:>8.3f} {r['p_true']:>7.3f} {r['n']:>5}")


if __name__ == "__main__":
    main()
