"""What the grid-world probes of a trained run share (``occupancy``: does it know when a count is
complete; ``binding``: does it carry and draw a caption's colour). Both ask the model about single
cells of true scenes in the grid layout, where one token is one cell's object or background:

  * ``grid_scenes``: training-distribution scenes of one GenEval tag; ``scene_tokens``: their
    tokens under the run's tokenizer and which cells hold objects (``occupied_cells``);
  * ``ObjectTest``: whether a drawn token is an object, from the scenes' own tokens;
  * ``draw_at``: tokens drawn by the run's head from given transformer outputs, guided or not,
    with the randomness of ``draw_generator``;
  * ``probe_parser`` and ``run_probe``: the command line, and loading the run and writing the
    probe's JSON into its directory, mirrored to MLflow under ``eval/``.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from omegaconf import DictConfig

from harness import config as C
from harness.data.datasets import to_float
from harness.data.shapes import Scene, grid_cell, render, sample_scene
from harness.errors import UserError
from harness.evaluate.guidance import check_scales
from harness.evaluate.run import check_run
from harness.io import write_json
from harness.run_dir import RunDir
from harness.sampling import Sampler
from harness.tracking import store


def grid_scenes(data: DictConfig, tag: str, n: int, seed: list[int], probe: str) -> list[Scene]:
    """``n`` training-distribution scenes of ``tag`` in the run's world (no named scenes), scene i
    drawn from ``seed + [i]``."""
    if data.layout != "grid":
        raise UserError("data.layout", f"{probe} needs the grid layout (one object per cell), got {data.layout}")
    return [sample_scene(np.random.default_rng([*seed, i]), "train", tag=tag, layout="grid", cells=data.cells,
                         nuisance=data.nuisance, unnamed_color=data.unnamed_color)
            for i in range(n)]


def occupied_cells(scene: Scene, cells: int) -> torch.Tensor:
    """(cells * cells,) bool: which grid cells hold an object, in the token grid's raster order."""
    occ = torch.zeros(cells * cells, dtype=torch.bool)
    for o in scene.objects:
        occ[grid_cell(o, cells)] = True
    return occ


def scene_tokens(sampler: Sampler, scenes: list[Scene], probe: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The scenes' tokens (N, L[, C]) under the run's tokenizer, and (N, L) which cells hold an object."""
    cfg, g = sampler.cfg, sampler.nets["generator"]
    cells = cfg.data.cells
    if g.num_tokens != cells * cells:
        raise UserError("tokenizer.downsample", f"{probe} needs one token per grid cell: {g.num_tokens} "
                        f"tokens for {cells}x{cells} cells")
    images = np.stack([render(s, cfg.data.resolution) for s in scenes])
    tokens = sampler.tokenizer.encode(to_float(torch.from_numpy(images)).to(sampler.device)).cpu()
    return tokens, torch.stack([occupied_cells(s, cells) for s in scenes])


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


def draw_generator(seed: int, context: int, scale: float = 0.0) -> torch.Generator:
    """The randomness of one context (masks) or one (context, guidance scale) (draws): a row's numbers
    do not depend on which other contexts or scales were asked for."""
    return torch.Generator().manual_seed(seed * 1_000_003 + context * 10_007 + round(scale * 1000))


def probe_parser(prog: str, doc: str, scenes: tuple[int, str], draws: tuple[int, str]) -> argparse.ArgumentParser:
    """A probe's command line: the run, guidance scales, and (default, help) of its scene count and
    draws."""
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a run directory whose status is trained or completed")
    parser.add_argument("--cfg", type=float, nargs="+", default=[1.0], help="guidance scales (>= 1)")
    parser.add_argument("--scenes", type=int, default=scenes[0], help=scenes[1])
    parser.add_argument("--draws", type=int, default=draws[0], help=draws[1])
    parser.add_argument("--seed", type=int, default=0, help="scenes and draws")
    return parser


def run_probe(run_dir: str | Path, scales: list[float], scenes: int, draws: int,
              measure: Callable[[Sampler, DictConfig, list[float]], Any], output: Callable[[RunDir], Path]) -> Any:
    """Check the arguments, ``measure(sampler, cfg, scales)`` the trained run, and write the result to
    ``output(run)`` (recorded for MLflow first, so an interrupted write is mirrored on retry)."""
    scales = check_scales(scales)
    for flag, value in (("--scenes", scenes), ("--draws", draws)):
        if value < 1:
            raise UserError(flag, f"must be >= 1, got {value}")
    run = RunDir(run_dir)
    check_run(run.path)
    cfg = C.load_saved(run.config)
    result = measure(Sampler.from_run(run.path), cfg, scales)
    store.log_artifacts(run.path, {output(run): "eval"}, cfg.tracking.uri)
    write_json(output(run), result)
    store.catch_up(run.path, cfg.tracking.uri)
    return result
