"""Shared fixtures: tiny ("smoke") settings, and one stage 0 per test session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.xdist_groups import pytest_collection_modifyitems  # noqa: F401 (a hook)

SMOKE = ["data.train_size=256", "data.val_size=32", "tokenizer.steps=30", "tokenizer.hidden=32",
         "tokenizer.heads=2", "train.steps=20", "train.batch_size=16", "train.val_every=10",
         "train.checkpoint_every=10", "train.log_every=5", "train.warmup_steps=5",
         "eval.fid_samples=32", "eval.geneval_prompts_per_tag=2", "eval.images_per_prompt=2",
         "sample.steps=4", "sample.diffusion_steps=5", "model.diffusion_steps=100",
         "model.size=xs", "text.width=32", "text.heads=2", "text.encoder_layers=1",
         "text.aligner_layers=1", "train.accelerator=cpu"]


@pytest.fixture(scope="session", autouse=True)
def _isolate(tmp_path_factory):
    """Tests never write into the repo's results/ or its MLflow store; one thread each."""
    root = tmp_path_factory.mktemp("mlflow")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root}/mlflow.db"
    torch.set_num_threads(1)
    yield


def session_dir(tmp_path_factory, name: str) -> Path:
    """A folder ``name`` for the whole test session, the same one for every xdist worker (beside
    the workers' own base temp dirs)."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent / f"shared-{name}" if os.environ.get("PYTEST_XDIST_WORKER") else base / name
    root.mkdir(parents=True, exist_ok=True)
    return root


# Feature nets that train in seconds; they stand in for the default ones (a minute of CPU each),
# whose stage-0 paths they are linked to, so that jobs in other processes find them there.
TINY_FEATURES = dict(channels=(16, 32, 64), dim=32, train_images=1024, test_images=256, steps=60, batch_size=64)
RESOLUTION = 32


def link_tiny_feature_nets(root: Path) -> None:
    """Under ``root/stage0``: a tiny net for the default FID feature net and each of the other nets
    (``FID_NET_SEEDS``), each at the path of the net it stands in for."""
    from harness.evaluate import features
    from harness.io import file_lock
    from harness.registry import FID_NET_SEEDS

    with file_lock(root / "features.lock"):
        for seed in (features.DEFAULT_SPEC.seed, *FID_NET_SEEDS):
            tiny = features.ensure_feature_net(RESOLUTION, root, features.FeatureSpec(**TINY_FEATURES, seed=seed))
            default = features.feature_dir(RESOLUTION, root, features.seeded(seed))
            if not default.is_symlink():
                default.symlink_to(tiny, target_is_directory=True)


@pytest.fixture(scope="session")
def stage0_root(tmp_path_factory) -> Path:
    """A results dir whose stage0/ (tokenizers, rendered data, tiny FID feature nets) is shared by
    the session: by every xdist worker, too (stage 0's file locks let one worker build what the
    others wait for)."""
    root = session_dir(tmp_path_factory, "results")
    (root / "stage0").mkdir(exist_ok=True)
    link_tiny_feature_nets(root)
    return root


@pytest.fixture
def results_dir(stage0_root, tmp_path) -> Path:
    """A fresh results dir per test that reuses the session's stage 0."""
    out = tmp_path / "results"
    out.mkdir()
    (out / "stage0").symlink_to(stage0_root / "stage0", target_is_directory=True)
    return out


@pytest.fixture
def smoke(results_dir):
    """``smoke(*extra)`` -> the smoke overrides for this test's results dir, plus ``extra``."""
    return lambda *extra, results=results_dir: SMOKE + [f"results_dir={results}", *extra]


class Crash(RuntimeError):
    """A simulated node failure."""


def crash_training_at(monkeypatch, step: int):
    """Training raises ``Crash`` right after its checkpoint callback at ``step`` (the run is left
    as a node failure would leave it); returns a function that undoes the patch."""
    import harness.train.run as T

    original = T.AtomicCheckpoint.on_train_batch_end

    def crash(self, trainer, *args):
        original(self, trainer, *args)
        if trainer.global_step == step:
            raise Crash("simulated node failure")

    monkeypatch.setattr(T.AtomicCheckpoint, "on_train_batch_end", crash)
    return lambda: monkeypatch.setattr(T.AtomicCheckpoint, "on_train_batch_end", original)

