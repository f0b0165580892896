"""Transformer blocks shared by the image generator, the text encoder and the text aligner.

Pre-norm blocks: self-attention (causal for raster order, bidirectional for random order), optional
cross-attention to the text, and an MLP. Attention goes through ``scaled_dot_product_attention`` so
GPUs get flash/memory-efficient kernels. A ``KVCache`` per block makes raster sampling O(L).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class KVCache:
    """Keys and values of one block: self-attention grows a token at a time, cross-attention is
    computed once per sampling call. ``grows=False`` keeps only the cross-attention's (random
    order runs every token again at each step; the caption's keys and values stay the same)."""

    k: Tensor | None = None
    v: Tensor | None = None
    ck: Tensor | None = None
    cv: Tensor | None = None
    grows: bool = True


class Attention(nn.Module):
    def __init__(self, width: int, heads: int, kv_width: int | None = None):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(kv_width or width, 2 * width)
        self.proj = nn.Linear(width, width)

    def _split(self, x: Tensor) -> Tensor:
        b, t, w = x.shape
        return x.view(b, t, self.heads, w // self.heads).transpose(1, 2)

    def project_kv(self, source: Tensor) -> tuple[Tensor, Tensor]:
        k, v = self.kv(source).chunk(2, dim=-1)
        return self._split(k), self._split(v)

    def forward(self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None,
                causal: bool = False) -> Tensor:
        q = self._split(self.q(x))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        b, h, t, d = out.shape
        return self.proj(out.transpose(1, 2).reshape(b, t, h * d))


class Block(nn.Module):
    """Pre-norm block: self-attention, cross-attention to ``context`` (if ``cross``), MLP."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, cross: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.cross = cross
        if cross:
            self.norm2 = nn.LayerNorm(width)
            self.cross_attn = Attention(width, heads)
        self.norm3 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"),
                                 nn.Linear(hidden, width))

    def forward(self, x: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None,
                self_mask: Tensor | None = None, causal: bool = False,
                cache: KVCache | None = None) -> Tensor:
        """``context_mask``/``self_mask``: bool, True = may attend, broadcastable to (B,H,Tq,Tk).
        With ``cache``, ``x`` holds only the new tokens and attends to every cached one."""
        h = self.norm1(x)
        k, v = self.attn.project_kv(h)
        if cache is not None and cache.grows:
            if cache.k is not None:
                k = torch.cat([cache.k, k], dim=2)
                v = torch.cat([cache.v, v], dim=2)
            cache.k, cache.v = k, v
            causal = causal and x.shape[1] > 1
        x = x + self.attn(h, k, v, mask=self_mask, causal=causal)
        if self.cross:
            if cache is not None and cache.ck is not None:
                ck, cv = cache.ck, cache.cv
            else:
                ck, cv = self.cross_attn.project_kv(context)
                if cache is not None:
                    cache.ck, cache.cv = ck, cv
            x = x + self.cross_attn(self.norm2(x), ck, cv, mask=context_mask)
        return x + self.mlp(self.norm3(x))


def padding_mask(mask: Tensor | None) -> Tensor | None:
    """(B, T) bool keep-mask -> (B, 1, 1, T) attention mask for SDPA."""
    return None if mask is None else mask[:, None, None, :]


def init_weights(module: nn.Module) -> None:
    """GPT-style init: N(0, 0.02) linear/embedding weights, zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
