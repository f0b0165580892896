"""Real image-caption data: a folder with captions.jsonl, WebDataset tar shards, MS-COCO captions.

All three become one ``ImageCaptionDataset``: ``len``, ``image(i)`` (uint8 HxWx3, shorter side
resized to ``data.resolution`` with Pillow's antialiased bicubic, then centre-cropped) and
``caption(i)``. A split is a list of candidate samples in a seeded order (``data.seed``); the
dataset keeps the first ``size`` that decode. Samples that are unreadable (missing or truncated
image, corrupt member, no caption, malformed JSONL line) are skipped and counted, and the count is
logged once per split: a bad sample never stops a run. Because the order is seeded first and
capped second, a smaller ``train_size`` is a prefix of a larger one.

Layouts (``data.path``):

``folder``      ``captions.jsonl`` (``{"file": "...", "caption": "..."}`` a line, file relative to
                the JSONL's folder; a file may appear on several lines, one sample each), split
                98/2 by a hash of the file name so an image never lands in both splits; or
                ``train/captions.jsonl`` + ``val/captions.jsonl`` when both exist.
``webdataset``  uncompressed ``*.tar`` shards (a directory of them, one file, or a brace pattern
                ``shards/{00000..00099}.tar``) whose samples are members sharing a key
                (``<key>.jpg|jpeg|png|webp`` + ``<key>.txt``), split 98/2 by a hash of the key,
                or ``train/`` and ``val/`` shard folders when both exist. Shards are indexed once
                per process (member offsets, captions read on the way), so access is random and
                ``rendered`` can cache a split like any other dataset.
``coco``        ``annotations/captions_val2014.json`` + ``val2014/``: evaluation only (the paper's
                zero-shot FID-30K). The ``val`` split is a seeded draw of ``size`` images in a
                seeded order, one of each image's captions picked by ``(seed, image id)``.
"""
from __future__ import annotations

import glob
import hashlib
import io
import json
import logging
import tarfile
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image

from harness.data.datasets import words
from harness.errors import UserError, one_line
from harness.registry import COCO_CAPTIONS, COCO_IMAGES

log = logging.getLogger(__name__)

SPLITS = ("train", "val")
VAL_PERCENT = 2  # hash split: this many percent of names go to val
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
VOCABULARY_SIZE = 20_000


@dataclass(frozen=True)
class Entry:
    """One candidate sample: ``length`` bytes at ``offset`` of ``path`` (-1: the whole file)."""

    name: str
    caption: str
    path: str
    offset: int = 0
    length: int = -1

    def read(self) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            return f.read(self.length)


def load_image(raw: bytes, resolution: int) -> np.ndarray:
    """Encoded image bytes -> uint8 (resolution, resolution, 3): shorter side resized, centre crop.

    Raises on any undecodable or truncated image (Pillow refuses truncated files by default)."""
    with Image.open(io.BytesIO(raw)) as im:
        im.draft("RGB", (resolution, resolution))  # JPEG: decode at the smallest scale still >= size
        if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            im = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
        else:
            im = im.convert("RGB")
    w, h = im.size
    scale = resolution / min(w, h)
    nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    im = im.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - resolution) // 2, (nh - resolution) // 2
    return np.asarray(im.crop((left, top, left + resolution, top + resolution)), dtype=np.uint8)


class ImageCaptionDataset(torch.utils.data.Dataset):
    """The first ``size`` decodable candidates, in the given order; ``skipped`` counts the rest
    that were tried (plus ``invalid``: candidates already rejected while indexing)."""

    def __init__(self, candidates: list[Entry], size: int, resolution: int, label: str,
                 invalid: list[tuple[str, str]] = ()):
        self.resolution = resolution
        self.entries: list[Entry] = []
        bad = list(invalid)
        for entry in candidates:
            if len(self.entries) >= size:
                break
            try:
                load_image(entry.read(), resolution)
            except Exception as e:  # any decode failure makes the sample bad, whatever its kind
                bad.append((entry.name, one_line(e, typed=True, limit=120)))
                continue
            self.entries.append(entry)
        self.skipped = len(bad)
        if bad:
            log.warning("%s: skipped %d unreadable or incomplete samples (first: %s, %s)",
                        label, len(bad), *bad[0])
        if not self.entries:
            raise UserError("data.path", f"{label}: no readable samples")
        if len(self.entries) < size:
            log.info("%s: %d samples (fewer than the %d asked for)", label, len(self.entries), size)

    def __len__(self) -> int:
        return len(self.entries)

    def image(self, i: int) -> np.ndarray:
        return load_image(self.entries[i].read(), self.resolution)

    def caption(self, i: int) -> str:
        return self.entries[i].caption

    def __getitem__(self, i: int) -> dict:
        pixels = self.image(i).transpose(2, 0, 1).astype(np.float32) / 127.5 - 1.0
        return {"image": torch.from_numpy(pixels), "caption": self.caption(i), "index": i}


def is_val(name: str) -> bool:
    """The hash split: a stable ~VAL_PERCENT% of names belong to val."""
    return int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) % 100 < VAL_PERCENT


def _seeded(entries: list, seed: int) -> list:
    order = np.random.default_rng(seed).permutation(len(entries))
    return [entries[i] for i in order]


def _split_sources(root: Path, marker: str, split: str) -> tuple[Path | None, bool]:
    """(where the split's data lives, whether to hash-split it): ``root/<split>`` when both
    ``root/train/<marker>`` and ``root/val/<marker>`` exist, else ``root`` (hash split)."""
    if all(glob.glob(str(root / s / marker)) for s in SPLITS):
        return root / split, False
    return root, True


# ---- folder + captions.jsonl ----

def _read_jsonl(folder: Path) -> tuple[list[Entry], list[tuple[str, str]]]:
    path = folder / "captions.jsonl"
    if not path.is_file():
        raise UserError("data.path", f"{folder} has no captions.jsonl (expected captions.jsonl, or "
                        "train/captions.jsonl and val/captions.jsonl)")
    entries, bad = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            name, caption = str(row["file"]), str(row["caption"])
        except (ValueError, KeyError, TypeError) as e:
            bad.append((f"captions.jsonl line {n}", type(e).__name__))
            continue
        entries.append(Entry(name, caption, str(folder / name)))
    return entries, bad


def _folder(data: DictConfig, split: str) -> tuple[list[Entry], list[tuple[str, str]]]:
    folder, hashed = _split_sources(Path(data.path), "captions.jsonl", split)
    entries, bad = _read_jsonl(folder)
    if hashed:
        entries = [e for e in entries if is_val(e.name) == (split == "val")]
    return _seeded(entries, data.seed), bad


# ---- WebDataset shards ----

def shard_paths(path: str) -> list[str]:
    """A directory (its ``*.tar``), one ``.tar`` file, or a brace pattern -> shard files."""
    if Path(path).is_dir():
        shards = sorted(glob.glob(str(Path(path) / "*.tar")))
    elif "{" in path:
        from braceexpand import braceexpand

        shards = list(braceexpand(path))
    else:
        shards = [path]
    missing = [s for s in shards if not Path(s).is_file()]
    if not shards or missing:
        raise UserError("data.path", f"no WebDataset shards at {path}"
                        + (f" (missing: {missing[0]})" if missing else " (expected *.tar files)"))
    return shards


@lru_cache(maxsize=4096)
def index_shard(path: str, mtime: float, size: int) -> tuple[list[Entry], list[tuple[str, str]]]:
    """Samples of one tar shard (member offsets, caption text) and the incomplete or damaged ones.
    ``mtime``/``size`` key the in-process cache so a rewritten shard is indexed again."""
    members: dict[str, dict[str, tarfile.TarInfo]] = {}
    captions: dict[str, str] = {}
    bad: list[tuple[str, str]] = []
    try:
        with tarfile.open(path, mode="r:") as tf:
            while (m := tf.next()) is not None:
                if not m.isfile():
                    continue
                folder, _, base = m.name.rpartition("/")
                stem, dot, ext = base.partition(".")
                if not dot:
                    continue
                key = f"{folder}/{stem}" if folder else stem
                ext = ext.lower()
                members.setdefault(key, {})[ext] = m
                if ext == "txt":
                    captions[key] = tf.extractfile(m).read().decode("utf-8", "replace").strip()
    except (tarfile.TarError, EOFError, OSError) as e:  # a truncated shard keeps its readable head
        bad.append((path, one_line(e, typed=True, limit=120)))
    entries = []
    for key, by_ext in members.items():
        image = next((by_ext[x] for x in IMAGE_EXTS if x in by_ext), None)
        if image is None or key not in captions:
            bad.append((f"{path}:{key}", "no image" if image is None else "no caption"))
            continue
        entries.append(Entry(key, captions[key], path, image.offset_data, image.size))
    return entries, bad


def _webdataset(data: DictConfig, split: str) -> tuple[list[Entry], list[tuple[str, str]]]:
    source, hashed = _split_sources(Path(data.path), "*.tar", split)
    entries, bad = [], []
    for shard in shard_paths(str(source) if not hashed else data.path):
        stat = Path(shard).stat()
        shard_entries, shard_bad = index_shard(str(Path(shard).resolve()), stat.st_mtime, stat.st_size)
        entries += shard_entries
        bad += shard_bad
    if hashed:
        entries = [e for e in entries if is_val(e.name) == (split == "val")]
    return _seeded(entries, data.seed), bad


# ---- MS-COCO captions (evaluation only) ----

def _coco(data: DictConfig, split: str) -> tuple[list[Entry], list[tuple[str, str]]]:
    if split != "val":
        raise UserError("data.name", f"coco is evaluation-only (zero-shot FID-30K) and has no "
                        f"{split!r} split; train on folder or webdataset data", ["val"])
    root = Path(data.path)
    ann = root / COCO_CAPTIONS
    if not ann.is_file():
        raise UserError("data.path", f"{root} has no {COCO_CAPTIONS}")
    try:
        blob = json.loads(ann.read_text(encoding="utf-8"))
        files = {int(im["id"]): im["file_name"] for im in blob["images"]}
        captions: dict[int, list[str]] = {}
        for a in blob["annotations"]:
            captions.setdefault(int(a["image_id"]), []).append(str(a["caption"]).strip())
    except (ValueError, KeyError, TypeError) as e:
        raise UserError("data.path", f"{ann} is not a COCO captions file ({type(e).__name__}: {e})") from None
    ids = sorted(i for i in files if captions.get(i))
    entries = []
    for image_id in ids:
        caps = captions[image_id]
        pick = int(np.random.default_rng([data.seed, image_id]).integers(len(caps)))
        entries.append(Entry(files[image_id], caps[pick], str(root / COCO_IMAGES / files[image_id])))
    bad = [(files[i], "no caption") for i in files if not captions.get(i)]
    return _seeded(entries, data.seed), bad


_FORMATS = {"folder": _folder, "webdataset": _webdataset, "coco": _coco}


def candidates(data: DictConfig, split: str) -> tuple[list[Entry], list[tuple[str, str]]]:
    """Every sample of ``split`` in its seeded order, and those rejected while indexing."""
    if data.name not in _FORMATS:
        raise UserError("data.name", f"unknown real dataset {data.name!r}", list(_FORMATS))
    if split not in SPLITS:
        raise UserError("split", f"real datasets have no {split!r} split", SPLITS)
    if not data.path:
        raise UserError("data.path", f"dataset {data.name!r} needs a path")
    return _FORMATS[data.name](data, split)


def build(data: DictConfig, split: str, size: int) -> ImageCaptionDataset:
    """The first ``size`` readable samples of ``split`` (see the module docstring for layouts)."""
    entries, bad = candidates(data, split)
    return ImageCaptionDataset(entries, size, data.resolution, f"{data.name} {split} ({data.path})",
                               invalid=bad)


def vocabulary(data: DictConfig) -> list[str]:
    """Words of the first ``train_size`` training captions, most frequent first (ties
    alphabetical), at most VOCABULARY_SIZE. Images are not decoded: a caption whose image later
    proves unreadable still counts, which only adds a word or two."""
    entries, _ = candidates(data, "train")
    counts = Counter(w for e in entries[: data.train_size] for w in words(e.caption))
    return [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:VOCABULARY_SIZE]]
