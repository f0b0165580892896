"""The run configuration: an OmegaConf schema of dataclasses, validated, hashed.

Everything a run needs is in one ``RunConfig``. YAML files in ``sweeps/`` and command-line dotlists
(``model.token=discrete train.steps=100``) only override its defaults. ``resolve`` fills the
derived fields (depth/width/heads from the size ladder, per-variant sampling defaults) so that the
config saved in a run directory is complete, and ``run_key`` names the run by the hash of what
changes its results (tracking, output paths and launcher settings excluded).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from harness.errors import UserError, check_choice, one_line
from harness.models.sizes import LADDERS, size_spec

TOKENS = ("discrete", "continuous")
ORDERS = ("raster", "random")
DATASETS = ("shapes", "folder", "webdataset", "coco")
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
# ``ddp`` runs as ``ddp_find_unused_parameters_true`` (some parameters skip some steps); ``fsdp``
# shards parameters, gradients and optimizer state (Lightning FSDPStrategy, one unit per block).
STRATEGIES = ("auto", "ddp", "ddp_find_unused_parameters_true", "fsdp")
# The FID reference: ``data`` = the training data's val split, ``coco`` = a seeded MS-COCO draw.
REFERENCE_SOURCES = ("data", "coco")

# Per-variant sampling defaults from the paper (CFG scale, temperature), design.md §1.
SAMPLING_DEFAULTS: dict[tuple[str, str], tuple[float, float]] = {
    ("continuous", "random"): (5.0, 0.975),
    ("continuous", "raster"): (4.5, 0.975),
    ("discrete", "random"): (1.6, 1.05),
    ("discrete", "raster"): (2.5, 0.95),
}


@dataclass
class DataConfig:
    """Image-caption data. ``shapes`` is procedural and needs no files."""

    name: str = "shapes"
    path: Optional[str] = None
    resolution: int = 32
    seed: int = 0
    layout: str = "free"
    """shapes only: "free" placement, or "grid": one object per cell of a cells x cells grid."""
    cells: int = 4
    train_size: int = 20000
    val_size: int = 512
    num_workers: int = 0


@dataclass
class TokenizerConfig:
    """Stage-0 autoencoder shared by both token types; only the bottleneck differs. A
    ``pretrained_<token>`` diffusers model (name or path) replaces training for that token type."""

    downsample: int = 4
    channels: int = 4
    codebook_size: int = 256
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    kl_weight: float = 1.0e-6
    commitment: float = 0.25
    steps: int = 2000
    batch_size: int = 64
    lr: float = 2.0e-3
    seed: int = 0
    pretrained_continuous: Optional[str] = None
    pretrained_discrete: Optional[str] = None


@dataclass
class TextConfig:
    """Text encoder + trainable aligner. ``encoder=learned`` is a word-level transformer over the
    caption vocabulary, trained jointly (``train_encoder``) or fixed at its seeded initialisation,
    like a frozen pretrained encoder; any other value is a Hugging Face model name or local path,
    used frozen. Trained jointly from scratch, the encoder's caption features collapse to a constant
    within ~50 steps, and so does a trainable aligner at the generator's learning rate; ``lr_scale``
    multiplies the learning rate of the text path (encoder and aligner) (docs/results/cpu-study/README.md)."""

    encoder: str = "learned"
    train_encoder: bool = True
    max_len: int = 16
    width: int = 128
    encoder_layers: int = 2
    aligner_layers: int = 2
    heads: int = 4
    dropout_prob: float = 0.1
    lr_scale: float = 1.0


@dataclass
class ModelConfig:
    """The generator: token type x order, a size from a ladder, and the heads."""

    token: str = "continuous"
    order: str = "random"
    ladder: str = "cpu"
    size: str = "s"
    depth: Optional[int] = None  # None: from the ladder
    width: Optional[int] = None
    heads: Optional[int] = None
    mlp_ratio: float = 4.0
    head_depth: int = 3
    head_width: Optional[int] = None  # None: the model width
    diffusion_steps: int = 1000
    diffusion_batch_mul: int = 4
    mask_ratio_min: float = 0.7
    mask_ratio_std: float = 0.25


@dataclass
class TrainConfig:
    """``batch_size``: images per optimizer step over all devices (each of devices x num_nodes
    ranks takes 1/world of each of ``accumulate_grad_batches`` micro-batches)."""

    steps: int = 2000
    batch_size: int = 64
    lr: float = 1.0e-3
    warmup_steps: int = 100
    weight_decay: float = 0.02
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 3.0
    ema_decay: float = 0.999
    seed: int = 0
    precision: str = "32-true"
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    threads: int = 0
    accumulate_grad_batches: int = 1
    val_every: int = 500
    checkpoint_every: int = 200
    log_every: int = 25
    compile: bool = False


@dataclass
class SampleConfig:
    """Sampling; ``cfg``/``temperature`` left at -1 take the paper's per-variant defaults."""

    cfg: float = -1.0
    temperature: float = -1.0
    steps: int = 16
    diffusion_steps: int = 50
    top_k: int = 0


@dataclass
class ReferenceConfig:
    """The FID reference set, the real images (and their captions) generated images are compared
    with. ``data``: the first ``eval.fid_samples`` images of the training data's val split.
    ``coco``: zero-shot, as the paper's FID-30K: a draw of ``eval.fid_samples`` MS-COCO val images
    seeded by ``seed``, one caption each, from ``path`` (a folder holding
    ``annotations/captions_val2014.json`` and ``val2014/``), whatever the run trained on."""

    source: str = "data"
    path: Optional[str] = None
    seed: int = 0


@dataclass
class EvalConfig:
    fid_samples: int = 1000
    geneval_prompts_per_tag: int = 20
    images_per_prompt: int = 4
    batch_size: int = 128
    seed: int = 0
    inception_path: Optional[str] = None
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)


@dataclass
class TrackingConfig:
    uri: Optional[str] = None
    experiment: str = "default"
    parent_run_id: Optional[str] = None


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    text: TextConfig = field(default_factory=TextConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    results_dir: str = "results"


# Fields that do not change a run's results: excluded from its key.
_UNKEYED = ("tracking", "results_dir", "train.accelerator", "train.threads", "data.num_workers",
            "eval.batch_size")

_DEFAULT_REFERENCE = asdict(ReferenceConfig())


def _schema() -> DictConfig:
    return OmegaConf.structured(RunConfig)


def _merge(base: DictConfig, other: Any, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "config"
        msg = one_line(e)
        if "Key" in msg and "not in" in msg:
            parent = key.rsplit(".", 1)[0] if "." in key else ""
            node = OmegaConf.select(base, parent) if parent else base
            choices = list(node.keys()) if isinstance(node, DictConfig) else None
            raise UserError(key, f"unknown key (from {source})", choices) from None
        raise UserError(key, f"{msg} (from {source})") from None


def load(overrides: list[str] | None = None, files: list[str | Path] | None = None,
         base: dict | DictConfig | None = None) -> DictConfig:
    """Build a validated, resolved config from the schema, then ``base``, YAML files, a dotlist."""
    cfg = _schema()
    if base is not None:
        cfg = _merge(cfg, base, "base config")
    for f in files or []:
        path = Path(f)
        if not path.is_file():
            raise UserError("config file", f"{path} does not exist")
        try:
            loaded = OmegaConf.load(path)
        except Exception as e:
            raise UserError(str(path), f"malformed YAML: {one_line(e)}") from None
        cfg = _merge(cfg, loaded, str(path))
    for item in overrides or []:
        if "=" not in item:
            raise UserError(item, "override must look like key=value (e.g. model.token=discrete)")
        try:
            dot = OmegaConf.from_dotlist([item])
        except Exception as e:
            raise UserError(item.split("=")[0], f"malformed override: {e}") from None
        cfg = _merge(cfg, dot, "command line")
    return resolve(cfg)


def _positive(cfg: DictConfig, *keys: str, allow_zero: bool = False) -> None:
    for key in keys:
        value = OmegaConf.select(cfg, key)
        if value is None or value < 0 or (value == 0 and not allow_zero):
            bound = ">= 0" if allow_zero else "> 0"
            raise UserError(key, f"must be {bound}, got {value}")


def _check_reference(ref: DictConfig) -> None:
    check_choice("eval.reference.source", ref.source, REFERENCE_SOURCES)
    if ref.source == "data":
        if ref.path:
            raise UserError("eval.reference.path", "is read only with eval.reference.source=coco; "
                            "unset it to compare with the training data's val split")
        return
    if not ref.path:
        raise UserError("eval.reference.path", f"eval.reference.source={ref.source} needs a COCO folder "
                        "(annotations/captions_val2014.json + val2014/), or eval.reference.source=data")
    from harness.data.real import COCO_CAPTIONS, COCO_IMAGES

    for part in ("", COCO_CAPTIONS, COCO_IMAGES):
        if not (Path(ref.path) / part).exists():
            raise UserError("eval.reference.path", f"{Path(ref.path) / part} does not exist "
                            f"(a COCO folder holds {COCO_CAPTIONS} and {COCO_IMAGES}/)")


def resolve(cfg: DictConfig) -> DictConfig:
    """Validate choices and ranges, then fill the derived fields (size ladder, sampling defaults)."""
    m, s = cfg.model, cfg.sample
    check_choice("model.token", m.token, TOKENS)
    check_choice("model.order", m.order, ORDERS)
    check_choice("model.ladder", m.ladder, LADDERS)
    check_choice("data.name", cfg.data.name, DATASETS)
    check_choice("data.layout", cfg.data.layout, ("free", "grid"))
    if cfg.data.layout == "grid" and not 2 <= cfg.data.cells <= cfg.data.resolution // 6:
        raise UserError("data.cells", f"must be in 2..{cfg.data.resolution // 6} at resolution "
                        f"{cfg.data.resolution}, got {cfg.data.cells}")
    check_choice("train.precision", cfg.train.precision, PRECISIONS)
    check_choice("train.strategy", cfg.train.strategy, STRATEGIES)
    if cfg.train.strategy == "fsdp" and cfg.train.accelerator not in ("gpu", "cuda"):
        raise UserError("train.accelerator", f"train.strategy=fsdp runs on GPUs only (Lightning's "
                        f"FSDPStrategy), got {cfg.train.accelerator!r}", ["gpu", "cuda"])
    _check_reference(cfg.eval.reference)
    if cfg.data.name != "shapes" and not cfg.data.path:
        raise UserError("data.path", f"dataset {cfg.data.name!r} needs a path")
    brace = cfg.data.name == "webdataset" and "{" in str(cfg.data.path)
    if cfg.data.path and not brace and not Path(cfg.data.path).exists():
        raise UserError("data.path", f"{cfg.data.path} does not exist")
    spec = size_spec(m.ladder, m.size)
    m.depth = spec.depth if m.depth is None else m.depth
    m.width = spec.width if m.width is None else m.width
    m.heads = spec.heads if m.heads is None else m.heads
    m.head_width = m.width if m.head_width is None else m.head_width
    _positive(cfg, "model.depth", "model.width", "model.heads", "model.head_depth",
              "model.head_width", "model.diffusion_steps", "model.diffusion_batch_mul",
              "data.resolution", "data.train_size", "data.val_size", "tokenizer.downsample",
              "tokenizer.channels", "tokenizer.codebook_size", "tokenizer.hidden",
              "tokenizer.layers", "tokenizer.heads",
              "tokenizer.steps", "tokenizer.batch_size", "tokenizer.lr", "text.max_len",
              "text.width", "text.heads", "train.steps", "train.batch_size", "train.lr",
              "train.devices", "train.num_nodes", "train.accumulate_grad_batches", "train.val_every", "train.checkpoint_every",
              "train.log_every", "sample.steps", "sample.diffusion_steps", "eval.fid_samples",
              "eval.geneval_prompts_per_tag", "eval.images_per_prompt", "eval.batch_size")
    _positive(cfg, "text.encoder_layers", "text.aligner_layers", "train.warmup_steps",
              "train.weight_decay", "train.grad_clip", "sample.top_k", "train.threads", "text.lr_scale",
              allow_zero=True)
    t = cfg.train
    split = t.devices * t.num_nodes * t.accumulate_grad_batches
    if t.batch_size % split:
        raise UserError("train.batch_size", f"{t.batch_size} images per step do not split into "
                        f"devices x num_nodes x accumulate_grad_batches = {split} equal micro-batches")
    if m.width % m.heads:
        raise UserError("model.heads", f"width {m.width} is not divisible by heads {m.heads}")
    if cfg.tokenizer.hidden % cfg.tokenizer.heads:
        raise UserError("tokenizer.heads",
                        f"tokenizer.hidden {cfg.tokenizer.hidden} is not divisible by {cfg.tokenizer.heads}")
    if cfg.text.width % cfg.text.heads:
        raise UserError("text.heads", f"text.width {cfg.text.width} is not divisible by {cfg.text.heads}")
    if cfg.data.resolution % cfg.tokenizer.downsample:
        raise UserError("tokenizer.downsample",
                        f"resolution {cfg.data.resolution} is not divisible by {cfg.tokenizer.downsample}")
    if not 0 <= cfg.text.dropout_prob < 1:
        raise UserError("text.dropout_prob", f"must be in [0, 1), got {cfg.text.dropout_prob}")
    if not 0 < m.mask_ratio_min <= 1:
        raise UserError("model.mask_ratio_min", f"must be in (0, 1], got {m.mask_ratio_min}")
    if not 0 <= cfg.train.ema_decay < 1:
        raise UserError("train.ema_decay", f"must be in [0, 1), got {cfg.train.ema_decay}")
    cfg_scale, temperature = SAMPLING_DEFAULTS[(m.token, m.order)]
    if s.cfg < 0:
        s.cfg = cfg_scale
    if s.temperature < 0:
        s.temperature = temperature
    if s.cfg < 1.0:
        raise UserError("sample.cfg", f"must be >= 1 (1 = no guidance), got {s.cfg}")
    if s.temperature <= 0:
        raise UserError("sample.temperature", f"must be > 0, got {s.temperature}")
    return cfg


def pretrained_source(cfg: DictConfig, token: str) -> str | None:
    """The pretrained tokenizer configured for ``token`` runs, if any."""
    return cfg.tokenizer.get(f"pretrained_{token}")


def num_tokens(cfg: DictConfig) -> int:
    """Tokens per image: the latent grid side squared."""
    return (cfg.data.resolution // cfg.tokenizer.downsample) ** 2


def to_container(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def config_hash(obj: Any, length: int = 12) -> str:
    """A stable hash of any JSON-serialisable object (sorted keys)."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def keyed_part(cfg: DictConfig) -> dict:
    """The part of a config that determines a run's results."""
    d = to_container(cfg)
    for path in _UNKEYED:
        node = d
        *parents, leaf = path.split(".")
        for p in parents:
            node = node[p]
        node.pop(leaf, None)
    if d["eval"].get("reference") == _DEFAULT_REFERENCE:  # keys of runs made before it existed hold
        d["eval"].pop("reference")
    return d


def run_key(cfg: DictConfig) -> str:
    """``<token>-<order>-<size>-<hash>``: readable, and unique per result-changing config."""
    m = cfg.model
    return f"{m.token}-{m.order}-{m.size}-{config_hash(keyed_part(cfg), 10)}"


def save(cfg: DictConfig, path: str | Path) -> None:
    from harness.io import write_text

    write_text(path, OmegaConf.to_yaml(cfg))


def load_saved(path: str | Path) -> DictConfig:
    """Re-load a config saved in a run directory (validated against the current schema)."""
    return resolve(_merge(_schema(), OmegaConf.load(path), str(path)))
