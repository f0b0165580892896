"""The GenEval ceiling of a tokenizer: the shapes GenEval score of its reconstructions of true scenes.

A generator cannot score higher than its tokenizer can draw. For every prompt evaluation uses (the
compositional split, ``make_prompts``), true scenes are rendered in the run's layout, encoded and
decoded, and scored by the same rules as generated images; per tag and overall. Evaluation
(shapes world) computes it once per tokenizer and evaluation size, caches it beside the stage-0
tokenizer (``ensure_geneval_ceiling``) and writes it into every run's ``metrics.json``
(``geneval_ceiling_*``); the results table and report show it beside the models' scores: a
model's GenEval reads against this number, not 1.0.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from harness.data.datasets import to_float, to_uint8
from harness.data.shapes import render, scene_from_metadata
from harness.geneval.prompts import make_prompts
from harness.geneval.rules import score_image, summarize
from harness.io import build_once, read_json, write_json


def true_scenes(data: DictConfig, n_per_tag: int, images_per_prompt: int, seed: int = 0
                ) -> tuple[np.ndarray, list[dict]]:
    """uint8 renders (N, H, W, 3) of ``images_per_prompt`` random scenes per GenEval prompt, and
    the prompt of each image."""
    prompts = make_prompts(n_per_tag, seed)
    rng = np.random.default_rng([seed, 7])
    images, metas = [], []
    for meta in prompts:
        for _ in range(images_per_prompt):
            scene = scene_from_metadata(meta, rng, layout=data.layout, cells=data.cells,
                                        nuisance=data.get("nuisance", "full"),
                                        unnamed_color=data.get("unnamed_color", "random"))
            images.append(render(scene, data.resolution))
            metas.append(meta)
    return np.stack(images), metas


@torch.no_grad()
def reconstruct(tokenizer, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """``tokenizer``'s reconstructions (decode of encode) of uint8 images (N, H, W, 3)."""
    out = [to_uint8(tokenizer.decode(tokenizer.encode(to_float(torch.from_numpy(images[i:i + batch])))))
           for i in range(0, len(images), batch)]
    return np.concatenate(out)


def geneval_ceiling(tokenizer, data: DictConfig, n_per_tag: int = 16, images_per_prompt: int = 4,
                    seed: int = 0, batch: int = 256) -> dict[str, float]:
    """Per-tag and overall shapes-GenEval accuracy of ``tokenizer``'s reconstructions (an object
    with ``encode``/``decode`` of float images in [-1, 1]) of true scenes; also of the true renders
    themselves (``true_overall``, 1.0 unless the world or the rules changed)."""
    images, metas = true_scenes(data, n_per_tag, images_per_prompt, seed)
    recon = reconstruct(tokenizer, images, batch)
    scored = [{"tag": m["tag"], "correct": score_image(img, m)} for img, m in zip(recon, metas)]
    truth = [{"tag": m["tag"], "correct": score_image(img, m)} for img, m in zip(images, metas)]
    return {**summarize(scored), "true_overall": summarize(truth)["overall"]}


def ensure_geneval_ceiling(tokenizer_dir: str | Path, tokenizer, data: DictConfig, n_per_tag: int,
                           images_per_prompt: int) -> dict[str, float]:
    """``geneval_ceiling`` of the stage-0 tokenizer in ``tokenizer_dir``, computed once and cached
    beside it (``<tokenizer dir>-geneval-<prompts>x<images>/meta.json``)."""
    folder = Path(tokenizer_dir)
    final = folder.with_name(f"{folder.name}-geneval-{n_per_tag}x{images_per_prompt}")

    def build(tmp: Path) -> None:
        write_json(tmp / "meta.json", geneval_ceiling(tokenizer, data, n_per_tag, images_per_prompt))

    return read_json(build_once(final, build) / "meta.json")
