"""The shapes world written as image-caption WebDataset tars: the source data of the token-shard
tests (``<key>.png`` + ``<key>.txt`` per sample, ``train/`` and ``val/`` shard folders)."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

from PIL import Image

from harness.data.shapes import ShapesWorld


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def write_shapes_shards(root: Path, train_shards: int = 8, val_shards: int = 2, per_shard: int = 12,
                        resolution: int = 32, seed: int = 0) -> Path:
    """``root/{train,val}/NNNNNN.tar``: ``per_shard`` shapes scenes each (keys unique over both)."""
    for split, shards in (("train", train_shards), ("val", val_shards)):
        world = ShapesWorld(split, shards * per_shard, resolution=resolution, seed=seed)
        (root / split).mkdir(parents=True, exist_ok=True)
        for s in range(shards):
            with tarfile.open(root / split / f"{s:06d}.tar", "w") as tf:
                for i in range(s * per_shard, (s + 1) * per_shard):
                    buf = io.BytesIO()
                    Image.fromarray(world.image(i)).save(buf, format="PNG")
                    key = f"{split}{i:05d}"
                    _add(tf, f"{key}.png", buf.getvalue())
                    _add(tf, f"{key}.txt", world.caption(i).encode())
    return root


# The tiny settings of the token-shard tests (tests/conftest.py's smoke settings, 4x4 tokens of 4
# channels at 32x32 from a 30-step tokenizer).
TINY = ["data.train_size=1000", "data.val_size=1000", "tokenizer.steps=30", "tokenizer.hidden=32",
        "tokenizer.heads=2", "train.steps=20", "train.batch_size=16", "train.val_every=10",
        "train.checkpoint_every=10", "train.log_every=5", "train.warmup_steps=5",
        "model.diffusion_steps=100", "model.size=xs", "text.width=32", "text.heads=2",
        "text.encoder_layers=1", "text.aligner_layers=1", "train.accelerator=cpu", "train.threads=1"]


def encode_config(source: Path, results: Path, *extra: str):
    """The config that encodes ``source`` (and trains on it in memory: the same stage-0 tokenizer)."""
    from harness import config

    return config.load(TINY + ["data.name=webdataset", f"data.path={source}", f"results_dir={results}",
                               *extra])
