"""What a run will cost, known before it runs: parameters, training FLOPs, GPU memory, GPU-hours.

Parameters are counted on networks built on the meta device (no memory, no time), with the
tokenizer's configured ``channels`` and ``codebook_size`` standing in for the trained tokenizer's.
FLOPs follow ``harness.models.flops.train_flops`` (the paper's 3 x forward x images seen).

GPU memory per device (an estimate to choose resources by, not a guarantee):

    state       = 20 bytes x params / S   fp32 weights 4 + fp32 grads 4 + AdamW moments 8 + EMA 4;
                  S = world = devices x nodes under ``train.strategy=fsdp`` (parameters, gradients,
                  optimizer state and EMA all sharded), else S = 1 (DDP keeps a full copy)
    activations = depth x b x L x W x (34 + 5 x heads x L / W) bytes
                  + head_depth x b x L x diffusion_batch_mul x head_width x 20 bytes (continuous)
    total       = state + activations

with b the per-device micro-batch, ``train.batch_size`` / (devices x nodes x
accumulate_grad_batches) (``train.batch_size`` is the global batch of one optimizer step), L image
tokens, W width. The transformer term is the activation memory of a transformer layer in 16-bit
training without recomputation (Korthikanti et al. 2022, "Reducing Activation Recomputation",
eq. 1, with sequence L); the head term counts ~10 saved 16-bit tensors of width ``head_width`` per
block and diffusion copy. Not counted: FSDP's transient all-gathered 16-bit copy of the unit in
flight (one block, well under 1 GB at 10.5B), the CUDA context and allocator fragmentation, which
is why the ``paper`` preset keeps every size at or under ``PAPER_BUDGET_BYTES`` (72 GB, 90% of an
80 GB H100) by choosing ``accumulate_grad_batches`` per size. GPU-hours = train FLOPs /
(MFU x peak) / 3600 with an assumed MFU of 0.4 and the H100's dense bf16 peak of 989 TFLOP/s.
"""
from __future__ import annotations

from omegaconf import DictConfig

from harness.config import num_tokens

ASSUMED_MFU = 0.4
H100_BF16_PEAK_FLOPS = 989e12
STATE_BYTES_PER_PARAM = 20
GPU_BYTES = 80e9
PAPER_BUDGET_BYTES = 0.9 * GPU_BYTES


def size_of(cfg: DictConfig) -> tuple[int | None, float | None]:
    """(counted parameters, training FLOPs) of a run; ``None`` where it cannot be known offline
    (a Hugging Face text encoder whose config is not on disk)."""
    import torch

    from harness.data.datasets import caption_vocabulary
    from harness.models.flops import train_flops
    from harness.train.module import build_networks, counted_parameters

    token_dim, codebook = cfg.tokenizer.channels, cfg.tokenizer.codebook_size
    try:
        with torch.device("meta"):
            nets = build_networks(cfg, token_dim, codebook, caption_vocabulary(cfg.data))
        text_width = None if "text" in nets else nets["aligner"].proj.in_features
    except OSError:
        return None, None
    return counted_parameters(nets), train_flops(cfg, token_dim, codebook, text_width)


def gpu_memory_bytes(cfg: DictConfig, params: int) -> float:
    """Per-device training memory (formula in the module docstring)."""
    m, t = cfg.model, cfg.train
    world = max(1, t.devices * t.num_nodes)
    state = STATE_BYTES_PER_PARAM * params / (world if t.strategy == "fsdp" else 1)
    b, L, W = t.batch_size / (world * t.accumulate_grad_batches), num_tokens(cfg), m.width
    acts = m.depth * b * L * W * (34 + 5 * m.heads * L / W)
    if m.token == "continuous":
        acts += m.head_depth * b * L * m.diffusion_batch_mul * m.head_width * 20
    return state + acts


def gpu_hours(train_flops: float) -> float:
    """GPU-hours at the assumed MFU on H100s (module docstring)."""
    return train_flops / (ASSUMED_MFU * H100_BF16_PEAK_FLOPS) / 3600
