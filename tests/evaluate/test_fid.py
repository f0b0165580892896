"""FID through torch-fidelity and clean-fid: zero on identical sets, equal across the libraries,
offline, cached reference statistics, a missing Inception file caught at once, and the FID floor
(what a perfect generator scores: sampling noise, plus what its tokenizer loses)."""
from __future__ import annotations

import socket
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

from harness import config
from harness.data.datasets import build_dataset, rendered
from harness.errors import UserError
from harness.evaluate import features, fid, floor
from tests.fake_tokenizers import Blur, Identity

TINY = features.FeatureSpec(channels=(16, 32, 64), dim=32, train_images=1024, test_images=256, steps=60,
                            batch_size=64)
N = 96


def _offline(*args, **kwargs):
    raise OSError("network access attempted during an offline test")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny shapes feature space and a reference set of N real val images; network blocked."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("fid")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _offline)
        cfg = config.load([f"results_dir={tmp}/results", f"eval.fid_samples={N}", "eval.batch_size=32"])
        space = fid.feature_space(cfg, TINY)
        reference = fid.ensure_reference(cfg, space)
        yield cfg, space, reference, tmp


def _read(folder):
    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))])


@pytest.fixture(scope="module")
def perturbed(setup):
    _, _, reference, tmp = setup
    images = _read(reference.images).astype(np.float64)
    noisy = np.clip(images + np.random.default_rng(0).normal(0, 12, images.shape), 0, 255).astype(np.uint8)
    fid.write_pngs(noisy, tmp / "perturbed")
    return tmp / "perturbed"


def test_reference_set_is_the_val_split_with_both_libraries_statistics(setup):
    cfg, space, reference, _ = setup
    meta = reference.meta
    assert meta["n"] == N and meta["split"] == "val" and meta["feature_space"] == space.name
    assert meta["stats_max_abs_diff"] == 0.0  # both libraries extracted identical features
    data = config.load([f"results_dir={cfg.results_dir}", f"data.val_size={N}"]).data
    images, captions = rendered(data, "val", cfg.results_dir)
    assert reference.captions() == captions
    assert np.array_equal(_read(reference.images), images.numpy())
    assert any(reference.cache_root.glob("reference-*-stat-fid-*.pt"))  # torch-fidelity's cache
    mu, sigma = reference.cleanfid_stats()
    assert mu.shape == (TINY.dim,) and sigma.shape == (TINY.dim, TINY.dim)
    before = (reference.directory / "meta.json").stat().st_mtime_ns
    assert fid.ensure_reference(cfg, space) == reference
    assert (reference.directory / "meta.json").stat().st_mtime_ns == before


def test_a_set_against_itself_is_zero_in_both_libraries(setup):
    _, space, reference, _ = setup
    m = fid.fid_metrics(reference.images, reference, space, batch_size=32)
    assert abs(m["fid"]) < 1e-6 and abs(m["fid_cleanfid"]) < 1e-6
    assert m["precision"] == 1.0 and m["recall"] == 1.0


def test_a_perturbed_set_is_far_and_the_libraries_agree(setup, perturbed):
    _, space, reference, _ = setup
    m = fid.fid_metrics(perturbed, reference, space, batch_size=32)
    print(f"perturbed: torch-fidelity {m['fid']!r}, clean-fid {m['fid_cleanfid']!r}")
    assert m["fid"] > 1.0 and m["kid"] > 0
    assert m["fid_cleanfid"] == pytest.approx(m["fid"], rel=1e-6)
    # uncached, folder-to-folder (clean-fid's compute_fid) gives the same numbers
    direct = fid.compare_folders(perturbed, reference.images, space, batch_size=32)
    assert direct["fid"] == pytest.approx(m["fid"], rel=1e-9)
    assert direct["fid_cleanfid"] == pytest.approx(m["fid"], rel=1e-6)
    assert direct["precision"] == m["precision"] and direct["recall"] == m["recall"]


def test_the_floor_of_a_perfect_tokenizer_is_the_sampling_noise_of_fid(setup):
    cfg, space, reference, tmp = setup
    work = tmp / "floor-identity"
    out = floor.fid_floor(Identity(), fid.reference_source(cfg, N), reference, space, work, draws=2, batch_size=32)
    assert out["fid_tokenized"] == pytest.approx(out["fid_real"], rel=1e-9)  # nothing lost
    # fresh scenes (the test split), not the reference's own images: FID above 0, and each draw its own
    assert min(out["fid_real"]) > 1e-3 and out["fid_real"][0] != out["fid_real"][1]
    assert out["fid_floor"] == pytest.approx(np.mean(out["fid_tokenized"])) and out["fid_floor_sd"] > 0
    # scenes redrawn for the reference's own captions: two draws of their own
    assert len(out["fid_matched"]) == 2 and out["fid_matched"][0] != out["fid_matched"][1]
    assert out["fid_floor_matched"] == pytest.approx(np.mean(out["fid_matched"])) and out["fid_floor_matched_sd"] > 0
    assert not work.exists()  # the PNGs are measured, then removed


def test_where_every_caption_fixes_its_picture_the_matched_draws_are_the_reference():
    data = config.load(["data.layout=grid", "data.nuisance=none", "data.named_scenes=8",
                        "data.named_scene_fraction=1.0", f"data.val_size={N}"]).data
    val = build_dataset(data, "val")
    images = np.stack([val.image(i) for i in range(N)])
    matched = floor.caption_matched_scenes(data, N, draws=2)
    assert matched.shape == (2, *images.shape) and all(np.array_equal(m, images) for m in matched)


def test_a_lossy_tokenizer_raises_the_floor_and_the_floor_is_cached(setup, tmp_path):
    cfg, space, reference, _ = setup
    tok_dir = tmp_path / "tokenizer-continuous-abc"
    first = floor.ensure_fid_floor(tok_dir, Blur(), cfg, reference, space)
    assert first["draws"] == floor.DRAWS and first["n"] == N and first["split"] == "test"
    assert first["fid_floor"] > 2 * first["fid_floor_real"]
    # cached beside the tokenizer: a second call reconstructs nothing
    assert floor.ensure_fid_floor(tok_dir, None, cfg, reference, space) == first


def test_counts_must_match(setup, tmp_path):
    _, space, reference, _ = setup
    fid.write_pngs(_read(reference.images)[: N - 1], tmp_path)
    with pytest.raises(ValueError, match="equal counts"):
        fid.fid_metrics(tmp_path, reference, space)
    with pytest.raises(UserError, match="eval.fid_samples"):
        fid.ensure_reference(setup[0], space, n=fid.MIN_SAMPLES - 1)


def test_missing_inception_file_is_a_user_error_at_once(tmp_path):
    missing = tmp_path / "weights" / "pt_inception.pth"
    cfg = config.load([f"results_dir={tmp_path}", f"eval.inception_path={missing}"])
    with mock.patch.object(fid.features, "ensure_feature_net", side_effect=AssertionError("trained a feature net")):
        with pytest.raises(UserError) as err:
            fid.feature_space(cfg)
    assert not (tmp_path / "stage0").exists()  # nothing built before the error
    text = str(err.value)
    assert text.startswith("eval.inception_path:") and str(missing) in text and "https://" in text
    assert "\n" not in text


def test_other_datasets_need_inception(tmp_path):
    cfg = config.load([f"results_dir={tmp_path}", "data.name=folder", f"data.path={tmp_path}"])
    with pytest.raises(UserError, match="eval.inception_path"):
        fid.feature_space(cfg)


@pytest.mark.slow
def test_inception_file_is_used_by_both_libraries_offline(tmp_path, monkeypatch):
    """Random Inception weights in torch-fidelity's format stand in for the real file."""
    from torch_fidelity import feature_extractor_inceptionv3 as inception

    with mock.patch.object(inception, "load_state_dict_from_url", lambda *a, **k: None), \
            mock.patch.object(inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None):
        weights = inception.FeatureExtractorInceptionV3("x", ["2048"]).state_dict()
    torch.save(weights, tmp_path / "inception.pth")
    monkeypatch.setattr(socket.socket, "connect", _offline)
    cfg = config.load([f"results_dir={tmp_path}", "eval.fid_samples=8", "eval.batch_size=8",
                       f"eval.inception_path={tmp_path / 'inception.pth'}"])
    space = fid.feature_space(cfg)
    assert space.name.startswith("inception-") and space.layer == "2048"
    reference = fid.ensure_reference(cfg, space)
    assert reference.meta["feature_dim"] == 2048 and reference.meta["stats_max_abs_diff"] == 0.0
