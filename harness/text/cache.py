"""Stage 0 for frozen text encoders: caption features computed once per dataset and cached.

``results/stage0/text-<hash>/{train,val}.pt`` hold ``text_feats`` (float16, N x T x D) and
``text_mask`` (N x T) for the captions of the pre-encoded token sets, in the same order.
"""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from harness import progress
from harness.config import config_hash
from harness.data.datasets import data_key, rendered
from harness.io import build_once, write_json


def text_cache_dir(cfg: DictConfig) -> Path:
    key = config_hash({"data": data_key(cfg.data), "encoder": cfg.text.encoder,
                       "max_len": cfg.text.max_len})
    return Path(cfg.results_dir) / "stage0" / f"text-{key}"


@torch.no_grad()
def encode_captions(encoder, captions: list[str], batch_size: int = 256) -> dict[str, torch.Tensor]:
    feats, masks = [], []
    for i in range(0, len(captions), batch_size):
        f, m = encoder.encode(captions[i: i + batch_size])
        feats.append(f.half().cpu())
        masks.append(m.cpu())
    return {"text_feats": torch.cat(feats), "text_mask": torch.cat(masks)}


def caption_features(text: DictConfig, captions: list[str]) -> dict[str, torch.Tensor] | None:
    """``captions`` under the run's frozen encoder (``text.encoder``), uncached: for caption sets
    built at evaluation. None for a learned text path, which reads the captions' tokens."""
    if text.encoder == "learned":
        return None
    from harness.text.encoders import frozen_encoder

    return encode_captions(frozen_encoder(text.encoder, text.max_len), captions)


def ensure_text_features(cfg: DictConfig) -> dict[str, dict[str, torch.Tensor]]:
    """Features of every train/val caption under the frozen encoder ``cfg.text.encoder``."""
    def build(tmp: Path) -> None:
        from harness.text.encoders import HFTextEncoder

        encoder = HFTextEncoder(cfg.text.encoder, cfg.text.max_len)
        report = progress.Reporter(progress.beside(text_cache_dir(cfg)), "caption splits", 2)
        for i, split in enumerate(("train", "val")):
            report.update(i, force=True)
            _, captions = rendered(cfg.data, split, cfg.results_dir)
            torch.save(encode_captions(encoder, captions), tmp / f"{split}.pt")
        report.update(2, force=True)
        write_json(tmp / "meta.json", {"encoder": cfg.text.encoder, "width": encoder.width,
                                       "max_len": cfg.text.max_len})

    final = build_once(text_cache_dir(cfg), build)
    return {split: torch.load(final / f"{split}.pt", weights_only=True) for split in ("train", "val")}
