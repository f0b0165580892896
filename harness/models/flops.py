"""Size and cost of a run in two conventions: the paper's, for the scaling axes, and what executes.

Analytic FLOPs of a generator forward pass per image (one forward, multiply-adds counted as 2
FLOPs), with L image tokens, T text tokens, width W, depth D, MLP ratio r, head width Wh and depth Dh:

- each image block: linear layers 2·L·(4W² self-attn + 2W² cross q/out + 2rW² MLP)
  + cross-attn k/v over the text 2·T·2W² + attention scores and values 4·L·L·W (self)
  + 4·L·T·W (cross);
- the aligner: per layer 2·T·(4W² + 2rW²) + 4·T·T·W, plus its input projection 2·T·E·W;
- the token head per image token: discrete 2·W·V; continuous the MLP denoiser once,
  2·(Dh·5Wh² + 3Wh² + ...).

The paper's convention (``train_flops``, with ``params`` = generator + aligner as counted by
``harness.train.module.counted_parameters``): "training FLOPs = model GFLOPs x batch x steps x 3",
the model's forward counting the head once per token and the text aligner as trained — the
diffusion batch multiplier and sampling steps are not part of "model FLOPs".

What executes (``executed_flops``, with ``trainable_parameters``): 3 x forward of the transformer
for every image, of the text encoder (learned) and aligner when they train, 1 x forward when
frozen (``text.train_encoder=false``, ``text.lr_scale=0``), plus 3 x the token head for every token
that carries loss — all L in raster order, the mean masked fraction in random order — times the
diffusion batch multiplier for the continuous head (each loss token is noised
``diffusion_batch_mul`` times). ``make bench`` measures MFU against it.
"""
from __future__ import annotations

import math

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


def mean_mask_ratio(cfg: DictConfig) -> float:
    """Random order: the expected masked fraction, the mean of N(1, mask_ratio_std) truncated to
    [mask_ratio_min, 1] (0.867 at MAR's 0.7 and 0.25), mixed with weight mask_ratio_uniform with
    U(0, 1)'s 0.5."""
    m = cfg.model
    if m.mask_ratio_std == 0 or m.mask_ratio_min >= 1:
        truncated = 1.0
    else:
        a = (m.mask_ratio_min - 1.0) / m.mask_ratio_std
        pdf = math.exp(-a * a / 2) / math.sqrt(2 * math.pi)
        mass = 0.5 * math.erf(-a / math.sqrt(2))  # Phi(0) - Phi(a)
        truncated = 1.0 + m.mask_ratio_std * (pdf - 1 / math.sqrt(2 * math.pi)) / mass
    return (1 - m.mask_ratio_uniform) * truncated + m.mask_ratio_uniform * 0.5


def executed_step_flops(cfg: DictConfig, token_dim: int, codebook_size: int,
                        text_width: int | None = None) -> float:
    """FLOPs one optimizer step executes (forward and backward; module docstring)."""
    m, t = cfg.model, cfg.text
    L = num_tokens(cfg)
    head = head_flops_per_token(cfg, token_dim, codebook_size)
    aligner = aligner_flops(cfg, text_width)
    transformer = forward_flops(cfg, token_dim, codebook_size, text_width) - L * head - aligner
    encoder = text_encoder_flops(cfg) if t.encoder == "learned" else 0.0
    # a frozen text path runs forward only (1x), a trained one forward and backward (3x)
    text = (3 if t.lr_scale > 0 else 1) * aligner
    text += (3 if t.train_encoder and t.lr_scale > 0 else 1) * encoder
    loss_tokens = L * (1.0 if m.order == "raster" else mean_mask_ratio(cfg))
    mul = m.diffusion_batch_mul if m.token == "continuous" else 1
    return cfg.train.batch_size * (3 * transformer + text + 3 * head * loss_tokens * mul)


def executed_flops(cfg: DictConfig, token_dim: int, codebook_size: int,
                   text_width: int | None = None) -> float:
    """FLOPs the whole run executes: ``executed_step_flops`` x steps."""
    return executed_step_flops(cfg, token_dim, codebook_size, text_width) * cfg.train.steps


def trainable_parameters(nets) -> int:
    """Parameters the optimizer updates (``requires_grad``): the generator, the aligner unless
    ``text.lr_scale=0``, a learned text encoder that trains."""
    return sum(p.numel() for p in nets.parameters() if p.requires_grad)
