"""Stage 0 at scale: image-caption WebDataset shards -> token shards, one shard at a time.

``python -m harness.tokenizers.shards --out DIR [--processes P] [--task I --tasks N] key=value ...``

The config is a run's (``data.name=webdataset data.path=<source shards>``, ``model.token``,
``tokenizer.*`` — a ``tokenizer.pretrained_<token>`` diffusers model at scale —, ``text.encoder``,
``text.max_len``, ``data.resolution``). Every source shard becomes a token shard per split under
``--out`` with the same sample keys (the layout: ``harness/data/token_shards.py``), holding the
tokenizer's output (codes; or latent means, and with ``tokenizer.posterior_sample`` the posterior
std so that training draws a fresh sample per step) and, for a frozen Hugging Face text encoder,
its caption features in float16. Training streams them with ``data.name=tokens data.path=DIR``.

Resumable and parallel: a shard is written to ``.partial`` files renamed into place, then
``done/<shard>.json`` (written last) marks it finished; a rerun skips finished shards and redoes
half-written ones. Shards are dealt out ``task::tasks`` (a SLURM array: ``--task``/``--tasks``
default to ``SLURM_ARRAY_TASK_ID``/``SLURM_ARRAY_TASK_COUNT``) and within a task over ``--processes``
local processes. Memory is bounded by one batch of images and one shard's index, whatever the
dataset's size: images are decoded, encoded and written ``--batch`` at a time.

Splits follow ``harness/data/real.py``: ``train/`` and ``val/`` shard folders when the source has
both, else a hash of the sample key. A harness-trained tokenizer (no ``pretrained_<token>``) is
trained first by stage 0 on the first ``data.train_size`` training images, as a run would.
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from harness import config as C
from harness.data import token_shards as TS
from harness.data.datasets import to_float, words
from harness.data.real import VOCABULARY_SIZE, index_shard, is_val, load_image, shard_paths
from harness.errors import UserError, cli_main, one_line
from harness.io import build_once, file_lock, read_json, write_json
from harness.tokenizers.stage0 import Tokenizer, ensure_tokenizer, load_tokenizer


def source_shards(data: DictConfig) -> list[tuple[str, str | None]]:
    """(source shard, its split or None for the hash split), in a fixed order."""
    if data.name != "webdataset":
        raise UserError("data.name", "token shards are encoded from WebDataset image-caption shards",
                        ["webdataset"])
    root = Path(data.path)
    if root.is_dir() and all((root / s).is_dir() and list((root / s).glob("*.tar")) for s in TS.SPLITS):
        return [(p, s) for s in TS.SPLITS for p in shard_paths(str(root / s))]
    return [(p, None) for p in shard_paths(data.path)]


def _array(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x, allow_pickle=False)
    return buf.getvalue()


def _tokenizer_dir(cfg: DictConfig, out: Path) -> Path:
    """``out/tokenizer``: a copy of the stage-0 tokenizer (trained here if needed), or a pointer to
    the pretrained one, so the token-shard directory is self-contained."""
    token = cfg.model.token
    source = C.pretrained_source(cfg, token)

    def build(tmp: Path) -> None:
        if source:
            from harness.tokenizers.pretrained import check_config, load_pretrained

            model = load_pretrained(source)
            check_config(cfg, token, model)
            write_json(tmp / "meta.json", {
                "token": token, "pretrained": str(Path(source).resolve()) if Path(source).exists() else source,
                "scale": 1.0, "config": OmegaConf.to_container(cfg.tokenizer),
                "resolution": cfg.data.resolution})
            return
        stage0 = ensure_tokenizer(cfg, token)
        shutil.copy(stage0 / "model.pt", tmp / "model.pt")
        meta = read_json(stage0 / "meta.json")
        write_json(tmp / "meta.json", {**meta, "stage0": str(stage0.resolve())})

    return build_once(out / TS.TOKENIZER, build)


def prepare(cfg: DictConfig, out: Path) -> dict:
    """Create (or check) ``out``: its tokenizer and ``meta.json``. Safe to run from many tasks."""
    out.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer(_tokenizer_dir(cfg, out))
    shards = source_shards(cfg.data)
    frozen = cfg.text.encoder != "learned"
    meta = {"format": TS.FORMAT, "token": cfg.model.token, "token_dim": tok.token_dim,
            "codebook_size": tok.codebook_size, "num_tokens": C.num_tokens(cfg),
            "resolution": cfg.data.resolution, "downsample": cfg.tokenizer.downsample,
            "posterior": bool(cfg.model.token == "continuous" and cfg.tokenizer.posterior_sample),
            "text_encoder": cfg.text.encoder, "text_max_len": cfg.text.max_len if frozen else None,
            "source": OmegaConf.to_container(cfg.data),
            "shards": [shard_id(p, s) for p, s in shards]}
    with file_lock(out / "meta.lock"):
        path = out / TS.META
        if path.exists():
            old = read_json(path)
            same = {k: old.get(k) for k in meta if k != "source"} == {k: v for k, v in meta.items() if k != "source"}
            if not same:
                raise UserError("--out", f"{out} holds token shards of another config (compare its {TS.META}); "
                                "choose another --out")
            return old
        meta["vocabulary"] = vocabulary(cfg.data, shards) if not frozen else []
        write_json(path, meta)
    return meta


def vocabulary(data: DictConfig, shards: list[tuple[str, str | None]]) -> list[str]:
    """The learned text encoder's words: those of the first ``data.train_size`` training captions in
    shard order, most frequent first (ties alphabetical), at most ``VOCABULARY_SIZE`` — read from
    only as many shards as that takes (``harness.data.real.vocabulary`` indexes every shard). When
    the captions all fit, it is the in-memory path's vocabulary."""
    counts: Counter = Counter()
    seen = 0
    for path, split in shards:
        if split == "val" or seen >= data.train_size:
            continue
        stat = Path(path).stat()
        entries, _ = index_shard(str(Path(path).resolve()), stat.st_mtime, stat.st_size)
        index_shard.cache_clear()
        for e in entries:
            if seen < data.train_size and (split == "train" or not is_val(e.name)):
                counts.update(words(e.caption))
                seen += 1
    return [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:VOCABULARY_SIZE]]


def shard_id(path: str, split: str | None) -> str:
    """The output name of a source shard: its file stem (prefixed by its split folder)."""
    stem = Path(path).name.removesuffix(".tar")
    return f"{split}-{stem}" if split else stem


class Encoder:
    """Everything one process needs to encode shards: the tokenizer and the text encoder."""

    def __init__(self, cfg: DictConfig, out: Path):
        self.cfg, self.out = cfg, out
        self.tok: Tokenizer = load_tokenizer(out / TS.TOKENIZER)
        gpu = torch.cuda.is_available() and cfg.train.accelerator in ("auto", "gpu", "cuda")
        self.device = "cuda" if gpu else "cpu"
        self.tok.to(self.device)
        self.posterior = cfg.model.token == "continuous" and cfg.tokenizer.posterior_sample
        self.text = None
        if cfg.text.encoder != "learned":
            from harness.text.encoders import HFTextEncoder

            self.text = HFTextEncoder(cfg.text.encoder, cfg.text.max_len).to(self.device)

    @torch.no_grad()
    def encode(self, images: np.ndarray, captions: list[str]) -> list[dict[str, bytes]]:
        """One batch -> the members of its token-shard samples (without keys)."""
        x = to_float(torch.from_numpy(images)).to(self.device)
        std = None
        if self.posterior:
            mean, std = self.tok.model.encode_moments(x)
            tokens, std = (mean / self.tok.scale).float().cpu(), (std / self.tok.scale).float().cpu()
        else:
            tokens = self.tok.encode(x).cpu()
            tokens = tokens.float() if tokens.is_floating_point() else tokens.to(torch.int32)
        feats = None
        if self.text is not None:
            f, m = self.text.encode(captions)
            feats, mask = f.half().cpu().numpy(), m.cpu().numpy()
        out = []
        for i, caption in enumerate(captions):
            sample = {TS.TOKENS: _array(tokens[i].numpy()), TS.CAPTION: caption.encode("utf-8")}
            if std is not None:
                sample[TS.STD] = _array(std[i].numpy())
            if feats is not None:
                sample[TS.TEXT], sample[TS.MASK] = _array(feats[i]), _array(mask[i])
            out.append(sample)
        return out

    def shard(self, path: str, split: str | None, batch: int) -> dict:
        """Encode one source shard into its token shards; returns what ``done/<id>.json`` records."""
        from webdataset import TarWriter

        name = shard_id(path, split)
        stat = Path(path).stat()
        entries, bad = index_shard(str(Path(path).resolve()), stat.st_mtime, stat.st_size)
        index_shard.cache_clear()  # one shard's index in memory at a time
        bad = [f"{k}: {why}" for k, why in bad]
        counts = {}
        for s in TS.SPLITS:
            mine = [e for e in entries if (split == s if split else is_val(e.name) == (s == "val"))]
            final = self.out / s / f"{name}.tar"
            partial = final.with_name(final.name + ".partial")
            final.unlink(missing_ok=True)
            counts[s] = 0
            if not mine:
                continue
            partial.parent.mkdir(parents=True, exist_ok=True)
            with open(partial, "wb") as f:
                writer = TarWriter(f, encoder=False)
                for start in range(0, len(mine), batch):
                    keys, images, captions = [], [], []
                    for e in mine[start:start + batch]:
                        try:
                            images.append(load_image(e.read(), self.cfg.data.resolution))
                        except Exception as err:  # any decode failure makes the sample bad
                            bad.append(f"{e.name}: {one_line(err, typed=True, limit=120)}")
                            continue
                        keys.append(e.name)
                        captions.append(e.caption)
                    if not keys:
                        continue
                    for key, sample in zip(keys, self.encode(np.stack(images), captions)):
                        writer.write({"__key__": key, **sample})
                    counts[s] += len(keys)
                writer.close()
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, final)
        record = {"source": path, "samples": counts, "skipped": len(bad), "first_skipped": bad[:3]}
        write_json(self.out / TS.DONE / f"{name}.json", record)
        return record


def _work(cfg_yaml: str, out: str, jobs: list[tuple[str, str | None]], batch: int) -> list[dict]:
    """One process's share: load the encoders once, then its shards in order."""
    cfg = OmegaConf.create(cfg_yaml)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    enc = Encoder(cfg, Path(out))
    return [enc.shard(path, split, batch) for path, split in jobs]


def pending(out: Path, shards: list[tuple[str, str | None]]) -> list[tuple[str, str | None]]:
    """Shards without a ``done`` record (never started, or half-written: both are redone)."""
    return [(p, s) for p, s in shards if not (out / TS.DONE / f"{shard_id(p, s)}.json").exists()]


def encode_shards(cfg: DictConfig, out: str | Path, task: int = 0, tasks: int = 1, processes: int = 1,
                  batch: int = 64) -> dict:
    """Encode this task's unfinished shards (``task::tasks`` of the source's); returns a summary."""
    if not 0 <= task < tasks:
        raise UserError("--task", f"must be in 0..{tasks - 1}, got {task}")
    out = Path(out)
    start = time.time()
    shards = source_shards(cfg.data)[task::tasks]  # checks the source before any stage-0 work
    prepare(cfg, out)
    todo = pending(out, shards)
    records = []
    if todo:
        text = OmegaConf.to_yaml(cfg)
        groups = [todo[i::processes] for i in range(min(processes, len(todo)))]
        if len(groups) == 1:
            records = _work(text, str(out), groups[0], batch)
        else:
            with ProcessPoolExecutor(len(groups), mp_context=get_context("spawn")) as pool:
                for rs in pool.map(_work, [text] * len(groups), [str(out)] * len(groups), groups,
                                   [batch] * len(groups)):
                    records += rs
    return {"out": str(out), "task": task, "tasks": tasks, "shards": len(shards),
            "encoded": len(records), "skipped_finished": len(shards) - len(todo),
            "samples": {s: sum(r["samples"][s] for r in records) for s in TS.SPLITS},
            "bad_samples": sum(r["skipped"] for r in records), "seconds": time.time() - start}


@cli_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m harness.tokenizers.shards", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the token-shard directory (data.path of data.name=tokens)")
    array_task = int(os.environ.get("SLURM_ARRAY_TASK_ID", "0")) - int(os.environ.get("SLURM_ARRAY_TASK_MIN", "0"))
    parser.add_argument("--task", type=int, default=array_task,
                        help="this task's index (default: SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN, or 0)")
    parser.add_argument("--tasks", type=int, default=int(os.environ.get("SLURM_ARRAY_TASK_COUNT", "1")),
                        help="number of tasks (default: SLURM_ARRAY_TASK_COUNT or 1)")
    parser.add_argument("--processes", type=int, default=1, help="local processes for this task")
    parser.add_argument("--batch", type=int, default=64, help="images encoded at a time")
    parser.add_argument("--config", action="append", default=[], help="YAML override file(s)")
    parser.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. data.path=/data/laion")
    args = parser.parse_args(argv)
    for flag, value in (("--processes", args.processes), ("--batch", args.batch), ("--tasks", args.tasks)):
        if value < 1:
            raise UserError(flag, f"must be >= 1, got {value}")
    cfg = C.load(args.overrides, args.config)
    summary = encode_shards(cfg, args.out, args.task, args.tasks, args.processes, args.batch)
    print(" ".join(f"{k}={v}" for k, v in summary.items()))


if __name__ == "__main__":
    main()
