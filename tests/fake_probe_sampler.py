"""A stand-in for the ``Sampler`` surface the grid-world probes use (``harness.evaluate.occupancy``,
``harness.evaluate.binding``): tokens are the 8x8 patches (the study's one token per cell), the
aligner passes features through, and each test's fake generator decides what z and the draws are."""
from __future__ import annotations

import torch
from omegaconf import OmegaConf

from harness.tokenizers.autoencoder import patchify

DATA = OmegaConf.create({"layout": "grid", "cells": 4, "nuisance": "none", "unnamed_color": "random",
                         "resolution": 32})


class Patches:
    def encode(self, pixels):
        return patchify(pixels, 8)


class Aligner:
    """Features pass through; the null caption's are zeros of ``shape``."""

    def __init__(self, shape: tuple[int, ...] = ()):
        self.shape = shape

    def null_features(self, n):
        return torch.zeros(n, *self.shape), None

    def __call__(self, feats, mask):
        return feats, mask


class FakeSampler:
    """The context of a caption is ``features[caption]`` (a tensor, stacked over the batch)."""

    device = torch.device("cpu")
    cfg = OmegaConf.create({"data": DATA, "sample": {"temperature": 1.0, "top_k": 0, "diffusion_steps": 1}})
    tokenizer = Patches()

    def __init__(self, generator, features: dict[str, torch.Tensor], null_shape: tuple[int, ...] = ()):
        self.nets = {"generator": generator, "aligner": Aligner(null_shape)}
        self.features = features

    def context(self, captions):
        return torch.stack([self.features[c] for c in captions]), None
