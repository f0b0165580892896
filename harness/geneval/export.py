"""Generate images for GenEval prompts in the official evaluator's layout, and score such a folder.

Layout (what github.com/djghosh13/geneval reads; every folder name is all digits):
    out_dir/00000/metadata.jsonl     the prompt's JSON object (read back with json.load)
    out_dir/00000/samples/0000.png   images_per_prompt samples
    out_dir/00000/grid.png           the samples side by side
    out_dir/scores.json              written by ``score``
Prompts are generated in fixed chunks of whole prompts (``batch_size // images_per_prompt`` per
sampler call, seed = ``seed`` + chunk number), so the images depend on (seed, batch_size) only, and
an interrupted export resumes by skipping chunks whose files are all present.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Protocol

import numpy as np

from harness.errors import UserError
from harness.geneval.prompts import read_jsonl
from harness.geneval.rules import score_folder, summarize
from harness.io import write_bytes, write_json, write_text


class Sampler(Protocol):
    def generate(self, prompts: list[str], seed: int) -> np.ndarray:
        """uint8 images (len(prompts), H, W, 3), one per prompt."""


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def grid(images: np.ndarray, pad: int = 2) -> np.ndarray:
    """Images (N, H, W, 3) side by side with ``pad`` black pixels between them."""
    n, h, w, _ = images.shape
    out = np.zeros((h, n * w + (n - 1) * pad, 3), np.uint8)
    for i, image in enumerate(images):
        out[:, i * (w + pad): i * (w + pad) + w] = image
    return out


def _prompt_dir(out_dir: Path, index: int) -> Path:
    return out_dir / f"{index:05d}"


def _complete(out_dir: Path, index: int, images_per_prompt: int) -> bool:
    d = _prompt_dir(out_dir, index)
    files = [d / "metadata.jsonl", d / "grid.png"] + [d / "samples" / f"{k:04d}.png" for k in range(images_per_prompt)]
    return all(f.exists() for f in files)


def export(
    metadata_path: str | os.PathLike,
    sampler: Sampler,
    out_dir: str | os.PathLike,
    images_per_prompt: int = 4,
    seed: int = 0,
    batch_size: int = 32,
) -> Path:
    """Write ``images_per_prompt`` samples for every prompt of a GenEval metadata file."""
    if images_per_prompt < 1:
        raise UserError("images_per_prompt", f"must be >= 1, got {images_per_prompt}")
    if batch_size < 1:
        raise UserError("batch_size", f"must be >= 1, got {batch_size}")
    prompts = read_jsonl(metadata_path)
    out_dir = Path(out_dir)
    per_call = max(1, batch_size // images_per_prompt)
    for chunk, start in enumerate(range(0, len(prompts), per_call)):
        indices = range(start, min(start + per_call, len(prompts)))
        if all(_complete(out_dir, i, images_per_prompt) for i in indices):
            continue
        texts = [prompts[i]["prompt"] for i in indices for _ in range(images_per_prompt)]
        images = np.asarray(sampler.generate(texts, seed=seed + chunk))
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] != len(texts) or images.shape[3] != 3:
            raise ValueError(
                f"sampler.generate must return uint8 (N={len(texts)}, H, W, 3), got {images.dtype} {images.shape}"
            )
        for j, i in enumerate(indices):
            d = _prompt_dir(out_dir, i)
            samples = images[j * images_per_prompt: (j + 1) * images_per_prompt]
            for k, image in enumerate(samples):
                write_bytes(d / "samples" / f"{k:04d}.png", _png(image))
            write_bytes(d / "grid.png", _png(grid(samples)))
            write_text(d / "metadata.jsonl", json.dumps(prompts[i]) + "\n")
    return out_dir


def score(folder: str | os.PathLike) -> dict[str, float]:
    """Score a GenEval-layout folder with the shapes detector; per-tag and "overall" accuracy.

    Also writes ``folder/scores.json``: {"summary": <the returned dict>, "n_images": N,
    "images": [per-image results with "correct" and "reason"]}.
    """
    results = score_folder(folder)
    summary = summarize(results)
    write_json(Path(folder) / "scores.json", {"summary": summary, "n_images": len(results), "images": results})
    return summary
