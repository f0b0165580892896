"""The sweep file: which runs a study holds and how to launch them, as an OmegaConf schema.

A sweep YAML (``sweeps/<preset>.yaml``) names the study, its grid (token x order x size), the
evaluation seeds, ``overrides`` merged into every run's config (``size_overrides`` into the runs
of one size, ``variant_overrides`` into those of one variant), and the launcher settings. It is
validated against ``SweepSpec`` here and its overrides against the run schema
(``harness.config``), so a typo fails before anything runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from harness import config as C
from harness.errors import UserError, check_choice, one_line
from harness.registry import LADDERS, ORDERS, TOKENS, VARIANTS

SWEEPS_DIR = Path(__file__).resolve().parents[2] / "sweeps"
LAUNCHERS = ("local", "slurm", "debug")


@dataclass
class GridSpec:
    """The axes of the study; an empty ``size`` list means every size of the ladder."""

    token: List[str] = field(default_factory=lambda: list(TOKENS))
    order: List[str] = field(default_factory=lambda: list(ORDERS))
    size: List[str] = field(default_factory=list)


@dataclass
class LocalSpec:
    """Jobs as subprocesses on this machine: at most ``max_parallel`` at once, each using
    ``threads_per_job`` torch threads (the ``train.threads`` of its run)."""

    max_parallel: int = 1
    threads_per_job: int = 2
    timeout_min: int = 7 * 24 * 60


@dataclass
class SlurmResources:
    """Per-job resources; in ``per_size`` and ``stage0`` a null field keeps the sweep default."""

    time_min: Optional[int] = None
    cpus_per_task: Optional[int] = None
    gpus_per_node: Optional[int] = None
    mem_gb: Optional[int] = None


@dataclass
class SlurmSpec:
    """One job array per size. A run's task and node counts come from its config
    (``train.devices`` tasks per node, ``train.num_nodes`` nodes) so Lightning and SLURM agree."""

    partition: Optional[str] = None
    account: Optional[str] = None
    time_min: int = 60
    cpus_per_task: int = 2
    gpus_per_node: int = 0
    mem_gb: int = 8
    array_parallelism: int = 64
    signal_delay_s: int = 90
    max_requeues: int = 3
    per_size: Dict[str, SlurmResources] = field(default_factory=dict)
    stage0: SlurmResources = field(default_factory=SlurmResources)


@dataclass
class LauncherSpec:
    default: str = "local"
    progress_every_s: float = 30.0
    local: LocalSpec = field(default_factory=LocalSpec)
    slurm: SlurmSpec = field(default_factory=SlurmSpec)


@dataclass
class SweepSpec:
    name: str = "sweep"
    grid: GridSpec = field(default_factory=GridSpec)
    seeds: List[int] = field(default_factory=lambda: [0])
    # training seeds (``train.seed``): each config is trained once per seed, so the analysis can
    # count training noise, not only sampling noise; a size in ``train_seeds_per_size`` uses its own,
    # and a variant in ``train_seeds_per_variant`` adds its own at every size (the variant a
    # hypothesis about the whole ladder rests on)
    train_seeds: List[int] = field(default_factory=lambda: [0])
    train_seeds_per_size: Dict[str, List[int]] = field(default_factory=dict)
    train_seeds_per_variant: Dict[str, List[int]] = field(default_factory=dict)
    overrides: Dict[str, Any] = field(default_factory=dict)
    size_overrides: Dict[str, Any] = field(default_factory=dict)
    # merged into the runs of one variant ("continuous-random", ...), after ``size_overrides``: a
    # setting that a study chose for each variant by one procedure (e.g. the sampling temperature)
    variant_overrides: Dict[str, Any] = field(default_factory=dict)
    launcher: LauncherSpec = field(default_factory=LauncherSpec)


def presets() -> list[str]:
    return sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    check_choice("--preset", name, presets())
    return SWEEPS_DIR / f"{name}.yaml"


def load_sweep(path: str | Path) -> DictConfig:
    """Read and validate a sweep file; raises ``UserError`` naming the bad field."""
    path = Path(path)
    raw = C.read_yaml(path, "--file")
    try:
        spec = OmegaConf.merge(OmegaConf.structured(SweepSpec), raw)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "sweep"
        raise UserError(f"{path.name}: {key}", one_line(e)) from None
    validate(spec, path.name)
    return spec


def ladder_of(spec: DictConfig) -> str:
    return OmegaConf.select(spec, "overrides.model.ladder", default=None) or C.ModelConfig.ladder


def _check_overrides(overrides: Any, where: str, size: str) -> None:
    base = OmegaConf.merge(overrides, {"model": {"size": size}})
    try:
        C.load(base=OmegaConf.to_container(base))
    except UserError as e:
        raise UserError(f"{where}.{e.field}", str(e).split(": ", 1)[1]) from None


def validate(spec: DictConfig, source: str) -> None:
    """Names, choices and the overrides (checked through ``harness.config.load``)."""
    if not spec.name or "/" in spec.name:
        raise UserError(f"{source}: name", f"must be a non-empty name without '/', got {spec.name!r}")
    for axis, valid in {"token": TOKENS, "order": ORDERS}.items():  # (no size: all sizes)
        if not spec.grid[axis]:
            raise UserError(f"{source}: grid.{axis}", "is empty: the grid has no runs", valid)
    for t in spec.grid.token:
        check_choice(f"{source}: grid.token", t, TOKENS)
    for o in spec.grid.order:
        check_choice(f"{source}: grid.order", o, ORDERS)
    ladder = ladder_of(spec)
    check_choice(f"{source}: overrides.model.ladder", ladder, LADDERS)
    _check_overrides(spec.overrides, f"{source}: overrides", next(iter(LADDERS[ladder])))
    for s in list(spec.grid.size) + list(spec.size_overrides) + list(spec.launcher.slurm.per_size):
        check_choice(f"{source}: size {s!r}", s, LADDERS[ladder])
    for size, extra in spec.size_overrides.items():
        _check_overrides(OmegaConf.merge(spec.overrides, extra), f"{source}: size_overrides.{size}",
                         size)
    for v, extra in spec.variant_overrides.items():
        check_choice(f"{source}: variant_overrides {v!r}", v, VARIANTS)
        token, order = v.split("-")
        _check_overrides(OmegaConf.merge(spec.overrides, extra, {"model": {"token": token, "order": order}}),
                         f"{source}: variant_overrides.{v}", next(iter(LADDERS[ladder])))
    check_choice(f"{source}: launcher.default", spec.launcher.default, LAUNCHERS)
    if not spec.seeds:
        raise UserError(f"{source}: seeds", "needs at least one evaluation seed")
    for s in spec.train_seeds_per_size:
        check_choice(f"{source}: train_seeds_per_size {s!r}", s, LADDERS[ladder])
    for v in spec.train_seeds_per_variant:
        check_choice(f"{source}: train_seeds_per_variant {v!r}", v, VARIANTS)
    for where, seeds in {"train_seeds": spec.train_seeds,
                         **{f"train_seeds_per_size.{k}": v for k, v in spec.train_seeds_per_size.items()},
                         **{f"train_seeds_per_variant.{k}": v
                            for k, v in spec.train_seeds_per_variant.items()}}.items():
        if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
            raise UserError(f"{source}: {where}", f"needs distinct training seeds >= 0, got {list(seeds)}")
    if spec.launcher.local.max_parallel < 1 or spec.launcher.local.threads_per_job < 0:
        raise UserError(f"{source}: launcher.local", "max_parallel must be >= 1, threads_per_job >= 0")


def sizes(spec: DictConfig) -> list[str]:
    """The grid's sizes in ladder order (all of the ladder when the grid lists none)."""
    ladder = LADDERS[ladder_of(spec)]
    chosen = set(spec.grid.size) or set(ladder)
    return [s for s in ladder if s in chosen]


def train_seeds(spec: DictConfig, size: str, variant: str) -> list[int]:
    """The size's training seeds (``train_seeds_per_size``, else ``train_seeds``) and the variant's
    own (``train_seeds_per_variant``), ascending, each once."""
    seeds = [*spec.train_seeds_per_size.get(size, spec.train_seeds),
             *spec.train_seeds_per_variant.get(variant, [])]
    return sorted({int(s) for s in seeds})


def variants(spec: DictConfig) -> list[str]:
    return [f"{t}-{o}" for t in spec.grid.token for o in spec.grid.order]


def select(spec: DictConfig, size_arg: str, variants_arg: str | None) -> tuple[list[str], list[str]]:
    """Resolve ``--size all|xs,s`` and ``--variants a-b,...`` against the sweep and its ladder."""
    ladder = LADDERS[ladder_of(spec)]
    if size_arg == "all":
        chosen_sizes = sizes(spec)
    else:
        chosen_sizes = [s.strip() for s in size_arg.split(",") if s.strip()]
        for s in chosen_sizes:
            check_choice("--size", s, ["all", *ladder])
        chosen_sizes = [s for s in ladder if s in chosen_sizes]
    if variants_arg in (None, "", "all"):
        chosen_variants = variants(spec)
    else:
        chosen_variants = [v.strip() for v in variants_arg.split(",") if v.strip()]
        for v in chosen_variants:
            check_choice("--variants", v, ["all", *VARIANTS])
    if not chosen_sizes or not chosen_variants:
        raise UserError("--size/--variants", "select at least one size and one variant")
    return chosen_sizes, chosen_variants
