"""Train a tiny ``GeneratorModule`` for a few steps through Lightning on fixed synthetic tokens and
record what every training step drew (not a test itself; used by the tests of this folder).

Every micro-batch of every rank is the same batch on the same weights, so whatever differs between
their records (caption dropout, masks, diffusion timesteps and noised tokens) comes from the step's
randomness alone. As a script, ``python tests/train/tiny_fit.py OUT <overrides>`` trains on
``train.devices`` CPU processes (DDP over gloo) and saves each rank's records to ``OUT/rank<r>.pt``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig

from harness import config
from harness.data.shapes import vocabulary
from harness.train.module import GeneratorModule

TINY = ["data.resolution=16", "model.size=xs", "model.diffusion_steps=100", "text.width=32",
        "text.heads=2", "text.encoder_layers=1", "text.aligner_layers=1", "train.batch_size=8",
        "train.warmup_steps=2", "train.lr=3e-3", "train.steps=4", "train.accelerator=cpu"]
CAPTIONS = ["a photo of a red circle", "a photo of two blue squares", "a photo of a green triangle",
            "a photo of a yellow circle left of a red square"]


def tiny_config(*overrides: str) -> DictConfig:
    return config.load([*TINY, *overrides])


def batch(cfg: DictConfig, size: int) -> dict:
    """``size`` seeded token rows (latents or codes) with captions."""
    g = torch.Generator().manual_seed(1)
    n = config.num_tokens(cfg)
    if cfg.model.token == "continuous":
        tokens = torch.randn(size, n, cfg.tokenizer.channels, generator=g)
    else:
        tokens = torch.randint(0, 16, (size, n), generator=g)
    return {"tokens": tokens, "caption": [CAPTIONS[i % len(CAPTIONS)] for i in range(size)]}


def module(cfg: DictConfig) -> GeneratorModule:
    L.seed_everything(cfg.train.seed, verbose=False)
    return GeneratorModule(cfg, cfg.tokenizer.channels, 16, vocabulary())


def record(mod: GeneratorModule, draws: bool = True) -> list[dict]:
    """Per training step: rank, step, batch index, loss and, with ``draws``, caption dropout, masks
    (random order), diffusion timesteps and noised tokens (continuous)."""
    records: list[dict] = []
    step = mod.training_step

    def training_step(batch, batch_idx):
        records.append({"rank": mod.global_rank, "step": mod.global_step, "batch_idx": batch_idx})
        loss = step(batch, batch_idx)
        records[-1]["loss"] = loss.item()
        return loss

    mod.training_step = training_step
    if not draws:  # (hooks on a compiled module would be compiled into it)
        return records
    gen = mod.nets["generator"]
    mask = gen.random_mask

    def random_mask(*args, **kwargs):
        records[-1]["mask"] = mask(*args, **kwargs)
        return records[-1]["mask"]

    gen.random_mask = random_mask
    mod.nets["aligner"].register_forward_pre_hook(
        lambda _, args: records[-1].update(drop=args[2].clone()))
    if mod.cfg.model.token == "continuous":
        gen.diffloss.net.register_forward_pre_hook(
            lambda _, args: records[-1].update(x_t=args[0].detach().clone(), t=args[1].clone()))
    return records


def fit(cfg: DictConfig, mod: GeneratorModule | None = None, draws: bool = True) -> list[dict]:
    """Train ``mod`` (default: the config's module) on one fixed batch per micro-batch and rank, as
    ``harness.train.run.train`` configures the trainer; the records of this process (``record``)."""
    from harness.train.run import lightning_strategy

    t = cfg.train
    mod = mod or module(cfg)
    records = record(mod, draws)
    micro = batch(cfg, t.batch_size // (t.devices * t.accumulate_grad_batches))
    loader = torch.utils.data.DataLoader([micro] * (t.steps * t.accumulate_grad_batches), batch_size=None)
    trainer = L.Trainer(max_steps=t.steps, accelerator="cpu", devices=t.devices,
                        strategy=lightning_strategy(cfg), accumulate_grad_batches=t.accumulate_grad_batches,
                        precision=t.precision, gradient_clip_val=t.grad_clip or None, logger=False,
                        limit_val_batches=0, enable_checkpointing=False, enable_model_summary=False,
                        enable_progress_bar=False, use_distributed_sampler=False)
    trainer.fit(mod, train_dataloaders=loader)
    return records


if __name__ == "__main__":
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    records = fit(tiny_config(*sys.argv[2:]))
    torch.save(records, out / f"rank{records[0]['rank']}.pt")
