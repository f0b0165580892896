"""The run configuration: an OmegaConf schema of dataclasses, validated, hashed.

Everything a run needs is in one ``RunConfig``. YAML files in ``sweeps/`` and command-line dotlists
(``model.token=discrete train.steps=100``) only override its defaults. ``resolve`` fills the
derived fields (depth/width/heads from the size ladder, per-variant sampling defaults) so that the
config saved in a run directory is complete, and ``run_key`` names the run by the hash of what
changes its results (tracking, output paths and launcher settings excluded).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import MISSING, Field, asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from harness.errors import UserError, check_choice, one_line
from harness.registry import (COCO_CAPTIONS, COCO_IMAGES, DIFFUSION_PREDICTIONS, HOLD_OUTS, LADDERS,
                              LAYOUTS, NUISANCES, ORDERS, SAMPLING_DEFAULTS, TOKENIZER_CONTEXTS, TOKENS,
                              UNNAMED_COLORS, size_spec)

# ``tokens``: token shards pre-encoded by ``python -m harness.tokenizers.shards``, streamed (#19).
DATASETS = ("shapes", "folder", "webdataset", "coco", "tokens")
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
# ``ddp`` runs as ``ddp_find_unused_parameters_true`` (some parameters skip some steps); ``fsdp``
# shards parameters, gradients and optimizer state (Lightning FSDPStrategy, one unit per block).
STRATEGIES = ("auto", "ddp", "ddp_find_unused_parameters_true", "fsdp")
# The FID reference: ``data`` = the training data's val split, ``coco`` = a seeded MS-COCO draw.
REFERENCE_SOURCES = ("data", "coco")
# The learning rate after warm-up: ``cosine`` decays to 0.1x at the last step, ``constant`` holds it.
LR_SCHEDULES = ("cosine", "constant")
LR_WIDTH_RULES = ("all", "mup")


def knob(default: Any, doc: str, *, gt: float | None = None, ge: float | None = None,
         lt: float | None = None, le: float | None = None, choices: tuple | None = None) -> Any:
    """A config field with its one-line ``doc`` and the bounds ``resolve`` checks: ``gt``/``ge``
    (lower), ``lt``/``le`` (upper), ``choices``. A ``None`` value (derived later) is checked after
    ``resolve`` has filled it."""
    meta = {"doc": doc, "gt": gt, "ge": ge, "lt": lt, "le": le, "choices": choices}
    return field(default=default, metadata=meta)


POSITIVE = {"gt": 0}
NON_NEGATIVE = {"ge": 0}


@dataclass
class DataConfig:
    """Image-caption data. ``shapes`` is procedural and needs no files."""

    name: str = knob("shapes", "dataset: procedural shapes, a folder of images + captions.jsonl, "
                     "WebDataset shards, MS-COCO, or pre-encoded token shards (streamed)",
                     choices=DATASETS)
    path: Optional[str] = knob(None, "where the dataset lives (all but shapes)")
    resolution: int = knob(32, "image side in pixels", **POSITIVE)
    seed: int = knob(0, "seed of the shapes world's scenes and of the train/val split")
    layout: str = knob("free", "shapes only: free placement, or one object per cell of a grid",
                       choices=LAYOUTS)
    cells: int = knob(4, "shapes grid layout: cells per side")
    nuisance: str = knob("full", "shapes only: what no caption names — full: random background "
                         "grey, tint and gradient, object size and position jitter; none: one "
                         "plain background, one object size, centred in the cells",
                         choices=NUISANCES)
    unnamed_color: str = knob("random", "shapes only: the colour of an object whose caption names "
                              "none — random (any of the palette), by_shape (its shape's own: "
                              "circle red, square green, triangle blue), or always this palette "
                              "colour",
                              choices=UNNAMED_COLORS)
    held_out: str = knob("picture", "shapes only: what train/val/test keep the held-out "
                         "combinations out of — picture: no image shows one; caption: no caption "
                         "names one (an image may show one under a caption that does not say it)",
                         choices=HOLD_OUTS)
    named_scenes: int = knob(0, "shapes grid only: kinds of named scene, the world's long tail (a "
                             "fixed arrangement of one shape, captioned by a made-up name); 0: none",
                             **NON_NEGATIVE)
    named_scene_zipf: float = knob(1.5, "shapes: P(kind k) ∝ (k + 1)^-this (Zipf exponent)", **POSITIVE)
    named_scene_fraction: float = knob(0.5, "shapes: share of train/val/test scenes that are named",
                                       ge=0, le=1)
    named_scene_color: str = knob("random", "shapes: the named kinds' objects — random (each its "
                                  "own palette colour, fixed per kind), by_shape (its shape's "
                                  "colour, as data.unnamed_color), or all in this palette colour",
                                  choices=UNNAMED_COLORS)
    train_size: int = knob(20000, "training images", **POSITIVE)
    val_size: int = knob(512, "validation images", **POSITIVE)
    num_workers: int = knob(0, "DataLoader worker processes", **NON_NEGATIVE)


@dataclass
class TokenizerConfig:
    """Stage-0 autoencoder shared by both token types; only the bottleneck differs. A
    ``pretrained_<token>`` diffusers model (name or path) replaces training for that token type."""

    downsample: int = knob(4, "pixels per token side: tokens per side = resolution / downsample", **POSITIVE)
    channels: int = knob(4, "channels of a continuous token (and of a VQ code vector)", **POSITIVE)
    codebook_size: int = knob(256, "VQ codebook entries", **POSITIVE)
    hidden: int = knob(128, "width of the patch transformer", **POSITIVE)
    layers: int = knob(2, "encoder and decoder depth", **POSITIVE)
    heads: int = knob(4, "attention heads", **POSITIVE)
    context: str = knob("image", "what a token is computed from: image (attention across the token grid, "
                        "with positions) or patch (its own patch alone, encoder and decoder)",
                        choices=TOKENIZER_CONTEXTS)
    kl_weight: float = knob(1.0e-6, "KL term weight (continuous)", **NON_NEGATIVE)
    commitment: float = knob(0.25, "VQ commitment loss weight", **NON_NEGATIVE)
    steps: int = knob(2000, "training steps", **POSITIVE)
    batch_size: int = knob(64, "images per step", **POSITIVE)
    lr: float = knob(2.0e-3, "AdamW learning rate", **POSITIVE)
    seed: int = knob(0, "initialisation and batch-order seed")
    pretrained_continuous: Optional[str] = knob(None, "diffusers AutoencoderKL name or path: no training")
    pretrained_discrete: Optional[str] = knob(None, "diffusers VQModel name or path: no training")
    posterior_sample: bool = knob(False, "continuous: cache the posterior's mean and std and train on "
                                  "a fresh draw mean + std * noise per image and step (MAR); "
                                  "false: train on the mean")


@dataclass
class TextConfig:
    """Text encoder + trainable aligner. ``encoder=learned`` is a word-level transformer over the
    caption vocabulary, trained jointly (``train_encoder``) or fixed at its seeded initialisation,
    like a frozen pretrained encoder; any other value is a Hugging Face model name or local path,
    used frozen (its features are cached in stage 0)."""

    encoder: str = knob("learned", "learned; minilm (the packaged all-MiniLM-L6-v2); or a Hugging Face model name/path (frozen, cached)")
    train_encoder: bool = knob(True, "learned encoder: train it, or keep its seeded initialisation")
    max_len: int = knob(16, "caption tokens", **POSITIVE)
    width: int = knob(128, "learned encoder and aligner width", **POSITIVE)
    encoder_layers: int = knob(2, "learned encoder depth", **NON_NEGATIVE)
    aligner_layers: int = knob(2, "aligner depth (transformer blocks on the encoder's features)",
                               **NON_NEGATIVE)
    heads: int = knob(4, "attention heads of encoder and aligner", **POSITIVE)
    dropout_prob: float = knob(0.1, "probability of training on the null caption (for CFG)", ge=0, lt=1)
    lr_scale: float = knob(1.0, "text path (encoder, aligner) lr over the generator's; 0 freezes it",
                           **NON_NEGATIVE)


@dataclass
class ModelConfig:
    """The generator: token type x order, a size from a ladder, and the heads."""

    token: str = knob("continuous", "discrete VQ codes (softmax head) or continuous KL latents "
                      "(diffusion head)", choices=TOKENS)
    order: str = knob("random", "raster: causal next token; random: MAR-style masked", choices=ORDERS)
    ladder: str = knob("cpu", "the size ladder (harness/registry.py)", choices=tuple(LADDERS))
    size: str = knob("s", "a size of the ladder")
    depth: Optional[int] = knob(None, "transformer blocks (None: from the ladder)", **POSITIVE)
    width: Optional[int] = knob(None, "model width (None: from the ladder)", **POSITIVE)
    heads: Optional[int] = knob(None, "attention heads (None: from the ladder)", **POSITIVE)
    mlp_ratio: float = knob(4.0, "MLP hidden width over model width", **POSITIVE)
    head_depth: int = knob(3, "diffusion head residual blocks", **POSITIVE)
    head_width: Optional[int] = knob(None, "diffusion head width (None: head_width_ratio x the model "
                                     "width)", **POSITIVE)
    head_width_ratio: float = knob(1.0, "diffusion head width over the model width, when head_width "
                                   "is None (a half-width head costs a quarter per noise draw)",
                                   **POSITIVE)
    diffusion_steps: int = knob(1000, "diffusion head training timesteps", **POSITIVE)
    diffusion_batch_mul: int = knob(4, "(t, noise) draws per token per step in the diffusion loss",
                                    **POSITIVE)
    learn_sigma: bool = knob(False, "diffusion head learns its variance (MAR/improved DDPM: eps and "
                             "an interpolation of log-variances, plus the variational-bound term)")
    diffusion_prediction: str = knob("eps", "what the diffusion head predicts: eps (MAR's) or v, "
                                     "the velocity (weights high-noise steps more)",
                                     choices=DIFFUSION_PREDICTIONS)
    mask_ratio_min: float = knob(0.7, "random order: lowest masking ratio of the truncated normal",
                                 gt=0, le=1)
    mask_ratio_std: float = knob(0.25, "random order: spread of the masking ratio", **NON_NEGATIVE)
    mask_ratio_uniform: float = knob(0.0, "random order: fraction of training batches whose ratio "
                                     "is drawn uniformly on (0, 1] instead (contexts where most "
                                     "tokens are known, as in the last sampling steps)", ge=0, le=1)
    mask_ratio_per_sample: bool = knob(False, "random order: a mask ratio per training sample, each "
                                       "sample's loss averaged over its own masked tokens (as "
                                       "validation does), instead of one per batch (MAR's)")
    final_norm: bool = knob(True, "LayerNorm on the transformer's output before the head (GPT's "
                            "ln_f, MAR's decoder_norm)")
    logits_init_std: float = knob(0.0, "discrete: init std of the logits layer (0: zeros, muP's "
                                  "readout; 0.02: GPT's)", **NON_NEGATIVE)


@dataclass
class TrainConfig:
    """Optimisation of the generator, and where and how often it logs, validates and checkpoints."""

    steps: int = knob(2000, "optimizer steps", **POSITIVE)
    batch_size: int = knob(64, "images per optimizer step over all devices, split into devices x "
                           "num_nodes x accumulate_grad_batches micro-batches", **POSITIVE)
    lr: float = knob(1.0e-3, "peak AdamW learning rate", **POSITIVE)
    lr_base_width: int = knob(0, "> 0: the run's lr is lr x lr_base_width / model.width (muP's "
                              "1/width rule for Adam; one lr tuned at that width serves the "
                              "ladder); 0: lr at every width", **NON_NEGATIVE)
    lr_width_rule: str = knob("all", "with lr_base_width, which parameters' lr scales: all, or mup "
                              "(only matrices whose fan-in grows with width, by base / fan-in; "
                              "embeddings, input projections, biases and norms keep train.lr)",
                              choices=LR_WIDTH_RULES)
    mup_scale_head: bool = knob(True, "lr_width_rule=mup: the diffusion head's own matrices scale "
                                "with its width as the model's do (muP), or keep train.lr at every "
                                "width (false; their fan-in from the model, the condition, still "
                                "scales)")
    warmup_steps: int = knob(100, "linear warm-up steps, then train.lr_schedule", **NON_NEGATIVE)
    lr_schedule: str = knob("cosine", "after warm-up: cosine decay to 0.1x lr at train.steps, or "
                            "constant (MAR)", choices=LR_SCHEDULES)
    weight_decay: float = knob(0.02, "AdamW weight decay", **NON_NEGATIVE)
    beta1: float = knob(0.9, "AdamW beta1", ge=0, lt=1)
    beta2: float = knob(0.95, "AdamW beta2", ge=0, lt=1)
    grad_clip: float = knob(3.0, "gradient norm clip (0: none)", **NON_NEGATIVE)
    ema_decay: float = knob(0.999, "EMA of the weights, used for validation and sampling", ge=0, lt=1)
    seed: int = knob(0, "initialisation, batch order and training randomness")
    precision: str = knob("32-true", "Lightning precision (bf16-mixed on GPUs)", choices=PRECISIONS)
    accelerator: str = knob("auto", "Lightning accelerator (cpu, gpu, auto)")
    devices: int = knob(1, "devices per node", **POSITIVE)
    num_nodes: int = knob(1, "nodes", **POSITIVE)
    strategy: str = knob("auto", "distributed strategy", choices=STRATEGIES)
    threads: int = knob(0, "torch CPU threads (0: torch's default)", **NON_NEGATIVE)
    accumulate_grad_batches: int = knob(1, "micro-batches per optimizer step", **POSITIVE)
    val_every: int = knob(500, "steps between validation losses", **POSITIVE)
    checkpoint_every: int = knob(200, "steps between checkpoints", **POSITIVE)
    log_every: int = knob(25, "steps between logged training losses", **POSITIVE)
    compile: bool = knob(False, "torch.compile the generator")


@dataclass
class SampleConfig:
    """Sampling; ``cfg``/``temperature`` left at -1 take the paper's per-variant defaults."""

    cfg: float = knob(-1.0, "classifier-free guidance scale, >= 1 (-1: the paper's for the variant)")
    temperature: float = knob(-1.0, "sampling temperature, > 0 (-1: the paper's for the variant)")
    steps: int = knob(16, "random order: parallel decoding steps", **POSITIVE)
    diffusion_steps: int = knob(50, "diffusion head: respaced reverse steps", **POSITIVE)
    top_k: int = knob(0, "discrete: sample from the k most likely codes (0: all)", **NON_NEGATIVE)


@dataclass
class ReferenceConfig:
    """The FID reference set, the real images (and their captions) generated images are compared
    with. ``data``: the first ``eval.fid_samples`` images of the training data's val split.
    ``coco``: zero-shot, as the paper's FID-30K: a draw of ``eval.fid_samples`` MS-COCO val images
    seeded by ``seed``, one caption each, from ``path`` (a folder holding
    ``annotations/captions_val2014.json`` and ``val2014/``), whatever the run trained on."""

    source: str = knob("data", "data: the val split; coco: a seeded MS-COCO draw", choices=REFERENCE_SOURCES)
    path: Optional[str] = knob(None, "coco: the COCO folder")
    seed: int = knob(0, "coco: the draw's seed")


@dataclass
class EvalConfig:
    """What ``python -m harness.evaluate`` generates and scores."""

    fid_samples: int = knob(1000, "images generated for FID (and reference images)", **POSITIVE)
    geneval_prompts_per_tag: int = knob(20, "GenEval prompts per tag", **POSITIVE)
    images_per_prompt: int = knob(4, "GenEval images per prompt", **POSITIVE)
    geneval_in_distribution: bool = knob(True, "GenEval again on prompts of combinations seen in training "
                                         "for counting, position and colour attribution (whose "
                                         "GenEval prompts are held out): geneval_in_dist_*")
    batch_size: int = knob(128, "sampling and feature batch", **POSITIVE)
    seed: int = knob(0, "the run's own evaluation seed (metrics.json)")
    inception_path: Optional[str] = knob(None, "a local Inception weights file (FID on non-shapes data)")
    reference: ReferenceConfig = field(default_factory=ReferenceConfig, metadata={"doc": "the FID reference set"})


@dataclass
class TrackingConfig:
    """Where the run is mirrored (MLflow); none of it changes the run's results or key."""

    uri: Optional[str] = knob(None, "MLflow tracking URI (None: MLFLOW_TRACKING_URI or results/mlflow.db)")
    experiment: str = knob("default", "MLflow experiment (a sweep's name)")
    parent_run_id: Optional[str] = knob(None, "the sweep's MLflow parent run")


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
    results_dir: str = knob("results", "where run directories, stage 0 and sweep tables live")


# Fields that do not change a run's results: excluded from its key.
_UNKEYED = ("tracking", "results_dir", "train.accelerator", "train.threads", "data.num_workers",
            "eval.batch_size")
# Fields added after runs existed: left out of the key while at these defaults, so the keys (and
# directories) of earlier runs still hold.
_KEYED_UNLESS_DEFAULT = {"eval.reference": asdict(ReferenceConfig()), "model.learn_sigma": False,
                         "model.diffusion_prediction": "eps", "model.mask_ratio_uniform": 0.0,
                         "model.mask_ratio_per_sample": False,
                         "model.head_width_ratio": 1.0, "train.mup_scale_head": True,
                         "tokenizer.posterior_sample": False, "train.lr_schedule": "cosine",
                         "train.lr_base_width": 0, "data.nuisance": "full",
                         "data.unnamed_color": "random", "data.held_out": "picture",
                         "train.lr_width_rule": "all", "tokenizer.context": "image",
                         "model.final_norm": True, "model.logits_init_std": 0.0,
                         "eval.geneval_in_distribution": True,
                         "data.named_scenes": 0, "data.named_scene_zipf": 1.5,
                         "data.named_scene_fraction": 0.5, "data.named_scene_color": "random"}


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


def read_yaml(path: str | Path, field: str = "config file") -> DictConfig:
    """A YAML file as a DictConfig; a missing or malformed file is a UserError (``field`` names
    where the path came from)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(field, f"{path} does not exist")
    try:
        return OmegaConf.load(path)
    except Exception as e:
        raise UserError(str(path), f"malformed YAML: {one_line(e)}") from None


def load(overrides: list[str] | None = None, files: list[str | Path] | None = None,
         base: dict | DictConfig | None = None) -> DictConfig:
    """Build a validated, resolved config from the schema, then ``base``, YAML files, a dotlist."""
    cfg = _schema()
    if base is not None:
        cfg = _merge(cfg, base, "base config")
    for f in files or []:
        cfg = _merge(cfg, read_yaml(f), str(f))
    for item in overrides or []:
        if "=" not in item:
            raise UserError(item, "override must look like key=value (e.g. model.token=discrete)")
        try:
            dot = OmegaConf.from_dotlist([item])
        except Exception as e:
            raise UserError(item.split("=")[0], f"malformed override: {e}") from None
        cfg = _merge(cfg, dot, "command line")
    return resolve(cfg)


def fields(schema: type = RunConfig, prefix: str = "") -> Iterator[tuple[str, Field]]:
    """Every leaf field of the schema as (dotted key, dataclass field), in schema order."""
    for f in dataclasses.fields(schema):
        key = prefix + f.name
        if f.default_factory is not MISSING and dataclasses.is_dataclass(f.default_factory):
            yield from fields(f.default_factory, key + ".")
        else:
            yield key, f


def _bounds(meta: dict) -> str:
    """``meta``'s bounds as text: "> 0", ">= 0", "in [0, 1)"."""
    low = f"[{meta['ge']}" if meta["ge"] is not None else f"({meta['gt']}" if meta["gt"] is not None else ""
    high = f"{meta['le']}]" if meta["le"] is not None else f"{meta['lt']})" if meta["lt"] is not None else ""
    if low and high:
        return f"in {low}, {high}"
    if low:
        return (">= " if low[0] == "[" else "> ") + low[1:]
    return ("<= " if high[-1] == "]" else "< ") + high[:-1]


def _check_field(key: str, value: Any, meta: dict) -> None:
    if value is None:
        return
    if meta.get("choices") is not None:
        check_choice(key, value, meta["choices"])
    m = {k: meta.get(k) for k in ("gt", "ge", "lt", "le")}
    ok = ((m["gt"] is None or value > m["gt"]) and (m["ge"] is None or value >= m["ge"])
          and (m["lt"] is None or value < m["lt"]) and (m["le"] is None or value <= m["le"]))
    if not ok:
        raise UserError(key, f"must be {_bounds(m)}, got {value}")


def _check_fields(cfg: DictConfig, group: str = "") -> None:
    """Every field's choices and bounds (from its ``knob`` metadata), in schema order."""
    for key, f in fields():
        if key.startswith(group) and f.metadata:
            _check_field(key, OmegaConf.select(cfg, key), f.metadata)


def describe_fields() -> str:
    """One line per field: key, default, bounds or choices, doc (``python -m harness.train --help``)."""
    lines = []
    for key, f in fields():
        meta = f.metadata
        default = "{...}" if f.default is MISSING else f.default
        rule = ""
        if meta.get("choices") is not None:
            rule = f" one of {', '.join(map(str, meta['choices']))};"
        elif any(meta.get(k) is not None for k in ("gt", "ge", "lt", "le")):
            rule = f" {_bounds(meta)};"
        lines.append(f"  {key} = {default}:{rule} {meta.get('doc', '')}")
    return "\n".join(lines)


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
    for part in ("", COCO_CAPTIONS, COCO_IMAGES):
        if not (Path(ref.path) / part).exists():
            raise UserError("eval.reference.path", f"{Path(ref.path) / part} does not exist "
                            f"(a COCO folder holds {COCO_CAPTIONS} and {COCO_IMAGES}/)")


def resolve(cfg: DictConfig) -> DictConfig:
    """Validate choices and ranges, then fill the derived fields (size ladder, sampling defaults)."""
    _check_fields(cfg)  # every field's own choices and bounds
    _check_data(cfg)
    _fill_model(cfg.model)
    _check_fields(cfg, "model.")  # the filled sizes
    _check_train(cfg)
    _check_divisible(cfg)
    _check_reference(cfg.eval.reference)
    _fill_sampling(cfg)
    return cfg


def _check_data(cfg: DictConfig) -> None:
    d = cfg.data
    if d.layout == "grid" and not 2 <= d.cells <= d.resolution // 6:
        raise UserError("data.cells", f"must be in 2..{d.resolution // 6} at resolution "
                        f"{d.resolution}, got {d.cells}")
    if d.name != "shapes" and not d.path:
        raise UserError("data.path", f"dataset {d.name!r} needs a path")
    brace = d.name == "webdataset" and "{" in str(d.path)
    if d.path and not brace and not Path(d.path).exists():
        raise UserError("data.path", f"{d.path} does not exist")


def _fill_model(m: DictConfig) -> None:
    """Depth, width and heads from the size ladder unless set; the head's width from the model's."""
    spec = size_spec(m.ladder, m.size)
    m.depth = spec.depth if m.depth is None else m.depth
    m.width = spec.width if m.width is None else m.width
    m.heads = spec.heads if m.heads is None else m.heads
    m.head_width = scaled_head_width(m.width, m.head_width_ratio) if m.head_width is None else m.head_width


def scaled_head_width(width: int, ratio: float) -> int:
    """The diffusion head's width that ``model.head_width_ratio`` gives a model of ``width``."""
    return max(1, round(width * ratio))


def _check_train(cfg: DictConfig) -> None:
    t = cfg.train
    if not t.mup_scale_head and not (t.lr_base_width and t.lr_width_rule == "mup"):
        raise UserError("train.mup_scale_head", "false needs the mup width rule (train.lr_base_width "
                        f"> 0, train.lr_width_rule=mup), got lr_base_width={t.lr_base_width}, "
                        f"lr_width_rule={t.lr_width_rule}")
    if t.strategy == "fsdp" and t.accelerator not in ("gpu", "cuda"):
        raise UserError("train.accelerator", f"train.strategy=fsdp runs on GPUs only (Lightning's "
                        f"FSDPStrategy), got {t.accelerator!r}", ["gpu", "cuda"])
    split = t.devices * t.num_nodes * t.accumulate_grad_batches
    if t.batch_size % split:
        raise UserError("train.batch_size", f"{t.batch_size} images per step do not split into "
                        f"devices x num_nodes x accumulate_grad_batches = {split} equal micro-batches")


def _check_divisible(cfg: DictConfig) -> None:
    """Widths that split into heads; a resolution that splits into tokens."""
    for key, width, heads in (("model.heads", cfg.model.width, cfg.model.heads),
                              ("tokenizer.heads", cfg.tokenizer.hidden, cfg.tokenizer.heads),
                              ("text.heads", cfg.text.width, cfg.text.heads)):
        if width % heads:
            raise UserError(key, f"width {width} is not divisible by {heads} heads")
    if cfg.data.resolution % cfg.tokenizer.downsample:
        raise UserError("tokenizer.downsample", f"resolution {cfg.data.resolution} is not divisible "
                        f"by {cfg.tokenizer.downsample}")


def _fill_sampling(cfg: DictConfig) -> None:
    """CFG scale and temperature left at -1 take the paper's defaults for the variant."""
    s = cfg.sample
    cfg_scale, temperature = SAMPLING_DEFAULTS[(cfg.model.token, cfg.model.order)]
    s.cfg = cfg_scale if s.cfg < 0 else s.cfg
    s.temperature = temperature if s.temperature < 0 else s.temperature
    if s.cfg < 1.0:
        raise UserError("sample.cfg", f"must be >= 1 (1 = no guidance), got {s.cfg}")
    if s.temperature <= 0:
        raise UserError("sample.temperature", f"must be > 0, got {s.temperature}")


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
    for path in (*_UNKEYED, *_KEYED_UNLESS_DEFAULT):
        node = d
        *parents, leaf = path.split(".")
        for p in parents:
            node = node[p]
        if path in _UNKEYED or node.get(leaf) == _KEYED_UNLESS_DEFAULT[path]:
            node.pop(leaf, None)
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
