"""Token shards: pre-encoded training data streamed shard by shard (``data.name=tokens``).

Stage 0 materialises every split in memory (``harness/data/tokens.py``), which stops at a few
hundred thousand images. At the paper's scale the images are encoded once, shard by shard
(``python -m harness.tokenizers.shards``), into WebDataset tars that training streams through the
``webdataset`` library's tar readers. This module owns the format and the reading side.

Layout of a token-shard directory (``data.path``)::

    meta.json              token kind, token_dim, codebook size, tokens per image, resolution,
                           posterior std present, text encoder and max_len (or "learned"), the
                           caption vocabulary, the source data config, the list of source shards
    tokenizer/             a stage-0 tokenizer directory (meta.json [+ model.pt]): decoding,
                           sampling and evaluation load the tokenizer that made the tokens
    train/<shard>.tar      one token shard per source shard and split, with the source's keys
    val/<shard>.tar        (a split may be absent when a source shard has no sample of it)
    done/<shard>.json      written last: samples per split, skipped samples; a shard without it
                           is unfinished (and is redone by the encoder)

A sample of a token shard (members sharing ``<key>``):

    <key>.tokens.npy   discrete: int32 (L,) codes; continuous: float32 (L, C) posterior means,
                       divided by the tokenizer's scale (what stage 0 caches)
    <key>.std.npy      continuous with ``tokenizer.posterior_sample``: float32 (L, C) posterior std
    <key>.txt          the caption (utf-8)
    <key>.text.npy     frozen text encoder only: float16 (T, D) features
    <key>.mask.npy     frozen text encoder only: bool (T,) keep-mask

Streaming order (``ShardStream``), a pure function of (``train.seed``, world size, workers):
every dataloader worker of every rank is one *slot*; in pass ``p`` the training shards are put in
an order seeded by (seed, p) and shard ``j`` of that order goes to slot ``j % slots``, so each
pass of every slot together covers every sample once; within a shard, samples are mixed by a
seeded shuffle buffer (``SHUFFLE_BUFFER`` samples, drained at the shard's end). There are no
epochs: passes follow each other until ``train.steps``. Each sample's position in its slot's
stream is counted with the shard sizes recorded in ``done/*.json``, so a run resumed after ``k``
micro-batches skips whole shards without reading them and replays only the one shard it stopped
in: the resumed stream is the uninterrupted one, sample for sample (posterior draws are seeded by
the position too) — as long as no sample was lost before the stop: the resume point is counted in
samples emitted, so samples missing from a damaged shard (or undecodable) before it are repeated
after the resume, at most a shard's worth per damaged shard. A run resumed with another world
size or worker count cannot keep that order; it restarts at the pass boundary the whole run had
reached and says so (a warning).

Validation reads a fixed subset: the first ``data.val_size`` samples of the val shards taken in
an order seeded by ``data.seed``, read in file order, held in memory — the same on every rank, in
every run and after every resume, and never the streaming order.

Shards that are truncated or corrupt keep their readable head; incomplete or undecodable samples
are skipped and counted (logged per shard, with the reader's running total), as
``harness/data/real.py`` does for image shards.
"""
from __future__ import annotations

import hashlib
import io
import logging
import random
import tarfile
from itertools import count
from pathlib import Path
from typing import Iterator

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info

from harness.data.tokens import Draw, TokenDataset
from harness.errors import UserError, one_line
from harness.io import read_json

log = logging.getLogger(__name__)

FORMAT = 1
SPLITS = ("train", "val")
META, TOKENIZER, DONE = "meta.json", "tokenizer", "done"
# Samples mixed within a shard by the streaming shuffle buffer. Its memory is this many samples per
# dataloader worker: at the paper's settings (256 tokens x 16 channels, float32, with std, and 64
# T5-XXL features at 4096 x float16) about 0.6 MB a sample, 300 MB a worker.
SHUFFLE_BUFFER = 512
# Members of a sample, by suffix.
TOKENS, STD, CAPTION, TEXT, MASK = "tokens.npy", "std.npy", "txt", "text.npy", "mask.npy"


# ---- the directory ----

def shard_name(i: int) -> str:
    return f"{i:06d}"


def read_meta(root: str | Path) -> dict:
    """The token-shard directory's ``meta.json``, or a UserError naming ``data.path``."""
    path = Path(root) / META
    if not path.is_file():
        raise UserError("data.path", f"{root} is not a token-shard directory (no {META}; write one "
                        "with python -m harness.tokenizers.shards)")
    meta = read_json(path)
    if meta.get("format") != FORMAT:
        raise UserError("data.path", f"{path}: token-shard format {meta.get('format')!r}, this "
                        f"harness reads format {FORMAT}")
    return meta


def finished_shards(root: str | Path, split: str) -> list[tuple[str, int]]:
    """(tar path, recorded sample count) of every finished shard of ``split`` with samples, by name.
    A shard the encoder has not finished is a UserError: training on part of a dataset silently
    would change what the run means."""
    root = Path(root)
    names = read_meta(root)["shards"]
    out, missing = [], []
    for name in names:
        done = root / DONE / f"{name}.json"
        if not done.is_file():
            missing.append(name)
            continue
        n = int(read_json(done)["samples"].get(split, 0))
        if n:
            out.append((str(root / split / f"{name}.tar"), n))
    if missing:
        raise UserError("data.path", f"{root}: {len(missing)} of {len(names)} shards are not encoded "
                        f"yet (first: {missing[0]}); run python -m harness.tokenizers.shards again")
    return out


# ---- reading one shard ----

class Skipped:
    """Samples and shards a reader skipped, logged as they happen with the running total."""

    def __init__(self, label: str):
        self.label, self.samples, self.shards = label, 0, 0

    def shard(self, path: str, error: Exception) -> None:
        self.shards += 1
        log.warning("%s: shard %s is damaged, its readable head kept (%s); %d shards damaged so far",
                    self.label, path, one_line(error, typed=True, limit=120), self.shards)

    def sample(self, where: str, why: str) -> None:
        self.samples += 1
        log.warning("%s: skipped sample %s (%s); %d samples skipped so far", self.label, where, why,
                    self.samples)


def raw_samples(path: str, skipped: Skipped) -> Iterator[dict]:
    """The samples of one token shard as ``{"__key__", "<suffix>": bytes}``, in file order, read
    sequentially by webdataset's tar iterator. A truncated or corrupt shard yields its readable
    head; samples missing tokens or caption are skipped and counted."""
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    try:
        with open(path, "rb") as f:
            files = (dict(member, __url__=path) for member in tar_file_iterator(f))
            for sample in group_by_keys(files):
                if TOKENS not in sample or CAPTION not in sample:
                    skipped.sample(f"{path}:{sample.get('__key__')}", "no tokens" if TOKENS not in sample
                                   else "no caption")
                    continue
                yield sample
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        skipped.shard(path, e)


def _array(raw: bytes) -> np.ndarray:
    return np.load(io.BytesIO(raw), allow_pickle=False)


def decode(sample: dict, std: bool = False, draw: Draw | None = None) -> dict:
    """A raw sample -> a training item ``{"tokens", "caption", "key"[, "text_feats", "text_mask"]}``
    (tokens long for codes, float for latents). With ``draw`` and a stored std, the tokens are a
    posterior draw mean + std * noise seeded by ``draw``; else the mean."""
    tokens = torch.from_numpy(_array(sample[TOKENS]))
    if tokens.is_floating_point():
        tokens = tokens.float()
        if std and draw is not None and STD in sample:
            sigma = torch.from_numpy(_array(sample[STD])).float()
            tokens = tokens + sigma * torch.randn(tokens.shape, generator=draw.generator())
    else:
        tokens = tokens.long()
    item = {"tokens": tokens, "caption": sample[CAPTION].decode("utf-8", "replace").strip(),
            "key": sample["__key__"]}
    if TEXT in sample:
        item["text_feats"] = torch.from_numpy(_array(sample[TEXT]))
        item["text_mask"] = torch.from_numpy(_array(sample[MASK])).bool()
    return item


def _seed(*parts) -> int:
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def shuffled(samples: Iterator, buffer: int, seed: int) -> Iterator:
    """A seeded shuffle buffer: hold ``buffer`` samples, emit a random one as each new one comes,
    drain the rest in random order at the end."""
    rng, held = random.Random(seed), []
    for s in samples:
        if len(held) < buffer:
            held.append(s)
            continue
        i = rng.randrange(buffer)
        held[i], s = s, held[i]
        yield s
    rng.shuffle(held)
    yield from held


# ---- streaming ----

class ShardStream(IterableDataset):
    """An endless stream of collated micro-batches for one rank (see the module docstring).

    ``batch_size`` is the global micro-batch (``train.batch_size / accumulate_grad_batches``); each
    of ``world`` ranks draws ``batch_size / world`` of it from its own slots. ``start`` (micro-batches
    this rank has already taken), ``rank`` and ``world`` are set before iterating (the attributes of
    the step-indexed sampler ``harness.train.run.StartFrom`` sets)."""

    def __init__(self, shards: list[tuple[str, int]], batch_size: int, seed: int, posterior: bool = False,
                 buffer: int = SHUFFLE_BUFFER, label: str = "tokens train"):
        if not shards:
            raise UserError("data.path", f"{label}: no training samples in the token shards")
        self.shards, self.batch_size, self.seed = shards, batch_size, seed
        self.posterior, self.buffer, self.label = posterior, buffer, label
        self.start, self.rank, self.world = 0, 0, 1
        self.resumed_layout: dict | None = None  # the layout of the checkpoint resumed from

    def layout(self, workers: int) -> dict:
        """What the order depends on besides the seed: a resume under another layout cannot keep it."""
        return {"world": self.world, "workers": workers, "seed": self.seed, "batch_size": self.batch_size}

    def restart_pass(self, workers: int) -> int | None:
        """Resumed under another layout: the pass the whole run had reached (it restarts there)."""
        if not self.start or self.resumed_layout in (None, self.layout(workers)):
            return None
        seen = self.start * self.batch_size  # samples the whole run had drawn
        p = seen // sum(n for _, n in self.shards)
        if get_worker_info() is None or get_worker_info().id == 0:
            log.warning("%s: resumed with layout %s, checkpointed with %s: the stream restarts at the "
                        "start of pass %d (the pass the run had reached), not where it stopped",
                        self.label, self.layout(workers), self.resumed_layout, p)
        return p

    # the order
    def order(self, p: int) -> list[int]:
        """Shard indices in pass ``p``'s order."""
        return torch.randperm(len(self.shards), generator=torch.Generator().manual_seed(_seed(self.seed, "pass", p))).tolist()

    def slot_shards(self, slot: int, slots: int, p: int) -> list[int]:
        return self.order(p)[slot::slots]

    def pass_length(self, slot: int, slots: int, p: int) -> int:
        return sum(self.shards[j][1] for j in self.slot_shards(slot, slots, p))

    def check_slots(self, slots: int) -> None:
        if len(self.shards) < slots:
            raise UserError("data.num_workers", f"{self.label}: {len(self.shards)} training shards cannot "
                            f"feed {slots} readers (ranks x max(1, data.num_workers)); lower "
                            "data.num_workers or encode the data into more shards")

    def samples(self, slot: int, slots: int, skip: int = 0,
                skipped: Skipped | None = None) -> Iterator[tuple[int, dict]]:
        """(position, raw sample) of slot ``slot``'s endless stream from position ``skip`` on:
        whole shards before it are passed over unread, the shard holding it is replayed."""
        skipped = skipped or Skipped(f"{self.label} (reader {slot} of {slots})")
        n = 0
        for p in count():
            mine = self.slot_shards(slot, slots, p)
            for j in mine:
                path, size = self.shards[j]
                if n + size <= skip:
                    n += size
                    continue
                window = shuffled(raw_samples(path, skipped), self.buffer, _seed(self.seed, slot, slots, p, j))
                for i, sample in enumerate(window):
                    if n + i >= skip and i < size:
                        yield n + i, sample
                n += size  # positions count recorded sizes: a damaged shard shifts nothing after it

    def skip_for(self, slot: int, slots: int, worker: int, workers: int) -> int:
        """Samples this slot had emitted when the run stopped: this rank took ``start`` batches,
        reader ``w`` made batches w, w + W, ... of them (the DataLoader's round robin; a resumed
        DataLoader's worker ``i`` plays reader ``(i + start) % W``)."""
        restart = self.restart_pass(workers)
        if restart is not None:
            return sum(self.pass_length(slot, slots, p) for p in range(restart))
        batches = max(0, (self.start - worker + workers - 1) // workers)
        return batches * (self.batch_size // self.world)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # a fresh DataLoader asks worker 0 first; batch ``start`` belongs to reader start % workers
        worker = (worker + self.start) % workers
        slot, slots = self.rank * workers + worker, self.world * workers
        self.check_slots(slots)
        per_rank = self.batch_size // self.world
        batch = []
        skipped = Skipped(f"{self.label} (reader {slot} of {slots})")
        for n, sample in self.samples(slot, slots, self.skip_for(slot, slots, worker, workers), skipped):
            draw = Draw(self.seed, _seed(slot, slots), n) if self.posterior else None
            try:
                batch.append(decode(sample, self.posterior, draw))
            except Exception as e:  # any undecodable member makes the sample bad
                skipped.sample(sample.get("__key__"), one_line(e, typed=True, limit=120))
                continue
            if len(batch) == per_rank:
                yield default_collate(batch)
                batch = []


def val_subset(root: str | Path, size: int, seed: int) -> TokenDataset:
    """The fixed validation set: the first ``size`` readable samples of the val shards in an order
    seeded by ``seed`` (file order within a shard), means only, in memory."""
    shards = finished_shards(root, "val")
    if not shards:
        raise UserError("data.path", f"{root}: the token shards hold no validation samples")
    order = np.random.default_rng(seed).permutation(len(shards))
    skipped = Skipped(f"tokens val ({root})")
    items = []
    for j in order:
        for sample in raw_samples(shards[j][0], skipped):
            try:
                items.append(decode(sample))
            except Exception as e:
                skipped.sample(sample.get("__key__"), one_line(e, typed=True, limit=120))
                continue
            if len(items) == size:
                break
        if len(items) == size:
            break
    if not items:
        raise UserError("data.path", f"{root}: no readable validation samples")
    text = None
    if "text_feats" in items[0]:
        text = {k: torch.stack([it[k] for it in items]) for k in ("text_feats", "text_mask")}
    return TokenDataset(torch.stack([it["tokens"] for it in items]), [it["caption"] for it in items], text)


class TokenShardDataModule(L.LightningDataModule):
    """Streaming training batches (``ShardStream``) and the fixed validation subset.

    ``batch_size`` images per optimizer step over all devices, in ``accumulate`` micro-batches;
    validation batches hold ``batch_size`` images. The checkpoint keeps the stream's layout
    (world size, workers, seed): the position itself is the step count (``start``)."""

    def __init__(self, train: ShardStream, val: TokenDataset, batch_size: int, num_workers: int = 0):
        super().__init__()
        self.sampler, self.val_set = train, val
        self.batch_size, self.num_workers = batch_size, num_workers

    def state_dict(self) -> dict:
        return {"stream_layout": self.sampler.layout(max(1, self.num_workers))}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.resumed_layout = state.get("stream_layout")

    def train_dataloader(self) -> DataLoader:
        # Lightning starts the loader's workers before ``on_train_start`` (where the step-indexed
        # sampler learns its position): the stream's position and rank are set here, from the
        # restored trainer, so the workers are forked knowing them
        t = self.trainer
        if t is not None:
            self.sampler.start = t.global_step * t.accumulate_grad_batches
            self.sampler.rank, self.sampler.world = t.global_rank, t.world_size
        return DataLoader(self.sampler, batch_size=None, num_workers=self.num_workers,
                          persistent_workers=False)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False)


def check_run(cfg: DictConfig, meta: dict) -> None:
    """The run's config must read the shards as they were written: token kind, tokens per image,
    text encoder and caption length."""
    from harness.config import num_tokens

    if cfg.model.token != meta["token"]:
        raise UserError("model.token", f"the token shards at {cfg.data.path} hold {meta['token']} tokens",
                        [meta["token"]])
    if num_tokens(cfg) != meta["num_tokens"]:
        raise UserError("data.resolution", f"the token shards hold {meta['num_tokens']} tokens per image "
                        f"(resolution {meta['resolution']}, downsample {meta['downsample']}); this run "
                        f"expects {num_tokens(cfg)}")
    if cfg.text.encoder != meta["text_encoder"]:
        raise UserError("text.encoder", f"the token shards were written for text.encoder="
                        f"{meta['text_encoder']}", [meta["text_encoder"]])
    if meta["text_encoder"] != "learned" and cfg.text.max_len != meta["text_max_len"]:
        raise UserError("text.max_len", f"the token shards hold {meta['text_max_len']} text tokens "
                        "per caption", [meta["text_max_len"]])
    if cfg.tokenizer.posterior_sample and cfg.model.token == "continuous" and not meta["posterior"]:
        raise UserError("tokenizer.posterior_sample", "the token shards hold posterior means only; "
                        "encode them with tokenizer.posterior_sample=true, or set it false")


def prepare(cfg: DictConfig) -> tuple[Path, ShardStream, TokenDataset]:
    """A run's data from token shards: (tokenizer directory, training stream, validation subset)."""
    root = Path(cfg.data.path)
    meta = read_meta(root)
    check_run(cfg, meta)
    posterior = bool(cfg.tokenizer.posterior_sample and meta["posterior"])
    micro = cfg.train.batch_size // cfg.train.accumulate_grad_batches
    stream = ShardStream(finished_shards(root, "train"), micro, cfg.train.seed, posterior,
                         label=f"tokens train ({root})")
    stream.check_slots(cfg.train.devices * cfg.train.num_nodes * max(1, cfg.data.num_workers))
    return root / TOKENIZER, stream, val_subset(root, cfg.data.val_size, cfg.data.seed)


def vocabulary(root: str | Path) -> list[str]:
    """The caption vocabulary of the source data, recorded by the encoder (learned text encoder)."""
    return list(read_meta(root)["vocabulary"])
