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

import argparse
from pathlib import Path

import numpy as np
import torch

from harness import config as C
from harness.data.datasets import to_float
from harness.data.shapes import Scene, render, sample_scene
from harness.errors import UserError, cli_main
from harness.evaluate.guidance import check_scales
from harness.evaluate.run import check_run
from harness.io import write_json
from harness.run_dir import RunDir
from harness.sampling import Sampler
from harness.tracking import store

CELLS_LEFT = (1, 2, 4, 8)  # random order: masked cells per context


def counting_scenes(data, n: int, seed: int) -> list[Scene]:
    """``n`` training-distribution counting scenes of the run's world (no named scenes)."""
    if data.layout != "grid":
        raise UserError("data.layout", f"occupancy needs the grid layout (one object per cell), got {data.layout}")
    return [sample_scene(np.random.default_rng([seed, 45, i]), "train", tag="counting", layout="grid",
                         cells=data.cells, nuisance=data.nuisance, unnamed_color=data.unnamed_color)
            for i in range(n)]


def occupied_cells(scene: Scene, cells: int) -> torch.Tensor:
    """(cells * cells,) bool: which grid cells hold an object, in the token grid's raster order."""
    occ = torch.zeros(cells * cells, dtype=torch.bool)
    for o in scene.objects:
        occ[min(int(o.cy * cells), cells - 1) * cells + min(int(o.cx * cells), cells - 1)] = True
    return occ


class ObjectTest:
    """Whether a drawn token is an object, learned from the tokenizer's own tokens of the scenes."""

    def __init__(self, tokens: torch.Tensor, occ: torch.Tensor):
        if tokens.dtype == torch.long:  # discrete: the codes of empty cells
            self.empty_codes = tokens[~occ].unique()
            self.empty = None
        else:
            self.empty = tokens[~occ].mean(0)
            self.threshold = 0.5 * (tokens[occ] - self.empty).norm(dim=-1).median()

    def __call__(self, drawn: torch.Tensor) -> torch.Tensor:
        if self.empty is None:
            return ~torch.isin(drawn, self.empty_codes)
        return (drawn - self.empty).norm(dim=-1) > self.threshold


def draw_at(g, z: torch.Tensor, zu: torch.Tensor | None, cfg: float, draws: int, s, generator) -> torch.Tensor:
    """``draws`` tokens per row of ``z`` (guided by the null-caption rows ``zu`` when cfg != 1)."""
    rows = z.repeat_interleave(draws, 0)
    guided = cfg != 1.0
    if guided:
        rows = torch.cat([rows, zu.repeat_interleave(draws, 0)])
    return g.draw(rows, guided, cfg, temperature=s.temperature, top_k=s.top_k,
                   diffusion_steps=s.diffusion_steps, generator=generator)


def _generator(seed: int, cells_left: int, scale: float = 0.0) -> torch.Generator:
    """The randomness of one context size (masks) or one (context size, scale) (draws): a row's
    numbers do not depend on which other sizes or scales were asked for."""
    return torch.Generator().manual_seed(seed * 1_000_003 + cells_left * 10_007 + round(scale * 1000))


@torch.no_grad()
def occupancy_rows(sampler: Sampler, scenes: list[Scene], scales: list[float], draws: int,
                   seed: int) -> list[dict]:
    """The module docstring's table for ``sampler``'s run on ``scenes``."""
    cfg, g = sampler.cfg, sampler.nets["generator"]
    cells = cfg.data.cells
    if g.num_tokens != cells * cells:
        raise UserError("tokenizer.downsample", f"occupancy needs one token per grid cell: {g.num_tokens} "
                        f"tokens for {cells}x{cells} cells")
    images = np.stack([render(s, cfg.data.resolution) for s in scenes])
    pixels = to_float(torch.from_numpy(images)).to(sampler.device)
    tokens = sampler.tokenizer.encode(pixels).cpu()
    occ = torch.stack([occupied_cells(s, cells) for s in scenes])
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
            order = torch.rand(len(scenes), L, generator=_generator(seed, m)).argsort(1)
            masked = torch.zeros(len(scenes), L, dtype=torch.bool).scatter(1, order[:, :m], True)
            x = g.inputs(tokens, masked)
            z, zu = g.backbone(x, ctx, cmask)[masked], uncond(x, masked)
            complete = ~(occ & masked).any(1)
            truth = occ[masked].view(-1, m).float()
            for scale in scales:
                gen = _generator(seed, m, scale)
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
                gen = _generator(seed, L - i, scale)
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
    scales = check_scales(scales)
    for name, value in (("--scenes", scenes), ("--draws", draws)):
        if value < 1:
            raise UserError(name, f"must be >= 1, got {value}")
    run = RunDir(run_dir)
    check_run(run.path)
    cfg = C.load_saved(run.config)
    sampler = Sampler.from_run(run.path)
    rows = occupancy_rows(sampler, counting_scenes(cfg.data, scenes, seed), scales, draws, seed)
    store.log_artifacts(run.path, {run.occupancy: "eval"}, cfg.tracking.uri)
    write_json(run.occupancy, rows)
    store.catch_up(run.path, cfg.tracking.uri)
    return rows


@cli_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m harness.evaluate.occupancy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a run directory whose status is trained or completed")
    parser.add_argument("--cfg", type=float, nargs="+", default=[1.0], help="guidance scales (>= 1)")
    parser.add_argument("--scenes", type=int, default=96, help="counting scenes")
    parser.add_argument("--draws", type=int, default=8, help="tokens drawn per cell and context")
    parser.add_argument("--seed", type=int, default=0, help="scenes, masks and draws")
    args = parser.parse_args(argv)
    rows = occupancy(args.run_dir, args.cfg, args.scenes, args.draws, args.seed)
    print(f"{'cfg':>4} {'left':>4} {'state':>10} {'p_model':>8} {'p_true':>7} {'n':>5}")
    for r in rows:
        print(f"{r['cfg']:>4g} {r['cells_left']:>4} {r['state']:>10} {r['p_model']:>8.3f} {r['p_true']:>7.3f} {r['n']:>5}")


if __name__ == "__main__":
    main()
