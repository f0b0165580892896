"""The FID floor: what a perfect generator would score in a run's FID protocol (shapes world).

FID on n samples is not 0 for a model that draws exactly the data distribution: two independent
draws of n real images differ by sampling noise, and a generator draws through its tokenizer, so
its images are at best the tokenizer's reconstructions of true scenes. For each of ``draws``
independent draws of n fresh true scenes (the shapes world's ``test`` split, consecutive blocks of
n images; the reference set is the ``val`` split's first n) this measures the FID against the run's
reference set of
  the scenes themselves               fid_floor_real: the sampling-noise floor of FID at n
  the tokenizer's reconstructions     fid_floor: the floor of a generator drawing through this
                                      tokenizer; fid_floor_sd, its spread over the draws, is the
                                      scatter of FID a perfect model would show from the images
                                      it happened to draw
The draws are independent of the reference set's captions, while evaluation generates from them;
where a caption fixes its picture (``data.named_scenes``) a generator that knows the names scores
below ``fid_floor`` (calibration item 35). So the floor is also measured caption by caption:
  the tokenizer's reconstructions of     fid_floor_matched (± fid_floor_matched_sd): the floor of
  scenes redrawn for the reference's     a generator that follows every caption perfectly
  own captions (``shapes.redraw``)       (a named scene's picture is fixed, the rest redrawn)
Evaluation computes them once per tokenizer, feature space and reference set, caches them beside
the stage-0 tokenizer (``ensure_fid_floor``) and writes them into every run's ``metrics.json``: a
model's FID reads against the floors (not 0), and FID differences between models are only
resolved beyond ``fid_floor_sd``.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from harness.data.datasets import build_dataset
from harness.evaluate.fid import REFERENCE_SPLIT, FeatureSpace, Reference, fid_metrics, reference_source, write_pngs
from harness.geneval.ceiling import reconstruct
from harness.io import build_once, read_json, write_json

FLOOR_SPLIT = "test"  # never the reference's split: fresh scenes of the same world
DRAWS = 3


def fresh_scenes(data: DictConfig, n: int, draws: int) -> np.ndarray:
    """uint8 (draws, n, H, W, 3): the first ``draws * n`` images of the world's test split."""
    source = OmegaConf.create(OmegaConf.to_container(data, resolve=True))
    source.val_size = draws * n  # the test split is sized like val
    ds = build_dataset(source, FLOOR_SPLIT)
    images = np.stack([ds.image(i) for i in range(draws * n)])
    return images.reshape(draws, n, *images.shape[1:])


def caption_matched_scenes(data: DictConfig, n: int, draws: int) -> np.ndarray:
    """uint8 (draws, n, H, W, 3): for each of the reference set's n images (the ``val`` split's
    first n), ``draws`` other scenes for its caption (``ShapesWorld.redrawn``)."""
    reference = build_dataset(data, REFERENCE_SPLIT)
    return np.stack([np.stack([reference.redrawn(i, k) for i in range(n)]) for k in range(draws)])


def fid_floor(tokenizer, data: DictConfig, reference: Reference, space: FeatureSpace, work: Path,
              draws: int = DRAWS, batch_size: int = 128) -> dict:
    """FID against ``reference`` of ``draws`` draws each of fresh true scenes, of their
    reconstructions by ``tokenizer``, and of the reconstructions of scenes redrawn for the
    reference's captions; per draw and summarised (module docstring). ``work`` holds the PNGs
    while they are measured and is removed after."""
    def fids(name: str, batches) -> list[float]:
        values = []
        for k, images in enumerate(batches):
            write_pngs(images, work / f"draw{k}-{name}")
            values.append(fid_metrics(work / f"draw{k}-{name}", reference, space, batch_size)["fid"])
        return values

    def sd(values: list[float]) -> float:
        return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0

    scenes = fresh_scenes(data, reference.n, draws)
    real = fids("real", scenes)
    tokenized = fids("tokenized", (reconstruct(tokenizer, images) for images in scenes))
    matched = fids("matched", (reconstruct(tokenizer, images)
                               for images in caption_matched_scenes(data, reference.n, draws)))
    shutil.rmtree(work, ignore_errors=True)
    return {"fid_floor": float(np.mean(tokenized)), "fid_floor_sd": sd(tokenized),
            "fid_floor_real": float(np.mean(real)), "fid_floor_matched": float(np.mean(matched)),
            "fid_floor_matched_sd": sd(matched), "draws": draws, "n": reference.n, "split": FLOOR_SPLIT,
            "fid_tokenized": tokenized, "fid_real": real, "fid_matched": matched}


def ensure_fid_floor(tokenizer_dir: str | Path, tokenizer, cfg: DictConfig, reference: Reference,
                     space: FeatureSpace) -> dict:
    """``fid_floor`` of the stage-0 tokenizer in ``tokenizer_dir`` for the run's reference set,
    computed once and cached beside the tokenizer
    (``<tokenizer dir>-fid-floors-<feature space>-<reference>/meta.json``; ``fid-floor-`` folders
    of older code lack the caption-matched floor and are not read)."""
    folder = Path(tokenizer_dir)
    final = folder.with_name(f"{folder.name}-fid-floors-{space.name}-{reference.directory.name}")
    data = reference_source(cfg, reference.n)

    def build(tmp: Path) -> None:
        write_json(tmp / "meta.json", fid_floor(tokenizer, data, reference, space, tmp / "images",
                                                batch_size=cfg.eval.batch_size))

    return read_json(build_once(final, build) / "meta.json")
