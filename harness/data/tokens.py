"""Pre-encoded token datasets for generator training (stage-0 output), and their loaders.

Each item is ``{"tokens", "caption"}`` (plus cached ``text_feats``/``text_mask`` for a frozen
Hugging Face text encoder). The training order is a pure function of (seed, step): a resumed run
draws exactly the batches an uninterrupted run would have, without saving sampler state.

Continuous tokens cached with their posterior std (``tokenizer.posterior_sample``) are drawn
afresh for training, as MAR samples its VAE posterior every step: item ``i`` of step ``s`` is
mean + std * noise with the noise seeded by (seed, s, i), so a resumed run draws the same tokens
and a run on any number of devices too. Validation reads items by plain index: the mean.
"""
from __future__ import annotations

import hashlib
from typing import Iterator, NamedTuple

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class Draw(NamedTuple):
    """The key of one posterior draw: item ``index`` at sampler step ``step`` of seed ``seed``."""

    seed: int
    step: int
    index: int

    def generator(self) -> torch.Generator:
        """A generator seeded by a hash of the key (independent streams for nearby keys)."""
        digest = hashlib.blake2b(f"{self.seed}/{self.step}/{self.index}".encode(), digest_size=8)
        return torch.Generator().manual_seed(int.from_bytes(digest.digest(), "little") >> 1)


class TokenDataset(Dataset):
    """Items by index (``i``: the cached tokens) or, with ``std`` (continuous posterior stds
    shaped like ``tokens``), by ``Draw`` key: mean + std * noise seeded by the key."""

    def __init__(self, tokens: torch.Tensor, captions: list[str],
                 text: dict[str, torch.Tensor] | None = None, std: torch.Tensor | None = None):
        if std is not None and std.shape != tokens.shape:
            raise ValueError(f"posterior std {tuple(std.shape)} does not match tokens {tuple(tokens.shape)}")
        self.tokens, self.captions, self.text, self.std = tokens, captions, text or {}, std

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, key: int | Draw) -> dict:
        i = key.index if isinstance(key, Draw) else key
        if not self.tokens.is_floating_point():
            tokens = self.tokens[i].long()
        else:
            tokens = self.tokens[i].float()
            if isinstance(key, Draw) and self.std is not None:
                noise = torch.randn(tokens.shape, generator=key.generator())
                tokens = tokens + self.std[i].float() * noise
        item = {"tokens": tokens, "caption": self.captions[i]}
        for k, v in self.text.items():
            item[k] = v[i]
        return item


class StepBatchSampler(Sampler[list[int]]):
    """Batches for steps ``start .. steps-1``; batch s is a seeded draw (an epoch-wise shuffle
    when the data allow) depending only on (seed, s). Set ``start`` before iterating to resume.
    ``batch_size`` is global: under data parallelism each of ``world`` ranks takes every world-th
    item of it, so a run sees the same images whatever its number of devices. With ``draws`` it
    yields ``Draw`` keys (seed, step, index) instead of indices (posterior sampling)."""

    def __init__(self, n: int, batch_size: int, steps: int, seed: int, draws: bool = False):
        self.n, self.batch_size, self.steps, self.seed, self.draws = n, batch_size, steps, seed, draws
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

    def __iter__(self) -> Iterator[list[int] | list[Draw]]:
        for step in range(self.start, self.steps):
            batch = self.batch(step)
            yield [Draw(self.seed, step, i) for i in batch] if self.draws else batch


class TokenDataModule(L.LightningDataModule):
    """``batch_size`` images per optimizer step over all devices, drawn as ``accumulate``
    micro-batches (``steps`` counts micro-batches); validation batches hold ``batch_size`` images.
    A training set with posterior stds is read by ``Draw`` keys (a fresh draw per micro-batch)."""

    def __init__(self, train: TokenDataset, val: TokenDataset, batch_size: int, steps: int,
                 seed: int, num_workers: int = 0, accumulate: int = 1):
        super().__init__()
        self.train_set, self.val_set = train, val
        self.batch_size, self.num_workers = batch_size, num_workers
        self.sampler = StepBatchSampler(len(train), batch_size // accumulate, steps, seed,
                                        draws=train.std is not None)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_sampler=self.sampler, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False,
                          num_workers=self.num_workers)
