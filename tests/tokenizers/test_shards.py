"""Encoding image-caption shards into token shards: layout, dtypes, resumable shard by shard,
split over tasks and processes, frozen text features in float16."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.data import token_shards as TS
from harness.data.datasets import caption_vocabulary
from harness.data.real import is_val
from harness.errors import UserError
from harness.tokenizers.shards import encode_shards, source_shards
from harness.tokenizers.stage0 import load_tokenizer
from tests.data.shapes_tars import encode_config, write_shapes_shards

REPO = Path(__file__).resolve().parents[2]


def members(tar: Path) -> dict[str, dict[str, bytes]]:
    import tarfile

    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(tar) as tf:
        for m in tf.getmembers():
            key, _, suffix = m.name.partition(".")
            out.setdefault(key, {})[suffix] = tf.extractfile(m).read()
    return out


def array(raw: bytes) -> np.ndarray:
    return np.load(io.BytesIO(raw), allow_pickle=False)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return write_shapes_shards(tmp_path_factory.mktemp("src"), train_shards=4, val_shards=1, per_shard=6)


@pytest.mark.parametrize("token,posterior", [("discrete", "false"), ("continuous", "true")])
def test_token_shards_hold_the_tokenizer_output_under_the_source_keys(source, stage0_root, tmp_path,
                                                                     token, posterior):
    cfg = encode_config(source, stage0_root, f"model.token={token}", f"tokenizer.posterior_sample={posterior}")
    summary = encode_shards(cfg, tmp_path / "tok")
    assert summary["samples"] == {"train": 24, "val": 6} and summary["encoded"] == 5
    meta = TS.read_meta(tmp_path / "tok")
    assert meta["token"] == token and meta["num_tokens"] == 64 and meta["posterior"] == (posterior == "true")
    assert meta["shards"] == [f"{s}-{i:06d}" for s, n in (("train", 4), ("val", 1)) for i in range(n)]
    assert "square" in meta["vocabulary"] and meta["vocabulary"] == caption_vocabulary(cfg.data)
    tok = load_tokenizer(tmp_path / "tok" / TS.TOKENIZER)  # self-contained: decoding needs no stage 0
    shard = members(tmp_path / "tok" / "train" / "train-000000.tar")
    assert sorted(shard) == [f"train{i:05d}" for i in range(6)]
    sample = shard["train00000"]
    tokens = array(sample["tokens.npy"])
    if token == "discrete":
        assert tokens.dtype == np.int32 and tokens.shape == (64,) and tokens.max() < tok.codebook_size
        assert set(sample) == {"tokens.npy", "txt"}
    else:
        std = array(sample["std.npy"])
        assert tokens.dtype == std.dtype == np.float32 and tokens.shape == std.shape == (64, 4)
        assert (std > 0).all()
    assert sample["txt"].decode().startswith(("a ", "one ", "two ", "three ", "four ")) or sample["txt"]
    done = json.loads((tmp_path / "tok" / "done" / "train-000000.json").read_text())
    assert done["samples"] == {"train": 6, "val": 0} and done["skipped"] == 0


def test_finished_shards_are_skipped_half_written_ones_redone_and_tasks_split_the_work(source, stage0_root,
                                                                                       tmp_path):
    cfg = encode_config(source, stage0_root, "model.token=discrete")
    out = tmp_path / "tok"
    first = encode_shards(cfg, out, task=0, tasks=2)
    assert first["shards"] == 3 and first["encoded"] == 3  # shards 0, 2, 4 of 5
    with pytest.raises(UserError, match="not encoded yet"):
        TS.finished_shards(out, "train")
    second = encode_shards(cfg, out, task=1, tasks=2)
    assert second["encoded"] == 2
    assert len(TS.finished_shards(out, "train")) == 4
    before = {p.name: (p.stat().st_mtime_ns, members(p)) for p in (out / "train").glob("*.tar")}
    # a shard killed half-way: no done record, a partial file, a truncated tar
    (out / "done" / "train-000001.json").unlink()
    victim = out / "train" / "train-000001.tar"
    victim.write_bytes(victim.read_bytes()[:700])
    (out / "train" / "train-000001.tar.partial").write_bytes(b"garbage")
    again = encode_shards(cfg, out, processes=2)  # two local processes; only one has work
    assert again["encoded"] == 1 and again["skipped_finished"] == 4
    after = {p.name: (p.stat().st_mtime_ns, members(p)) for p in (out / "train").glob("*.tar")}
    assert not list((out / "train").glob("*.partial"))
    for name, (mtime, content) in before.items():
        assert after[name][1] == content, name  # the redone shard holds what it held
        assert (after[name][0] == mtime) == (name != "train-000001.tar"), name


def test_a_frozen_text_encoders_features_are_stored_in_float16(source, stage0_root, tmp_path):
    cfg = encode_config(source, stage0_root, "model.token=discrete", "text.encoder=minilm", "text.max_len=12")
    encode_shards(cfg, tmp_path / "tok")
    sample = members(tmp_path / "tok" / "val" / "val-000000.tar")["val00000"]
    feats, mask = array(sample["text.npy"]), array(sample["mask.npy"])
    assert feats.dtype == np.float16 and feats.shape == (12, 384)
    assert mask.dtype == np.bool_ and mask.shape == (12,) and mask[0]
    assert TS.read_meta(tmp_path / "tok")["text_encoder"] == "minilm"


def test_a_hash_split_source_splits_by_key_like_the_image_loader(source, stage0_root, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for tar in (source / "train").glob("*.tar"):
        os.link(tar, flat / tar.name)
    cfg = encode_config(flat, stage0_root, "model.token=discrete")
    assert [s for _, s in source_shards(cfg.data)] == [None] * 4
    encode_shards(cfg, tmp_path / "tok")
    for split in ("train", "val"):
        for tar in (tmp_path / "tok" / split).glob("*.tar"):
            assert all(is_val(k) == (split == "val") for k in members(tar))


@pytest.mark.slow
def test_bad_input_is_one_line_and_exit_2(source, stage0_root, tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "harness.tokenizers.shards", *args], cwd=REPO,
                              capture_output=True, text=True, timeout=300, check=False)

    out = cli("--out", str(tmp_path / "x"), "data.name=shapes")
    assert out.returncode == 2 and out.stderr.startswith("error: data.name"), out.stderr
    out = cli("--out", str(tmp_path / "x"), "--processes", "0")
    assert out.returncode == 2 and "--processes" in out.stderr
    cfg = encode_config(source, stage0_root, "model.token=discrete")
    encode_shards(cfg, tmp_path / "tok")
    with pytest.raises(UserError, match="another config"):
        encode_shards(encode_config(source, stage0_root, "model.token=continuous"), tmp_path / "tok")
