"""Streaming token shards (``data.name=tokens``): every sample once per pass across ranks and
workers, exact resume, damaged shards skipped and counted, a fixed validation subset, and training
on them — resumed exactly, equal to the in-memory path on the same samples, on 2 gloo processes x 2
workers. The shards are the shapes world written as image-caption tars and encoded here."""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from harness import config
from harness.data import token_shards as TS
from harness.errors import UserError
from harness.run_dir import RunDir
from harness.run_status import read_status
from harness.tokenizers.shards import encode_shards
from harness.tracking import store
from tests.conftest import Crash, crash_training_at
from tests.data.shapes_tars import TINY, encode_config, write_shapes_shards

REPO = Path(__file__).resolve().parents[2]
TRAIN, VAL = 96, 24  # 8 train shards and 2 val shards of 12


@pytest.fixture(scope="module")
def shards(tmp_path_factory, stage0_root) -> dict:
    root = tmp_path_factory.mktemp("token-shards")
    source = write_shapes_shards(root / "src", train_shards=8, val_shards=2, per_shard=12)
    out = {"source": source}
    for token, posterior in (("discrete", "false"), ("continuous", "true")):
        cfg = encode_config(source, stage0_root, f"model.token={token}", f"tokenizer.posterior_sample={posterior}")
        encode_shards(cfg, root / token)
        out[token] = root / token
    return out


def stream(root: Path, batch: int = 8, posterior: bool = False, **kw) -> TS.ShardStream:
    return TS.ShardStream(TS.finished_shards(root, "train"), batch, seed=0, posterior=posterior, **kw)


def batches(s: TS.ShardStream, n: int, rank: int = 0, world: int = 1, workers: int = 2, start: int = 0):
    s.rank, s.world, s.start = rank, world, start
    loader = DataLoader(s, batch_size=None, num_workers=workers)
    out = []
    for b in loader:
        out.append(b)
        if len(out) == n:
            return out


def keys(bs) -> list[str]:
    return [k for b in bs for k in b["key"]]


def all_train_keys() -> list[str]:
    return [f"train{i:05d}" for i in range(TRAIN)]


def test_every_sample_once_per_pass_across_two_ranks_and_two_workers(shards):
    # 4 readers (2 ranks x 2 workers) of 2 shards = 24 samples = 6 batches of 4 per reader and pass
    s = stream(shards["discrete"], batch=8, buffer=5)
    runs = [batches(s, 24, rank=r, world=2) for r in (0, 1)]
    for p in (0, 1):
        seen = keys(runs[0][12 * p:12 * (p + 1)]) + keys(runs[1][12 * p:12 * (p + 1)])
        assert sorted(seen) == all_train_keys(), p
    assert keys(runs[0][:12]) != keys(runs[0][12:])  # each pass in its own order
    # a reader's pass is its shards' samples, shuffled within the shard
    first = keys(runs[0][0::2][:6])  # rank 0, worker 0: batches 0, 2, 4, ...
    assert len({int(k[5:]) // 12 for k in first}) == 2 and first != sorted(first)


def test_a_resumed_stream_is_the_uninterrupted_one_sample_for_sample(shards):
    s = stream(shards["continuous"], batch=8, posterior=True, buffer=5)
    straight = batches(s, 20, rank=1, world=2)
    for start in (7, 13):  # mid-shard, and past several shards
        resumed = batches(s, 20 - start, rank=1, world=2, start=start)
        assert keys(resumed) == keys(straight[start:])
        for a, b in zip(resumed, straight[start:]):
            assert torch.equal(a["tokens"], b["tokens"])  # the same posterior draws too
    means = batches(stream(shards["continuous"], batch=8, buffer=5), 20, rank=1, world=2)
    assert keys(means) == keys(straight) and not torch.equal(means[0]["tokens"], straight[0]["tokens"])


def test_a_resume_under_another_layout_restarts_at_the_pass_reached(shards, caplog):
    s = stream(shards["discrete"], batch=8)
    s.resumed_layout = {"world": 2, "workers": 2, "seed": 0, "batch_size": 8}
    with caplog.at_level(logging.WARNING):
        resumed = batches(s, 12, workers=0, start=15)  # 15 x 8 = 120 samples: pass 1 reached
    assert "restarts at the start of pass 1" in caplog.text
    s2 = stream(shards["discrete"], batch=8)
    straight = batches(s2, 24, workers=0)
    assert keys(resumed) == keys(straight[12:24])  # pass 1 from its start: at most a pass repeated


def test_a_damaged_shard_keeps_its_head_and_bad_samples_are_counted(shards, tmp_path, caplog):
    root = tmp_path / "tok"
    shutil.copytree(shards["discrete"], root)
    tar = root / "train" / "train-000003.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    s = stream(root, batch=4)
    with caplog.at_level(logging.WARNING):
        seen = keys(batches(s, 40, workers=0))
    first_pass = set(seen)  # 160 samples: the whole first pass and more
    lost = set(all_train_keys()) - first_pass
    assert 0 < len(lost) < 12 and all(k.startswith(("train0003", "train0004")) for k in lost)
    assert "train-000003.tar is damaged" in caplog.text and "1 shards damaged so far" in caplog.text
    skipped = TS.Skipped("x")
    tokens_only = [s for s in TS.raw_samples(str(root / "train" / "train-000000.tar"), skipped)]
    assert len(tokens_only) == 12 and skipped.samples == skipped.shards == 0


def test_the_validation_subset_is_fixed_seeded_and_capped(shards):
    a = TS.val_subset(shards["discrete"], 16, seed=0)
    b = TS.val_subset(shards["discrete"], 16, seed=0)
    assert len(a) == 16 and a.captions == b.captions and torch.equal(a.tokens, b.tokens)
    assert len(TS.val_subset(shards["discrete"], 1000, seed=0)) == VAL
    orders = {tuple(TS.val_subset(shards["discrete"], 12, seed=s).captions) for s in range(6)}
    assert len(orders) == 2  # the seed picks the val shards' order


def test_a_run_must_read_the_shards_as_written(shards, smoke):
    cfg = config.load(smoke("data.name=tokens", f"data.path={shards['discrete']}", "model.token=continuous"))
    with pytest.raises(UserError, match="model.token"):
        TS.prepare(cfg)
    cfg = config.load(smoke("data.name=tokens", f"data.path={shards['discrete']}", "model.token=discrete",
                            "data.resolution=64"))
    with pytest.raises(UserError, match="data.resolution"):
        TS.prepare(cfg)
    cfg = config.load(smoke("data.name=tokens", f"data.path={shards['discrete']}", "model.token=discrete",
                            "data.num_workers=9"))
    with pytest.raises(UserError, match="8 training shards cannot feed 9 readers"):
        TS.prepare(cfg)


def val_losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["value"] for r in store.read_metrics(run_dir) if r["key"] == "val/loss"}


def tokens_run(shards, results, token, *extra):
    return config.load(TINY + ["data.name=tokens", f"data.path={shards[token]}", f"results_dir={results}",
                               f"model.token={token}", *extra])


def test_a_token_shard_run_resumes_exactly(shards, results_dir, tmp_path, monkeypatch):
    import harness.train.run as T

    extra = ("model.order=random", "tokenizer.posterior_sample=true", "data.num_workers=2")
    straight = T.train(tokens_run(shards, results_dir, "continuous", *extra))
    other = tmp_path / "other"
    other.mkdir()
    cfg = tokens_run(shards, other, "continuous", *extra)  # the same run in another results dir
    restore = crash_training_at(monkeypatch, 15)
    with pytest.raises(Crash):
        T.train(cfg)
    restore()
    resumed = T.train(cfg)
    a = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["TokenShardDataModule"] == {"stream_layout": {"world": 1, "workers": 2, "seed": 0, "batch_size": 16}}
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    assert val_losses(straight) == val_losses(resumed)


def test_a_token_shard_run_equals_the_in_memory_run_on_the_same_samples(shards, results_dir):
    from harness.train.run import train

    # every step's batch is every training sample (in its own order in each path); without caption
    # dropout the discrete raster loss is a mean over the batch, so only summation order differs
    extra = ("model.token=discrete", "model.order=raster", "text.dropout_prob=0", f"train.batch_size={TRAIN}",
             "train.steps=4", "train.val_every=2", "train.log_every=1")
    memory = train(encode_config(shards["source"], results_dir, *extra))
    streamed = train(tokens_run(shards, results_dir, "discrete", *extra))
    a, b = val_losses(memory), val_losses(streamed)
    assert sorted(a) == sorted(b) == [0, 2, 4]
    assert a[4] < a[0]
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-4), step
    train_a = {r["step"]: r["value"] for r in store.read_metrics(memory) if r["key"] == "train/loss"}
    train_b = {r["step"]: r["value"] for r in store.read_metrics(streamed) if r["key"] == "train/loss"}
    assert train_a.keys() == train_b.keys() and train_a
    for step in train_a:
        assert train_b[step] == pytest.approx(train_a[step], rel=1e-4), step


@pytest.mark.slow
def test_two_gloo_processes_with_two_workers_each_train_on_token_shards(shards, results_dir):
    out = subprocess.run(
        [sys.executable, "-m", "harness.train", *TINY, "data.name=tokens", f"data.path={shards['continuous']}",
         f"results_dir={results_dir}", "model.token=continuous", "tokenizer.posterior_sample=true",
         "train.devices=2", "train.strategy=ddp_find_unused_parameters_true", "data.num_workers=2",
         "train.steps=6", "train.val_every=3", "train.checkpoint_every=3"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=900,
        check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    run, = (r.path for r in RunDir.all_in(results_dir))
    assert out.stdout.count(str(run)) == 1, out.stdout[-2000:]  # printed by rank 0 only
    assert read_status(run)["status"] == "trained", out.stdout[-2000:]
    losses = val_losses(run)
    assert sorted(losses) == [0, 3, 6] and all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["TokenShardDataModule"]["stream_layout"]["world"] == 2
