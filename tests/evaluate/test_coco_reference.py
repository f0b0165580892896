"""``eval.reference``: zero-shot FID against a seeded draw of COCO val captions and images, for a run
trained on other data (WebDataset shards here); the reference set is built once and shared; its
fields are validated in one line. Tiny fixtures written here; Inception with random weights."""
from __future__ import annotations

import io
import json
import socket
import tarfile
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from harness import config
from harness.data import real
from harness.errors import UserError
from harness.registry import COCO_CAPTIONS
from harness.evaluate import fid
from harness.evaluate.run import evaluate

RES = 16


def png(rgb, size=(20, 20)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, rgb).save(buf, format="PNG")
    return buf.getvalue()


def write_coco(root: Path, n: int = 12) -> Path:
    """``n`` images (the last without captions), three captions each, in the COCO layout."""
    (root / "val2014").mkdir(parents=True)
    (root / "annotations").mkdir()
    images, annotations = [], []
    for i in range(1, n + 1):
        name = f"COCO_val2014_{i:012d}.jpg"  # PNG bytes under a .jpg name, as Pillow reads either
        images.append({"id": i, "file_name": name})
        (root / "val2014" / name).write_bytes(png((0, 15 * i, 255 - 15 * i)))
        if i < n:
            annotations += [{"id": 100 * i + j, "image_id": i, "caption": f"photo {i} take {j}"} for j in range(3)]
    (root / COCO_CAPTIONS).write_text(json.dumps({"images": images, "annotations": annotations}))
    return root


def write_shards(root: Path) -> Path:
    """``train/`` and ``val/`` WebDataset shards of red and yellow squares (nothing like the COCO set)."""
    for split, count in (("train", 48), ("val", 16)):
        (root / split).mkdir(parents=True)
        with tarfile.open(root / split / "000000.tar", "w") as tf:
            for i in range(count):
                colour, word = ((220, 20, 20), "red") if i % 2 else ((230, 220, 30), "yellow")
                for ext, raw in (("png", png(colour)), ("txt", f"a {word} square".encode())):
                    info = tarfile.TarInfo(f"{split}{i:04d}.{ext}")
                    info.size = len(raw)
                    tf.addfile(info, io.BytesIO(raw))
    return root


@pytest.fixture(scope="module")
def inception(tmp_path_factory) -> Path:
    """Random Inception weights in torch-fidelity's format stand in for the real file."""
    from torch_fidelity import feature_extractor_inceptionv3 as inc

    with mock.patch.object(inc, "load_state_dict_from_url", lambda *a, **k: None), \
            mock.patch.object(inc.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None):
        torch.manual_seed(0)
        weights = inc.FeatureExtractorInceptionV3("x", ["2048"]).state_dict()
    path = tmp_path_factory.mktemp("inception") / "inception.pth"
    torch.save(weights, path)
    return path


def test_reference_fields_are_one_line_user_errors(tmp_path):
    coco = write_coco(tmp_path / "coco")
    cases = {
        ("eval.reference.source=imagenet",): r"^eval.reference.source: unknown value 'imagenet' \(valid: data, coco\)$",
        ("eval.reference.source=coco",): r"^eval.reference.path: .*needs a COCO folder.*eval.reference.source=data$",
        ("eval.reference.source=coco", f"eval.reference.path={tmp_path}/nope"): rf"^eval.reference.path: {tmp_path}/nope does not exist",
        ("eval.reference.source=coco", f"eval.reference.path={tmp_path}"): r"^eval.reference.path: .*captions_val2014.json does not exist",
        (f"eval.reference.path={coco}",): r"^eval.reference.path: is read only with eval.reference.source=coco",
    }
    for overrides, pattern in cases.items():
        with pytest.raises(UserError, match=pattern) as err:
            config.load(list(overrides))
        assert "\n" not in str(err.value)
    # the default reference leaves run keys as they were; a COCO reference is part of the key
    assert "reference" not in config.keyed_part(config.load([]))["eval"]
    cfg = config.load(["eval.reference.source=coco", f"eval.reference.path={coco}"])
    assert config.run_key(cfg) != config.run_key(config.load([]))
    with pytest.raises(UserError, match=r"^eval.inception_path: needed for eval.reference.source='coco'"):
        fid.feature_space(cfg)  # the shapes features describe only the shapes world


@pytest.mark.slow
def test_a_webdataset_run_is_evaluated_against_a_seeded_coco_draw(tmp_path, monkeypatch, inception):
    from harness.train.run import train

    coco, shards = write_coco(tmp_path / "coco"), write_shards(tmp_path / "shards")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setattr(socket.socket, "connect", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    torch.set_num_threads(1)
    overrides = ["data.name=webdataset", f"data.path={shards}", f"data.resolution={RES}", "data.train_size=48",
                 "data.val_size=16", "tokenizer.steps=5", "tokenizer.hidden=32", "tokenizer.heads=2",
                 "tokenizer.batch_size=16", "train.steps=2", "train.batch_size=8", "train.val_every=2",
                 "train.checkpoint_every=2", "train.warmup_steps=1", "model.size=xs", "model.diffusion_steps=100",
                 "text.width=32", "text.heads=2", "text.encoder_layers=1", "text.aligner_layers=1",
                 "sample.steps=2", "sample.diffusion_steps=3", "eval.fid_samples=8", "eval.batch_size=8",
                 "eval.geneval_prompts_per_tag=1", "eval.images_per_prompt=1", f"eval.inception_path={inception}",
                 "eval.reference.source=coco", f"eval.reference.path={coco}", "eval.reference.seed=5",
                 f"results_dir={tmp_path / 'results'}", "train.accelerator=cpu"]
    cfg = config.load(overrides)
    metrics = evaluate(train(cfg))
    assert np.isfinite(metrics["fid"]) and metrics["fid_samples"] == 8

    space = fid.feature_space(cfg)
    reference = fid.ensure_reference(cfg, space)
    draw = real.build(OmegaConf.create({"name": "coco", "path": str(coco), "resolution": RES, "seed": 5}), "val", 8)
    assert reference.captions() == [draw.caption(i) for i in range(8)]          # the seeded COCO draw,
    assert all(c.startswith("photo ") for c in reference.captions())            # not the training data
    pngs = sorted(reference.images.glob("*.png"))
    assert len(pngs) == 8
    assert all(np.array_equal(np.asarray(Image.open(p)), draw.image(i)) for i, p in enumerate(pngs))
    assert reference.meta["source"] == "coco" and reference.meta["data"]["seed"] == 5
    run_dir = Path(cfg.results_dir) / "runs" / config.run_key(cfg)
    manifest = json.loads((run_dir / "fid" / "generated" / "manifest.json").read_text())
    assert manifest["reference"] == reference.directory.name and manifest["n"] == 8
    # the val loss is on the COCO draw too (the paper's), not on the training data's val split
    from harness.evaluate.run import reference_val_set
    from harness.tokenizers.stage0 import load_tokenizer
    from harness.tracking import store

    val_set = reference_val_set(cfg, load_tokenizer(json.loads((run_dir / "stage0.json").read_text())["tokenizer"]),
                                reference)
    assert len(val_set) == 8 and val_set.captions == reference.captions()
    own = [r["value"] for r in store.read_metrics(run_dir) if r["key"] == "val/loss" and r["step"] == 2]
    assert np.isfinite(metrics["val_loss"]) and metrics["val_loss"] != pytest.approx(own[0], rel=1e-6)

    # built once: asked again, or by a run on other training data, nothing is recomputed
    before = (reference.directory / "meta.json").stat().st_mtime_ns
    monkeypatch.setattr(fid, "_build_reference", lambda *a, **k: pytest.fail("reference rebuilt"))
    other = config.load([*overrides, "data.seed=1", "train.lr=0.01"])
    assert fid.ensure_reference(cfg, space) == reference == fid.ensure_reference(other, space)
    assert (reference.directory / "meta.json").stat().st_mtime_ns == before
    # another seed is another draw, in another directory
    reseeded = config.load([*overrides, "eval.reference.seed=6"])
    assert fid.reference_dir(reseeded, space, 8) != reference.directory
