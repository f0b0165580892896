"""Pre-encoded token datasets for generator training (stage-0 output), and their loaders.

Each item is ``{"tokens", "caption"}`` (plus cached ``text_feats``/``text_mask`` for a frozen
Hugging Face text encoder). The training order is a pure function of (seed, step): a resumed run
draws exactly the batches an uninterrupted run would have, without saving sampler state.
"""
from __future__ import annotations

from typing import Iterator

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class TokenDataset(Dataset):
    def __init__(self, tokens: torch.Tensor, captions: list[str],
                 text: dict[str, torch.Tensor] | None = None):
        self.tokens, self.captions, self.text = tokens, captions, text or {}

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> dict:
        item = {"tokens": self.tokens[i].long() if not self.tokens.is_floating_point()
                else self.tokens[i].float(), "caption": self.captions[i]}
        for k, v in self.text.items():
            item[k] = v[i]
        return item


class StepBatchSampler(Sampler[list[int]]):
    """Batches for steps ``start .. steps-1``; batch s is a seeded draw (an epoch-wise shuffle
    when the data allow) depending only on (seed, s). Set ``start`` before iterating to resume.
    ``batch_size`` is global: under data parallelism each of ``world`` ranks takes every world-th
    item of it, so a run sees the same images whatever its number of devices."""

    def __init__(self, n: int, batch_size: int, steps: int, seed: int):
        self.n, self.batch_size, self.steps, self.seed = n, batch_size, steps, seed
        self.start, self.rank, self.world = 0, 0, 1

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def batch(self, step: int) -> list[int]:
        size = self.batch_size
        per_epoch = max(1, self.n // size)
        epoch, k = divmod(step, per_epoch)
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 7919 + epoch))
        if self.n >= size:
            batch = perm[k * size:(k + 1) * size]
        else:
            batch = perm.repeat(size // self.n + 1)[:size]
        return batch[self.rank::self.world].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.steps):
            yield self.batch(step)


class TokenDataModule(L.LightningDataModule):
    """``batch_size`` images per optimizer step over all devices, drawn as ``accumulate``
    micro-batches (``steps`` counts micro-batches); validation batches hold ``batch_size`` images."""

    def __init__(self, train: TokenDataset, val: TokenDataset, batch_size: int, steps: int,
                 seed: int, num_workers: int = 0, accumulate: int = 1):
        super().__init__()
        self.train_set, self.val_set = train, val
        self.batch_size, self.num_workers = batch_size, num_workers
        self.sampler = StepBatchSampler(len(train), batch_size // accumulate, steps, seed)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_sampler=self.sampler, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False,
                          num_workers=self.num_workers)
