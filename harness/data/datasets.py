"""Image-caption datasets by name, and the rendered-image cache tokenizers train on.

Every dataset offers ``len``, ``image(i)`` (uint8 HxWx3 at the configured resolution) and
``caption(i)``. The shapes world is procedural; real datasets (folder+JSONL, WebDataset, COCO)
live in ``harness.data.real``. Add a dataset by adding a branch to ``build_dataset``.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from harness.config import config_hash
from harness.data.shapes import NamedScenes, ShapesWorld, vocabulary as shapes_vocabulary

SPLIT_SIZES = {"train": "train_size", "val": "val_size"}
WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    """The word-splitting rule of captions: the learned text encoder's tokens, and the words of
    the vocabularies built for it."""
    return WORD.findall(text.lower())


def build_dataset(data: DictConfig, split: str):
    """The dataset named by ``data.name`` for ``split`` (train | val | test | compositional)."""
    size = data.get(SPLIT_SIZES.get(split, "val_size"))
    if data.name == "shapes":
        return ShapesWorld(split, size, resolution=data.resolution, seed=data.seed,
                           layout=data.layout, cells=data.cells, nuisance=data.nuisance,
                           unnamed_color=data.unnamed_color, named=named_scenes(data),
                           held_out=data.held_out)
    from harness.data import real

    return real.build(data, split, size)


def named_scenes(data: DictConfig) -> NamedScenes:
    """The shapes world's long tail as configured (``data.named_scene*``)."""
    return NamedScenes(data.named_scenes, data.named_scene_zipf, data.named_scene_fraction,
                       data.named_scene_color)


def caption_vocabulary(data: DictConfig) -> list[str]:
    """Words the learned text encoder knows: the shapes grammar, or the training captions' words."""
    if data.name == "shapes":
        return shapes_vocabulary(data.named_scenes)
    if data.name == "tokens":  # recorded by the encoder from its source data
        from harness.data.token_shards import vocabulary

        return vocabulary(data.path)
    from harness.data import real

    return real.vocabulary(data)


def data_key(data: DictConfig) -> str:
    """Hash of the fields that determine the data's content."""
    key = {k: data[k] for k in ("name", "path", "resolution", "seed", "train_size", "val_size")}
    if data.name == "shapes" and data.layout != "free":  # free-layout keys stay as they were
        key.update(layout=data.layout, cells=data.cells)
    if data.name == "shapes" and data.nuisance != "full":  # keys of the "full" world stay
        key.update(nuisance=data.nuisance)
    if data.name == "shapes" and data.unnamed_color != "random":
        key.update(unnamed_color=data.unnamed_color)
    if data.name == "shapes" and data.held_out != "picture":
        key.update(held_out=data.held_out)
    if data.name == "shapes" and data.named_scenes:
        key.update(named_scenes=data.named_scenes, named_scene_zipf=data.named_scene_zipf,
                   named_scene_fraction=data.named_scene_fraction)
        if data.named_scene_color != "random":
            key.update(named_scene_color=data.named_scene_color)
    return config_hash(key)


def data_dir(data: DictConfig, root: str | Path) -> Path:
    """Where stage 0 keeps the world's rendered splits under the results dir ``root``; what is
    derived from the world alone is cached beside it (``<this>-<what>``)."""
    return Path(root) / "stage0" / f"data-{data_key(data)}"


def rendered(data: DictConfig, split: str, root: str | Path) -> tuple[torch.Tensor, list[str]]:
    """All images (uint8 N,H,W,3) and captions of a split, rendered once and cached on disk."""
    from harness.io import atomic_write

    path = data_dir(data, root) / f"{split}.pt"
    if path.exists():
        blob = torch.load(path, weights_only=True)
        return blob["images"], blob["captions"]
    ds = build_dataset(data, split)
    images = torch.from_numpy(np.stack([ds.image(i) for i in range(len(ds))]))
    captions = [ds.caption(i) for i in range(len(ds))]
    atomic_write(path, lambda f: torch.save({"images": images, "captions": captions}, f), mode="wb")
    return images, captions


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N,H,W,3) -> float (N,3,H,W) in [-1, 1]."""
    return images.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float (N,3,H,W) in [-1, 1] -> uint8 (N,H,W,3) numpy."""
    x = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()
