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
Evaluation computes it once per tokenizer, feature space and reference set, caches it beside the
stage-0 tokenizer (``ensure_fid_floor``) and writes it into every run's ``metrics.json``: a
model's FID reads against ``fid_floor`` (not 0), and FID differences between models are only
resolved beyond ``fid_floor_sd``.

The draws are independent of the reference set's captions, while evaluation generates from them.
Where a caption fixes its picture (``data.named_scenes``), a generator that knows the names can
score below this floor (calibration item 35): there it is the floor of an unconditional draw.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from harness.data.datasets import build_dataset
from harness.evaluate.fid import FeatureSpace, Reference, fid_metrics, reference_source, write_pngs
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


def fid_floor(tokenizer, data: DictConfig, reference: Reference, space: FeatureSpace, work: Path,
              draws: int = DRAWS, batch_size: int = 128) -> dict:
    """FID against ``reference`` of ``draws`` fresh draws of true scenes and of their
    reconstructions by ``tokenizer``; per draw and summarised (module docstring). ``work`` holds
    the PNGs while they are measured and is removed after."""
    scenes = fresh_scenes(data, reference.n, draws)
    real, tokenized = [], []
    for k, images in enumerate(scenes):
        for kind, pictures, into in (("real", images, real), ("tokenized", reconstruct(tokenizer, images), tokenized)):
            folder = work / f"draw{k}-{kind}"
            write_pngs(pictures, folder)
            into.append(fid_metrics(folder, reference, space, batch_size)["fid"])
    shutil.rmtree(work, ignore_errors=True)
    return {"fid_floor": float(np.mean(tokenized)), "fid_floor_sd": float(np.std(tokenized, ddof=1)) if draws > 1 else 0.0,
            "fid_floor_real": float(np.mean(real)), "draws": draws, "n": reference.n, "split": FLOOR_SPLIT,
            "fid_tokenized": tokenized, "fid_real": real}


def ensure_fid_floor(tokenizer_dir: str | Path, tokenizer, cfg: DictConfig, reference: Reference,
                     space: FeatureSpace) -> dict:
    """``fid_floor`` of the stage-0 tokenizer in ``tokenizer_dir`` for the run's reference set,
    computed once and cached beside the tokenizer
    (``<tokenizer dir>-fid-floor-<feature space>-<reference>/meta.json``)."""
    folder = Path(tokenizer_dir)
    final = folder.with_name(f"{folder.name}-fid-floor-{space.name}-{reference.directory.name}")
    data = reference_source(cfg, reference.n)

    def build(tmp: Path) -> None:
        write_json(tmp / "meta.json", fid_floor(tokenizer, data, reference, space, tmp / "images",
                                                batch_size=cfg.eval.batch_size))

    return read_json(build_once(final, build) / "meta.json")
