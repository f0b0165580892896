"""Expand a sweep into runs: one resolved ``RunConfig`` per (token, order, size), plus stage 0.

Each run's config is the schema defaults, then (lowest to highest priority) the launcher's thread
count, the sweep's ``overrides``, its ``size_overrides`` for that size, its ``variant_overrides``
for that variant, the grid axes, the sweep's tracking settings, and the command-line dotlist. A
run is named by ``run_key(cfg)`` and lives in ``<results_dir>/runs/<key>/``, so two sweeps that
share a config share its run.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from harness import config as C
from harness.errors import UserError
from harness.models.flops import train_flops
from harness.registry import FID_NET_SEEDS
from harness.run_dir import RunDir
from harness.sweep import grid
from harness.tracking import tracking_uri

GRID_KEYS = ("model.token", "model.order", "model.size", "model.ladder")


@dataclass
class Run:
    """One grid point: its resolved config, key, directory and evaluation seeds."""

    cfg: DictConfig
    seeds: list[int]
    key: str = field(init=False)
    dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.key = C.run_key(self.cfg)
        self.dir = RunDir.of(self.cfg).path

    @property
    def token(self) -> str:
        return self.cfg.model.token

    @property
    def order(self) -> str:
        return self.cfg.model.order

    @property
    def size(self) -> str:
        return self.cfg.model.size

    @property
    def variant(self) -> str:
        return f"{self.token}-{self.order}"

    @property
    def cost(self) -> float:
        """Relative training cost: train FLOPs, a continuous run's extra diffusion-head draws
        counted at a quarter each (the local launcher starts the costliest first; the sweep's ETA
        weighs runs by it)."""
        c = self.cfg
        mul = c.model.diffusion_batch_mul if c.model.token == "continuous" else 1
        return train_flops(c, c.tokenizer.channels, c.tokenizer.codebook_size) * (1 + 0.25 * (mul - 1))


@dataclass(frozen=True)
class Stage0Task:
    """A shared artefact that runs need before they train: a tokenizer (per token type and
    tokenizer config), the text features, or an FID feature net (per seed)."""

    kind: str
    part: str  # which one of its kind: the tokenizer's token type, the feature net's seed ("" alone)
    path: Path
    cfg: DictConfig = field(compare=False, hash=False)

    @property
    def done(self) -> bool:
        return (self.path / "meta.json").exists()

    @property
    def name(self) -> str:
        """What progress lines and errors call it: "tokenizer discrete", "features seed 1", "text"."""
        return f"{self.kind} {self.part}".strip()


def net_part(seed: int | None) -> str:
    """The ``Stage0Task.part`` of the FID feature net trained with ``seed`` (None: the default
    net); the live view prints it after the kind ("features seed 1")."""
    return "" if seed is None else f"seed {seed}"


def net_seed(part: str) -> int | None:
    """The feature net's seed that ``net_part`` wrote into ``part`` (None: the default net)."""
    return int(part.removeprefix("seed ")) if part else None


def absolute_uri(uri: str) -> str:
    """A sqlite URI with a relative path made absolute, so jobs in any directory share the store."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def _check_cli(overrides: list[str]) -> None:
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key in GRID_KEYS:
            raise UserError(key, "is set by the sweep, not by a key=value override: choose sizes and "
                            "variants with --size/--variants, the ladder in the sweep file")


def build_runs(spec: DictConfig, sizes: list[str], variants: list[str], overrides: list[str],
               threads: int | None = None, parent_run_id: str | None = None) -> list[Run]:
    """The runs of the selected sizes x variants x training seeds, in that order."""
    _check_cli(overrides)
    runs = []
    for size, variant in itertools.product(sizes, variants):
        for train_seed in grid.train_seeds(spec, size, variant):
            token, order = variant.split("-")
            layers = [{"train": {"threads": threads}} if threads is not None else {},
                      spec.overrides, spec.size_overrides.get(size, {}),
                      spec.variant_overrides.get(variant, {}),
                      {"model": {"token": token, "order": order, "size": size},
                       "train": {"seed": train_seed}}]
            base = OmegaConf.to_container(OmegaConf.merge(*layers))
            cfg = C.load(overrides, base=base)
            cfg.results_dir = str(Path(cfg.results_dir).resolve())
            cfg.tracking.uri = absolute_uri(cfg.tracking.uri or tracking_uri())
            cfg.tracking.experiment = spec.name
            cfg.tracking.parent_run_id = parent_run_id
            runs.append(Run(cfg, [int(s) for s in spec.seeds]))
    return runs


def results_dir(runs: list[Run]) -> Path:
    return Path(runs[0].cfg.results_dir)


def sweep_dir(runs: list[Run], name: str) -> Path:
    """``<results_dir>/<sweep>/``: the results table, the parent run id, SLURM job folders."""
    return results_dir(runs) / name


def stage0_needs(run: Run) -> list[Stage0Task]:
    """The stage-0 artefacts one run needs before it trains: its token type's tokenizer (for its
    tokenizer config), the features of a frozen text encoder, and for the shapes world the FID
    feature nets (the default one and those of ``FID_NET_SEEDS``, each its own task, so they train
    side by side and each shows its progress); none for token shards (``data.name=tokens``:
    encoded beforehand)."""
    from harness.evaluate.features import feature_dir, seeded
    from harness.text.cache import text_cache_dir
    from harness.tokenizers.stage0 import tokenizer_dir

    cfg = run.cfg
    if cfg.data.name == "tokens":  # token shards carry their tokenizer and text features
        return []
    needs = [Stage0Task("tokenizer", run.token, tokenizer_dir(cfg, run.token), cfg)]
    if cfg.text.encoder != "learned":
        needs.append(Stage0Task("text", "", text_cache_dir(cfg), cfg))
    if cfg.data.name == "shapes" and not cfg.eval.inception_path:
        needs.append(Stage0Task("features", net_part(None), feature_dir(cfg.data.resolution, cfg.results_dir), cfg))
        needs += [Stage0Task("features", net_part(seed),
                             feature_dir(cfg.data.resolution, cfg.results_dir, seeded(seed)), cfg)
                  for seed in FID_NET_SEEDS]
    return needs


def stage0_tasks(runs: list[Run]) -> list[Stage0Task]:
    """The distinct stage-0 artefacts the runs need (``stage0_needs``), in first-use order."""
    tasks: dict[Path, Stage0Task] = {}
    for run in runs:
        for task in stage0_needs(run):
            tasks.setdefault(task.path, task)
    return list(tasks.values())
