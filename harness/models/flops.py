"""Analytic FLOPs of a generator forward pass, for the scaling plots and MFU.

Per image (one forward, multiply-adds counted as 2 FLOPs), with L image tokens, T text tokens,
width W, depth D, MLP ratio r, head width Wh and depth Dh:

- each image block: linear layers 2·L·(4W² self-attn + 2W² cross q/out + 2rW² MLP)
  + cross-attn k/v over the text 2·T·2W² + attention scores and values 4·L·L·W (self)
  + 4·L·T·W (cross);
- the aligner: per layer 2·T·(4W² + 2rW²) + 4·T·T·W, plus its input projection 2·T·E·W;
- the token head per image token: discrete 2·W·V; continuous the MLP denoiser once,
  2·(Dh·5Wh² + 3Wh² + ...) — the diffusion batch multiplier and sampling steps are not part of
  "model FLOPs", following the paper's "training FLOPs = model GFLOPs x batch x steps x 3".
"""
from __future__ import annotations

from omegaconf import DictConfig

from harness.config import num_tokens


def head_flops_per_token(cfg: DictConfig, token_dim: int, codebook_size: int) -> float:
    m = cfg.model
    if m.token == "discrete":
        return 2.0 * m.width * codebook_size
    wh = m.head_width
    per_block = 2 * wh * wh + 3 * wh * wh  # MLP + AdaLN
    out = wh * token_dim * (2 if m.learn_sigma else 1)  # eps (and the variance values)
    return 2.0 * (m.head_depth * per_block + 2 * wh * wh + token_dim * wh + m.width * wh
                  + 256 * wh + wh * wh + out)


def aligner_flops(cfg: DictConfig, text_width: int | None = None) -> float:
    """FLOPs of the text aligner over one caption."""
    m, t = cfg.model, cfg.text
    T, W, r, E = t.max_len, m.width, m.mlp_ratio, text_width or t.width
    return t.aligner_layers * (2 * T * (4 * W * W + 2 * r * W * W) + 4 * T * T * W) + 2 * T * E * W


def text_encoder_flops(cfg: DictConfig) -> float:
    """FLOPs of the learned word-level text encoder over one caption."""
    t = cfg.text
    return t.encoder_layers * 2 * t.max_len * (12 * t.width ** 2) + 4 * t.max_len ** 2 * t.width


def forward_flops(cfg: DictConfig, token_dim: int, codebook_size: int,
                  text_width: int | None = None) -> float:
    """FLOPs of one forward pass over one image (and its caption)."""
    m, t = cfg.model, cfg.text
    L, T, W, r = num_tokens(cfg), t.max_len, m.width, m.mlp_ratio
    block = (2 * L * (4 * W * W + 2 * W * W + 2 * r * W * W) + 2 * T * 2 * W * W
             + 4 * L * L * W + 4 * L * T * W)
    aligner = aligner_flops(cfg, text_width)
    embed = 2 * L * W * (token_dim if m.token == "continuous" else 0)
    return m.depth * block + aligner + embed + L * head_flops_per_token(cfg, token_dim, codebook_size)


def train_flops(cfg: DictConfig, token_dim: int, codebook_size: int,
                text_width: int | None = None) -> float:
    """3 x forward x images seen (the paper's convention)."""
    return 3.0 * forward_flops(cfg, token_dim, codebook_size, text_width) * cfg.train.batch_size * cfg.train.steps
