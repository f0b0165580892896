"""Stand-in tokenizers for tests of what a tokenizer's reconstructions score (GenEval ceiling, FID
floor): ``encode``/``decode`` of float images (N, 3, H, W) in [-1, 1], like the stage-0 ones."""
from __future__ import annotations

import torch


class Identity:
    """A tokenizer that loses nothing."""

    def encode(self, images):
        return images

    def decode(self, tokens):
        return tokens


class Blur(Identity):
    """Averages each 8x8 patch to one colour: shapes become squares of mixed colour."""

    def decode(self, tokens):
        return torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(tokens, 8), scale_factor=8)
