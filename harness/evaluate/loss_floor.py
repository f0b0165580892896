"""The loss floor: the validation loss of a generator that knows the shapes world exactly.

    python -m harness.evaluate.loss_floor RUN [RUN ...] [--jitters 64]

In a grid world without nuisance whose every object's colour is fixed by its caption
(``data.unnamed_color`` ``by_shape`` or one palette colour), read through a tokenizer that codes each
patch alone (``tokenizer.context=patch``), a token is a function of what its cell holds: nothing, or
one (shape, colour). A caption then fixes everything in its scene but which cells the objects take
(and a named scene's caption fixes that too). So the best any generator can do is known: given the
caption and the tokens it sees, each content of a predicted cell has the chance that the world's law
over layouts gives it. This module computes that law for every validation caption and then the
validation loss of the Bayes-optimal predictor on validation's own quadrature (the same samples, and
in random order the same masks and diffusion draws; in raster order each sample's own draws,
``Generator.sample_losses``): the cross-entropy of the exact conditional distribution (discrete
tokens), or the noise / velocity MSE of the exact denoiser of the mixture of token latents
(continuous tokens, ``PosteriorMean``). A run's validation loss minus the floor is its reducible
loss; the offset E of H1's power-law fit estimates the same floor from the models alone.

The layout law. The world draws a caption's cells uniformly, jitters its objects, and keeps the draw
if they satisfy the caption (``shapes.layout_holds``) and the split keeps the scene
(``shapes.split_keeps``: no held-out combination shown); a layout's chance is its share of kept
draws, estimated over ``jitters`` draws of sizes and offsets once for each class of the caption's
layouts that differ by a translation of the grid (``translation_class``). A layout that a validation scene of the caption shows never gets chance 0: if none of its
draws was kept, it is drawn 16 times as often, and at worst given one kept draw in all of them.

Evaluation (``harness.evaluate.run``) writes every such run's floor into its metrics
(``loss_floor``: the results table's column, which the analysis reads); the floor is computed once
per variant and cached at stage 0 (``ensure_loss_floor``; the caption laws, most of its cost, once
per world). The command does the same for runs evaluated before that and writes
``<run>/loss_floor.json``: the floor, the run's validation loss and the reducible fraction
(val loss − floor) / val loss when the run has been evaluated, and the settings.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import math
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from harness import config as C
from harness.config import config_hash, pretrained_source
from harness.data.datasets import build_dataset, data_dir
from harness.data.shapes import (NAMED_TAG, SHAPES, Scene, grid_cell, grid_objects, include_groups,
                                 layout_holds, split_keeps)
from harness.errors import UserError, cli_main
from harness.io import build_once, read_json, write_json
from harness.models.diffloss import DiffLoss
from harness.models.generator import Generator, val_generator
from harness.run_dir import RunDir
from harness.tokenizers.stage0 import load_tokens, tokenizer_dir

JITTERS = 64  # draws of sizes and offsets per layout when estimating a caption's layout law
EMPTY = 0  # a cell's content: 0 = nothing, 1 + i = SHAPES[i] (its colour is the caption's)


def problem(cfg: DictConfig) -> tuple[str, str] | None:
    """Why the floor of ``cfg``'s world is not exact, as (field, message); None where it is: tokens
    must be a function of the cell contents a caption fixes, and the validation loss must be over
    the world's own validation scenes."""
    d, tok = cfg.data, cfg.tokenizer
    for field, value, ok, need in (
            ("data.name", d.name, d.name == "shapes", "shapes"),
            ("data.layout", d.layout, d.layout == "grid", "grid"),
            ("data.nuisance", d.nuisance, d.nuisance == "none", "none"),
            ("data.unnamed_color", d.unnamed_color, d.unnamed_color != "random", "by_shape or a palette colour"),
            ("tokenizer.context", tok.context, tok.context == "patch", "patch"),
            ("tokenizer.downsample", tok.downsample, d.resolution == tok.downsample * d.cells,
             f"{d.resolution // d.cells} (data.resolution / data.cells: one token per grid cell)"),
            ("tokenizer.posterior_sample", tok.posterior_sample,
             not (tok.posterior_sample and cfg.model.token == "continuous"), "false"),
            (f"tokenizer.pretrained_{cfg.model.token}", pretrained_source(cfg, cfg.model.token),
             pretrained_source(cfg, cfg.model.token) is None, "none (a tokenizer trained at stage 0)"),
            ("eval.reference.source", cfg.eval.reference.source, cfg.eval.reference.source == "data", "data"),
            ("model.learn_sigma", cfg.model.learn_sigma, not cfg.model.learn_sigma, "false")):
        if not ok:
            return field, f"the loss floor needs {field}={need}, got {value}"
    return None


def check_world(cfg: DictConfig) -> None:
    """Raise ``problem(cfg)`` as a one-line user error, if there is one."""
    if (found := problem(cfg)) is not None:
        raise UserError(*found)


def layout_of(objects, cells: int) -> tuple[int, ...]:
    """Each cell's content in raster order (``EMPTY`` or 1 + shape index)."""
    return layout_at([(o.shape, o.color) for o in objects], [grid_cell(o, cells) for o in objects], cells)


def caption_key(scene: Scene) -> str:
    """What fixes a scene's layout law: its tag, its include groups and its objects' colours."""
    return repr((scene.tag, include_groups(scene), [o.color for o in scene.objects]))


def layout_law(scene: Scene, split: str, held_out: str, cells: int, jitters: int, seed: int = 0,
               seen: frozenset = frozenset()) -> tuple[np.ndarray, np.ndarray]:
    """The world's law over the layouts of ``scene``'s caption: (layouts (M, L), chances (M,)),
    estimated with draws seeded by ``seed`` and the caption alone; the layouts in ``seen`` (which
    scenes of this caption showed) never get chance 0."""
    if scene.tag == NAMED_TAG:  # one fixed picture
        return np.array([layout_of(scene.objects, cells)], dtype=np.int8), np.ones(1)
    rng = np.random.default_rng([seed, int(hashlib.sha256(caption_key(scene).encode()).hexdigest()[:15], 16)])
    specs = [(o.shape, o.color) for o in scene.objects]
    # objects alike are interchangeable: each set of cells is one layout
    assignments = (itertools.combinations(range(cells * cells), len(specs)) if len(set(specs)) == 1
                   else itertools.permutations(range(cells * cells), len(specs)))
    classes: dict[tuple, list[tuple[int, ...]]] = {}  # the world keeps all of a class's layouts alike
    for chosen in assignments:
        classes.setdefault(translation_class(chosen, cells), []).append(layout_at(specs, chosen, cells))
    layouts, weights = [], []
    for key, members in classes.items():
        chosen = [r * cells + c for r, c in key]
        w = kept(scene, chosen, split, held_out, cells, rng, jitters) / jitters
        if w == 0 and not seen.isdisjoint(members):  # a layout the world drew is possible: look harder
            w = max(kept(scene, chosen, split, held_out, cells, rng, 16 * jitters), 1) / (16 * jitters)
        if w > 0:
            layouts += members
            weights += [w] * len(members)
    p = np.asarray(weights)
    return np.asarray(layouts, dtype=np.int8), p / p.sum()


def kept(scene: Scene, chosen, split: str, held_out: str, cells: int, rng: np.random.Generator,
         draws: int) -> int:
    """How many of ``draws`` draws of sizes and offsets of ``scene``'s objects in the ``chosen``
    cells the world keeps for the scene's caption and ``split``."""
    specs, groups = [(o.shape, o.color) for o in scene.objects], include_groups(scene)
    constraints = [(1, groups[1]["position"][0], 0)] if scene.tag == "position" else []
    count = 0
    for _ in range(draws):
        objs = layout_holds(grid_objects(specs, chosen, rng, cells), constraints, "grid", cells, "none")
        drawn = None if objs is None else Scene(objs, (0, 0, 0), scene.tag, "")
        count += drawn is not None and split_keeps(drawn, split, held_out) and include_groups(drawn) == groups
    return count


def translation_class(chosen, cells: int) -> tuple[tuple[int, int], ...]:
    """Each chosen cell's (row, column) after shifting the cells as far up and left as the grid
    allows. The world's rules read only where the cells lie relative to each other (objects are
    jittered within their cells; gaps and relations compare objects), so a translation of the chosen
    cells keeps a draw kept or not alike and one estimate serves the whole class."""
    rows, cols = [c // cells for c in chosen], [c % cells for c in chosen]
    return tuple((r - min(rows), c - min(cols)) for r, c in zip(rows, cols))


def layout_at(specs, chosen, cells: int) -> tuple[int, ...]:
    """The layout of (shape, colour) ``specs`` placed in the ``chosen`` cells."""
    out = [EMPTY] * (cells * cells)
    for (shape, _), cell in zip(specs, chosen):
        out[cell] = 1 + SHAPES.index(shape)
    return tuple(out)


def content_marginal(layouts: np.ndarray, p: np.ndarray, own: np.ndarray, known: np.ndarray,
                     cell: int) -> np.ndarray:
    """P(content of ``cell``) (``EMPTY``, 1 + shape index) given the caption's layout law and the
    contents of the ``known`` cells (bool (L,)), which are those of the layout ``own``."""
    q = p * (layouts[:, known] == own[known]).all(axis=1)
    return np.bincount(layouts[:, cell], weights=q, minlength=1 + len(SHAPES)) / q.sum()


class ContentTokens:
    """Each cell content's token, read off the validation tokens: a code (discrete) or a latent
    (continuous), one per content (None: an empty cell; else (shape, colour)). Refuses a tokenizer
    whose tokens are not a function of the cell's content."""

    def __init__(self, scenes: list[Scene], tokens: Tensor, cells: int):
        seen: dict = {}
        for scene, toks in zip(scenes, tokens):
            contents = [None] * (cells * cells)
            for o in scene.objects:
                contents[grid_cell(o, cells)] = (o.shape, o.color)
            for content, tok in zip(contents, toks):
                seen.setdefault(content, []).append(tok)
        self.contents = sorted(seen, key=lambda c: (c is not None, c or ()))
        self.index = {c: k for k, c in enumerate(self.contents)}
        stacked = [torch.stack(seen[c]) for c in self.contents]
        if tokens.dtype in (torch.int32, torch.int64):
            codes = [t.unique() for t in stacked]
            if any(len(c) > 1 for c in codes):
                raise UserError("tokenizer.context", "the loss floor needs one token per cell content; "
                                "the validation tokens give one content several codes")
            self.tokens = torch.stack([c[0] for c in codes]).long()
        else:
            self.tokens = torch.stack([t.float().mean(0) for t in stacked])
            spread = max((t.float() - m).norm(dim=-1).max().item() for t, m in zip(stacked, self.tokens))
            apart = torch.cdist(self.tokens, self.tokens).masked_fill(torch.eye(len(stacked), dtype=torch.bool),
                                                                      math.inf).min().item()
            if spread > 0.01 * apart:
                raise UserError("tokenizer.context", f"the loss floor needs one token per cell content; a "
                                f"content's latents spread {spread:.3g}, contents lie {apart:.3g} apart")

    def weights(self, marginal: np.ndarray, scene: Scene, cell: int, cells: int) -> Tensor:
        """(K,) the chance of each content at ``cell`` of ``scene`` given P(``EMPTY``, 1 + shape
        index) there: a shape takes the colour the caption gives it (in a named scene, whose caption
        fixes every cell, the colour of the scene's own object there)."""
        colour = {o.shape: o.color for o in scene.objects}
        colour.update({o.shape: o.color for o in scene.objects if grid_cell(o, cells) == cell})
        w = torch.zeros(len(self.contents), dtype=torch.float64)
        for v, pv in enumerate(marginal):
            if pv > 0:
                w[self.index[None if v == EMPTY else (SHAPES[v - 1], colour[SHAPES[v - 1]])]] += pv
        return w


class PosteriorMean(nn.Module):
    """The exact denoiser of a token drawn from a finite mixture of points: given x_t and each
    point's prior chance (the condition ``z``, (N, K)), the posterior over points is a softmax of
    log chance - ||x_t - sqrt(a) point||^2 / (2 (1 - a)); it returns the noise (``prediction="eps"``)
    or velocity (``"v"``) that the posterior-mean clean token implies, which minimise the MSE."""

    def __init__(self, points: Tensor, alphas_cumprod: Tensor, prediction: str):
        super().__init__()
        self.points, self.alphas_cumprod, self.prediction = points.double(), alphas_cumprod.double(), prediction

    def forward(self, x_t: Tensor, t: Tensor, z: Tensor) -> Tensor:
        x_t, a = x_t.double(), self.alphas_cumprod[t][:, None]
        d2 = (x_t[:, None, :] - a.sqrt()[:, :, None] * self.points[None]).pow(2).sum(-1)
        log_post = z.double().clamp_min(1e-300).log() - d2 / (2 * (1 - a))
        log_post = log_post.masked_fill(z <= 0, -math.inf)
        x0 = log_post.softmax(-1) @ self.points
        eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        return eps if self.prediction == "eps" else a.sqrt() * eps - (1 - a).sqrt() * x0


def caption_laws(scenes: list[Scene], split: str, held_out: str, cells: int, jitters: int,
                 seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``layout_law`` of every caption among ``scenes``, by ``caption_key``."""
    seen: dict[str, set] = {}
    for scene in scenes:
        seen.setdefault(caption_key(scene), set()).add(layout_of(scene.objects, cells))
    first = {caption_key(scene): scene for scene in reversed(scenes)}
    return {key: layout_law(first[key], split, held_out, cells, jitters, seed, frozenset(seen[key]))
            for key in seen}


def validation_masks(cfg: DictConfig, n: int, token_dim: int) -> tuple[Tensor, list[torch.Generator]]:
    """Validation's masked cells and per-sample generators for ``n`` samples: random order's own
    (``Generator.validation_masks``), raster order every cell with each sample's own draws."""
    m, L = cfg.model, cfg.data.cells ** 2
    if m.order == "raster":
        return torch.ones(n, L, dtype=torch.bool), [val_generator(j) for j in range(n)]
    masker = Generator(m.token, "random", L, depth=1, width=8, heads=1, token_dim=token_dim,
                       mask_ratio_min=m.mask_ratio_min, mask_ratio_std=m.mask_ratio_std,
                       mask_ratio_uniform=m.mask_ratio_uniform)
    return masker.validation_masks(0, n, torch.device("cpu"))


def floor(cfg: DictConfig, jitters: int = JITTERS, seed: int = 0) -> dict:
    """The validation loss of the Bayes-optimal generator for ``cfg``'s world, token type and order
    (the module docstring), and each validation sample's."""
    check_world(cfg)
    m, cells = cfg.model, cfg.data.cells
    world = build_dataset(cfg.data, "val")
    tokens, _ = load_tokens(tokenizer_dir(cfg, m.token), "val")
    scenes = [world.scene(i) for i in range(len(tokens))]
    table = ContentTokens(scenes, tokens, cells)
    masks, generators = validation_masks(cfg, len(tokens), tokens.shape[-1] if tokens.dim() == 3 else 1)
    head = None
    if m.token == "continuous":
        head = DiffLoss(tokens.shape[-1], 1, 8, 1, m.diffusion_steps, m.diffusion_batch_mul,
                        prediction=m.diffusion_prediction)
        head.net = PosteriorMean(table.tokens, head.alphas_cumprod, m.diffusion_prediction)
    by_caption, losses = ensure_caption_laws(cfg, world, scenes, jitters, seed), []
    for scene, toks, masked, g in zip(scenes, tokens, masks, generators):
        layouts, p = by_caption[caption_key(scene)]
        own = np.asarray(layout_of(scene.objects, cells), dtype=np.int8)
        targets = masked.nonzero().flatten()
        visible = ~masked.numpy()
        w = torch.stack([table.weights(content_marginal(
            layouts, p, own, visible if m.order == "random" else np.arange(cells * cells) < cell, cell),
            scene, cell, cells)
            for cell in targets.tolist()])
        if head is None:  # the chance of the true token, summed over the contents that give it
            chance = (w * (table.tokens[None] == toks[targets].long()[:, None])).sum(1)
            losses.append(-chance.log().mean().item())
        else:
            with torch.no_grad():
                losses.append(head(toks[targets].float(), w, generator=g).item())
    return {"loss_floor": float(np.mean(losses)), "token": m.token, "order": m.order,
            "samples": len(losses), "caption_laws": len(by_caption), "jitters": jitters, "seed": seed,
            "sample_losses": losses}


def ensure_caption_laws(cfg: DictConfig, world, scenes: list[Scene], jitters: int, seed: int) -> dict:
    """``caption_laws`` of the validation ``scenes`` of ``world`` (``cfg``'s), computed once and
    cached beside the world's rendered data
    (``stage0/data-<key>-caption-laws-<jitters>x<seed>/``): they depend on the world alone, so the
    four variants of a study share them."""
    data = data_dir(cfg.data, cfg.results_dir)
    final = data.with_name(f"{data.name}-caption-laws-{jitters}x{seed}")

    def build(tmp: Path) -> None:
        laws = caption_laws(scenes, world.split, world.held_out, cfg.data.cells, jitters, seed)
        torch.save({k: (torch.from_numpy(lay), torch.from_numpy(p)) for k, (lay, p) in laws.items()},
                   tmp / "laws.pt")
        write_json(tmp / "meta.json", {"caption_laws": len(laws), "scenes": len(scenes), "jitters": jitters,
                                       "seed": seed})

    blob = torch.load(build_once(final, build) / "laws.pt", weights_only=True)
    return {k: (lay.numpy(), p.numpy()) for k, (lay, p) in blob.items()}


def objective_key(cfg: DictConfig) -> dict:
    """What the floor depends on besides the world and its tokens: the order and the objective's
    quadrature, not the model's size."""
    m = cfg.model
    return {k: m[k] for k in ("token", "order", "mask_ratio_min", "mask_ratio_std", "mask_ratio_uniform",
                              "diffusion_steps", "diffusion_batch_mul", "diffusion_prediction")}


def ensure_loss_floor(cfg: DictConfig, jitters: int = JITTERS, seed: int = 0) -> dict:
    """``floor(cfg)``, computed once per world, tokenizer and objective (so once per variant of a
    study) and cached beside the stage-0 tokenizer
    (``<tokenizer dir>-loss-floor-<objective hash>-<jitters>x<seed>/meta.json``). Evaluation calls
    it for every run whose world ``problem`` accepts (``loss_floor`` in metrics.json)."""
    check_world(cfg)
    tokens = tokenizer_dir(cfg, cfg.model.token)
    final = tokens.with_name(f"{tokens.name}-loss-floor-{config_hash(objective_key(cfg))}-{jitters}x{seed}")
    return read_json(build_once(final, lambda tmp: write_json(tmp / "meta.json", floor(cfg, jitters, seed)))
                     / "meta.json")


@cli_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m harness.evaluate.loss_floor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", help="run directories (their config and stage 0)")
    parser.add_argument("--jitters", type=int, default=JITTERS, help="draws of sizes and offsets per layout")
    parser.add_argument("--seed", type=int, default=0, help="the seed of those draws")
    args = parser.parse_args(argv)
    if args.jitters < 1:
        raise UserError("--jitters", f"must be >= 1, got {args.jitters}")
    runs = []
    for run_dir in args.run_dirs:  # every argument checked before any work
        run = RunDir(run_dir)
        if not run.config.is_file():
            raise UserError("run_dir", f"{run_dir} is not a run directory (no config.yaml)")
        cfg = C.load_saved(run.config)
        check_world(cfg)
        runs.append((run, cfg))
    print(f"{'run':<40} {'val_loss':>9} {'floor':>9} {'reducible':>9}")
    for run, cfg in runs:
        result = ensure_loss_floor(cfg, args.jitters, args.seed)
        metrics = run.eval_metrics(cfg.eval.seed, cfg.eval.seed)
        val_loss = read_json(metrics).get("val_loss") if metrics.is_file() else None
        result["val_loss"] = val_loss
        result["reducible_fraction"] = None if val_loss is None else (val_loss - result["loss_floor"]) / val_loss
        write_json(run.loss_floor, result)
        shown = "-" if val_loss is None else f"{val_loss:.4f}"
        frac = "-" if val_loss is None else f"{result['reducible_fraction']:.1%}"
        print(f"{run.name:<40} {shown:>9} {result['loss_floor']:>9.4f} {frac:>9}", flush=True)


if __name__ == "__main__":
    main()
