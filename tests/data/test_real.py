"""Real data formats on tiny fixtures written here: folder+JSONL, WebDataset shards, COCO captions."""
import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from harness import config
from harness.data import real
from harness.data.datasets import build_dataset, caption_vocabulary, rendered
from harness.errors import UserError

RED, BLUE = (255, 0, 0), (0, 0, 255)


def png(rgb=RED, size=(12, 12)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, rgb).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(rgb=RED, size=(16, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, rgb).save(buf, format="JPEG")
    return buf.getvalue()


def data_cfg(name: str, path, **kw):
    return OmegaConf.create({"name": name, "path": str(path), "resolution": kw.pop("resolution", 8),
                             "seed": kw.pop("seed", 0), "train_size": kw.pop("train_size", 1000),
                             "val_size": kw.pop("val_size", 1000), **kw})


def write_folder(root: Path, rows: list[dict], images: dict[str, bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, raw in images.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(raw)
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def names(ds) -> list[str]:
    return [e.name for e in ds.entries]


# ---- folder ----

def test_folder_hash_split_is_disjoint_deterministic_and_seeded(tmp_path):
    files = [f"img{i:03d}.png" for i in range(150)]
    root = write_folder(tmp_path / "d", [{"file": f, "caption": f"a red square {i}"}
                                         for i, f in enumerate(files)],
                        {f: png() for f in files})
    train = real.build(data_cfg("folder", root), "train", 1000)
    val = real.build(data_cfg("folder", root), "val", 1000)
    assert set(names(train)).isdisjoint(names(val))
    assert sorted(names(train) + names(val)) == files
    assert 1 <= len(val) <= 10 and all(real.is_val(n) for n in names(val))
    # capped by size in a seeded order: a smaller set is a prefix of a larger one
    small = real.build(data_cfg("folder", root), "train", 10)
    assert names(small) == names(train)[:10]
    assert names(real.build(data_cfg("folder", root, seed=1), "train", 10)) != names(small)


def test_folder_resizes_shorter_side_and_centre_crops(tmp_path):
    im = Image.new("RGB", (40, 20), RED)
    im.paste(Image.new("RGB", (20, 20), BLUE), (20, 0))  # left half red, right half blue
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    gray = io.BytesIO()
    Image.new("LA", (30, 50), (200, 255)).save(gray, format="PNG")
    root = write_folder(tmp_path / "d", [], {})
    for split, name, raw in (("train", "wide.png", buf.getvalue()), ("val", "gray.png", gray.getvalue())):
        write_folder(root / split, [{"file": name, "caption": "x"}], {name: raw})
    ds = real.build(data_cfg("folder", root, resolution=10), "train", 5)
    x = ds.image(0)
    assert x.shape == (10, 10, 3) and x.dtype == np.uint8
    # 40x20 -> 20x10, crop columns 5..15: five red columns, then five blue ones
    assert tuple(x[5, 1]) == RED and tuple(x[5, 8]) == BLUE
    g = real.build(data_cfg("folder", root, resolution=10), "val", 5).image(0)
    assert g.shape == (10, 10, 3) and (g == 200).all()


def test_folder_skips_and_counts_bad_samples_once(tmp_path, caplog):
    good = [f"ok{i}.png" for i in range(4)]
    rows = [{"file": f, "caption": "a red square"} for f in good]
    rows += [{"file": "missing.png", "caption": "gone"}, {"file": "cut.jpg", "caption": "cut"},
             {"caption": "no file field"}]
    images = {f: png() for f in good} | {"cut.jpg": jpeg(size=(64, 64))[:300]}
    root = write_folder(tmp_path / "d", [], {})
    write_folder(root / "train", rows, images)
    (root / "train" / "captions.jsonl").open("a").write("{not json\n")
    write_folder(root / "val", [{"file": "v.png", "caption": "v"}], {"v.png": png()})
    with caplog.at_level(logging.WARNING, logger="harness.data.real"):
        ds = real.build(data_cfg("folder", root), "train", 100)
    assert sorted(names(ds)) == good
    assert ds.skipped == 4  # missing file, truncated JPEG, row without "file", malformed line
    warnings = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert len(warnings) == 1 and "skipped 4" in warnings[0].getMessage()


def test_folder_without_captions_is_a_user_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="captions.jsonl"):
        real.build(data_cfg("folder", tmp_path / "empty"), "train", 4)


def test_vocabulary_is_training_words_most_frequent_first(tmp_path):
    root = write_folder(tmp_path / "d", [], {})
    write_folder(root / "train", [{"file": "a.png", "caption": "A red circle, a red square!"},
                                  {"file": "b.png", "caption": "two red dogs"}],
                 {"a.png": png(), "b.png": png()})
    write_folder(root / "val", [{"file": "c.png", "caption": "zebra"}], {"c.png": png()})
    vocab = real.vocabulary(data_cfg("folder", root))
    assert vocab[:2] == ["red", "a"] and "zebra" not in vocab
    assert set(vocab) == {"red", "a", "circle", "square", "two", "dogs"}


def test_config_dispatch_and_rendered_cache(tmp_path):
    files = [f"img{i:02d}.png" for i in range(12)]
    root = write_folder(tmp_path / "d", [], {})
    write_folder(root / "train", [{"file": f, "caption": "a blue square"} for f in files],
                 {f: png(BLUE, (20, 16)) for f in files})
    write_folder(root / "val", [{"file": f, "caption": "a blue square"} for f in files[:3]],
                 {f: png(BLUE) for f in files[:3]})
    cfg = config.load(["data.name=folder", f"data.path={root}", "data.resolution=16",
                       "data.train_size=8", f"results_dir={tmp_path / 'res'}"])
    assert len(build_dataset(cfg.data, "train")) == 8
    images, captions = rendered(cfg.data, "train", cfg.results_dir)
    assert images.shape == (8, 16, 16, 3) and captions == ["a blue square"] * 8
    assert (images[..., 2] == 255).all()
    assert caption_vocabulary(cfg.data) == ["a", "blue", "square"]


# ---- WebDataset ----

def train_keys(n: int, prefix: str = "s") -> list[str]:
    """Keys the hash split puts in train (so a tiny shard is all train)."""
    keys = [f"{prefix}{i:05d}" for i in range(200) if not real.is_val(f"{prefix}{i:05d}")]
    return keys[:n]


def write_shard(path: Path, samples: list[dict]) -> Path:
    import webdataset as wds

    path.parent.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(path)) as sink:
        for s in samples:
            sink.write(s)
    return path


def test_webdataset_shard_reads_back_and_skips_a_corrupt_member(tmp_path, caplog):
    k = train_keys(4)
    write_shard(tmp_path / "shards" / "000000.tar", [
        {"__key__": k[0], "png": png(RED, (8, 8)), "txt": "a red square"},
        {"__key__": k[1], "jpg": b"\xff\xd8 not really a jpeg", "txt": "corrupt"},
        {"__key__": k[2], "png": png(BLUE, (8, 8)), "txt": "a blue square"},
        {"__key__": k[3], "png": png(BLUE, (8, 8))},  # no caption
    ])
    with caplog.at_level(logging.WARNING, logger="harness.data.real"):
        ds = real.build(data_cfg("webdataset", tmp_path / "shards"), "train", 100)
    assert sorted(names(ds)) == [k[0], k[2]]
    assert ds.skipped == 2
    assert sum("skipped 2" in r.getMessage() for r in caplog.records) == 1
    by_caption = {ds.caption(i): ds.image(i) for i in range(len(ds))}
    assert (by_caption["a red square"] == RED).all() and (by_caption["a blue square"] == BLUE).all()


def test_webdataset_brace_pattern_and_truncated_shard(tmp_path):
    k = train_keys(6)
    write_shard(tmp_path / "s-000000.tar", [{"__key__": x, "png": png(), "txt": "one"} for x in k[:3]])
    shard = write_shard(tmp_path / "s-000001.tar",
                        [{"__key__": x, "png": png(BLUE), "txt": "two"} for x in k[3:]])
    raw = shard.read_bytes()
    shard.write_bytes(raw[: len(raw) // 2])  # a shard cut mid-write keeps its readable head
    ds = real.build(data_cfg("webdataset", str(tmp_path / "s-{000000..000001}.tar")), "train", 100)
    assert set(names(ds)) >= set(k[:3]) and len(ds) < 6
    assert ds.skipped >= 1
    with pytest.raises(UserError, match="data.path"):
        real.build(data_cfg("webdataset", str(tmp_path / "s-{000000..000002}.tar")), "train", 100)


# ---- COCO ----

def write_coco(root: Path, n_images: int = 6) -> Path:
    images, annotations = [], []
    for i in range(1, n_images + 1):
        name = f"COCO_val2014_{i:012d}.jpg"
        images.append({"id": i, "file_name": name, "height": 16, "width": 16})
        (root / "val2014").mkdir(parents=True, exist_ok=True)
        (root / "val2014" / name).write_bytes(jpeg((20 * i, 0, 0)))
        if i != n_images:  # the last image has no caption
            annotations += [{"id": 100 * i + j, "image_id": i, "caption": f"image {i} caption {j}"}
                            for j in range(3)]
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "captions_val2014.json").write_text(
        json.dumps({"images": images, "annotations": annotations}))
    return root


def test_coco_draw_is_seeded_one_caption_per_image(tmp_path):
    root = write_coco(tmp_path / "coco", n_images=8)
    draw = lambda seed, n: real.build(data_cfg("coco", root, seed=seed), "val", n)  # noqa: E731
    a, b = draw(0, 4), draw(0, 4)
    pairs = [(e.name, e.caption) for e in a.entries]
    assert pairs == [(e.name, e.caption) for e in b.entries]
    assert len({n for n, _ in pairs}) == 4  # one caption per image
    for name, caption in pairs:
        assert caption.startswith(f"image {int(name[-16:-4])} caption")
    assert [(e.name, e.caption) for e in draw(0, 3).entries] == pairs[:3]
    assert any([(e.name, e.caption) for e in draw(s, 4).entries] != pairs for s in (1, 2, 3))
    assert "COCO_val2014_000000000008.jpg" not in names(draw(0, 100))  # captionless image
    assert len(draw(0, 100)) == 7


def test_coco_has_no_train_split(tmp_path):
    root = write_coco(tmp_path / "coco")
    with pytest.raises(UserError, match="data.name.*evaluation-only"):
        real.build(data_cfg("coco", root), "train", 4)
    with pytest.raises(UserError, match="data.path"):
        real.build(data_cfg("coco", tmp_path), "val", 4)
