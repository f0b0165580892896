"""The trainable text aligner between a text encoder and the image transformer (Fluid §3).

Projects encoder features to the generator's width and runs a few bidirectional transformer
blocks. Dropped captions (for classifier-free guidance) are replaced, before the aligner, by a
learned null sequence; the same null sequence is the unconditional branch at sampling time.

The output has no final LayerNorm. With one, the generator's loss does not depend on the scale of
the aligner's residual stream, so nothing bounds a caption-independent component that AdamW grows
from the generator's (at first caption-independent) gradient; within ~100 steps it dwarfs the
caption-specific part, which the norm then squeezes to nothing: every caption gave one context
(the collapse measured in docs/results/cpu-study/README.md). Without it, growing that component
changes the generator's keys and values, so the loss bounds it.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from harness.models.transformer import Block, init_weights, padding_mask


class TextAligner(nn.Module):
    def __init__(self, in_width: int, width: int, layers: int, heads: int, max_len: int):
        super().__init__()
        self.proj = nn.Linear(in_width, width)
        self.null = nn.Parameter(torch.zeros(1, max_len, in_width))
        self.blocks = nn.ModuleList(Block(width, heads, cross=False) for _ in range(layers))
        init_weights(self)
        nn.init.normal_(self.null, std=0.02)

    def null_features(self, batch: int) -> tuple[Tensor, Tensor]:
        """The unconditional caption: features and an all-true mask."""
        feats = self.null.expand(batch, -1, -1)
        return feats, torch.ones(feats.shape[:2], dtype=torch.bool, device=feats.device)

    def forward(self, feats: Tensor, mask: Tensor, drop: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """feats (B,T,in), mask (B,T) -> context (B,T,width), mask. ``drop`` (B,) bool swaps in null."""
        if drop is not None and drop.any():
            null, null_mask = self.null_features(feats.shape[0])
            t = feats.shape[1]
            feats = torch.where(drop[:, None, None], null[:, :t].to(feats.dtype), feats)
            mask = torch.where(drop[:, None], null_mask[:, :t], mask)
        x = self.proj(feats)
        attn = padding_mask(mask)
        for block in self.blocks:
            x = block(x, self_mask=attn)
        return x, mask


def context_spread(context: Tensor, mask: Tensor) -> Tensor:
    """How much the text context varies between captions: the standard deviation across captions
    (per position and channel, over real words) over the overall one. ~0.5 for distinct captions
    at initialisation; ~0 when the text path has collapsed to one context for every caption."""
    words = mask.float()[..., None]
    n = words.sum(0)
    mean = (context * words).sum(0) / n.clamp(min=1)
    var = ((context - mean) ** 2 * words).sum(0) / n.clamp(min=1)  # (positions, channels)
    read = n[:, 0] > 1  # positions that hold a word in at least two captions
    across = var[read].mean().sqrt()
    overall = context[mask.bool()].std()
    return across / overall
