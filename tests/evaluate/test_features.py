"""The shapes-world feature net: attribute targets, a tiny training run's accuracy, the stage-0 cache."""
from __future__ import annotations

import time

import pytest
import torch

from harness.data.shapes import Scene, ShapeObject
from harness.evaluate import features
from harness.evaluate.features import FeatureSpec

SPEC = FeatureSpec(channels=(16, 32, 64), dim=32, train_images=2048, test_images=512, steps=300, batch_size=64)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("features")
    start = time.time()
    path = features.ensure_feature_net(32, root, SPEC)
    return root, path, time.time() - start


def test_scene_targets_count_shapes_colours_pairs_and_cells():
    scene = Scene([ShapeObject("circle", "red", 0.2, 0.2, 0.1), ShapeObject("circle", "blue", 0.8, 0.5, 0.1),
                   ShapeObject("triangle", "red", 0.5, 0.9, 0.1)], (50, 50, 50), "counting", "")
    t = features.scene_targets(scene)
    assert t["shape_count"].tolist() == [2, 0, 1]  # circle, square, triangle
    assert t["color_count"].tolist() == [2, 0, 1, 0, 0, 0]  # red, green, blue, ...
    assert t["pair"].sum() == 3 and t["pair"][0 * 6 + 0] == 1 and t["pair"][2 * 6 + 0] == 1
    assert t["cell"].nonzero()[0].tolist() == [0, 5, 7]  # (row 0, col 0), (1, 2), (2, 1)


def test_net_shapes_and_standardised_features():
    net = features.FeatureNet((8, 8, 8), dim=16)
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    logits = net(images)
    assert logits["shape_count"].shape == (5, 3, 5) and logits["pair"].shape == (5, 18)
    net.standardise(images)
    f = net.features(images)
    assert f.shape == (5, 16)
    assert torch.allclose(f.mean(0), torch.zeros(16), atol=1e-5)
    assert torch.allclose(f.std(0), torch.ones(16), atol=1e-4)


def test_tiny_budget_reads_attributes_well_above_chance(trained):
    _, path, seconds = trained
    _, meta = features.load_feature_net(path)
    print(f"feature net ({SPEC.steps} steps): {seconds:.1f}s, "
          + ", ".join(f"{k}={v:.3f}" for k, v in meta.items() if k.endswith("accuracy")))
    # majority-class baselines on the test split: shape counts 0.51, colour counts 0.74, cells 0.81
    assert meta["shape_count_accuracy"] > 0.6
    assert meta["color_count_accuracy"] > 0.88
    assert meta["cell_accuracy"] > 0.86
    assert meta["test_split"] == "test" and meta["spec"]["steps"] == SPEC.steps


def test_stage0_dir_is_complete_and_reused(trained, monkeypatch):
    root, path, _ = trained
    assert path == features.feature_dir(32, root, SPEC)
    assert sorted(p.name for p in path.iterdir()) == ["meta.json", "model.pt"]
    assert not path.with_name(path.name + ".partial").exists()
    before = (path / "model.pt").stat().st_mtime_ns
    with monkeypatch.context() as patched:
        patched.setattr(features, "train_feature_net", lambda *a, **k: pytest.fail("retrained a cached feature net"))
        assert features.ensure_feature_net(32, root, SPEC) == path
    assert (path / "model.pt").stat().st_mtime_ns == before
    assert features.feature_dir(64, root, SPEC) != path  # keyed by resolution and spec
    assert features.feature_dir(32, root, FeatureSpec(steps=SPEC.steps + 1)) != path


def test_loaded_net_gives_standardised_features_on_real_renders(trained):
    _, path, _ = trained
    net, _ = features.load_feature_net(path)
    images, _ = features.render_split("train", 256, 32, SPEC.seed)  # the images it standardised on
    f = net.features(images)
    assert f.abs().mean(0).max() < 3 and (f.mean(0).abs() < 0.5).all()
    assert not any(p.requires_grad for p in net.parameters()) and not net.training
