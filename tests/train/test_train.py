"""One tracked training run per variant; resume is exact."""
import json

import pytest
import torch

from harness import config
from harness.tracking import store
from harness.train.run import train
from harness.run_status import read_status
from tests.conftest import Crash, crash_training_at

VARIANTS = [("continuous", "random"), ("continuous", "raster"), ("discrete", "random"),
            ("discrete", "raster")]


def val_losses(run_dir):
    return {r["step"]: r["value"] for r in store.read_metrics(run_dir) if r["key"] == "val/loss"}


@pytest.mark.parametrize("token,order", VARIANTS)
def test_smoke_training_lowers_validation_loss(smoke, token, order):
    cfg = config.load(smoke(f"model.token={token}", f"model.order={order}",
                            "train.steps=40", "train.lr=3e-3"))
    run = train(cfg)
    losses = val_losses(run)
    assert set(losses) >= {0, 10, 20, 30, 40}
    assert losses[40] < losses[0], losses
    status = read_status(run)
    assert status["status"] == "trained"
    # make bench separates compute from overhead with these
    assert status["started"] < status["first_step"] < status["updated"]
    assert 0 < status["train_compute_seconds"] < status["updated"] - status["started"]
    assert (run / "checkpoints" / "last.ckpt").exists()
    assert (run / "mlflow_run_id").exists() and not (run / "mlflow_pending").exists()
    info = json.loads((run / "info.json").read_text())
    assert info["params"] > 0 and info["train_flops"] > 0
    (env,) = json.loads((run / "environment.json").read_text())
    assert torch.__version__.startswith(env["torch"])  # the software it trained with
    # a second call finds it trained and returns at once
    assert train(cfg) == run


@pytest.mark.parametrize("accumulate,posterior", [(1, "false"), (2, "true")])
def test_resume_after_crash_equals_uninterrupted_run(smoke, results_dir, tmp_path, monkeypatch, accumulate,
                                                     posterior):
    """With accumulation too: checkpoints are taken only after an optimizer step, so the resumed
    run's micro-batches (data and randomness) keep their phase; with posterior sampling, the resumed
    run draws the tokens the uninterrupted one drew."""
    overrides = smoke("model.token=continuous", "model.order=random",
                      f"train.accumulate_grad_batches={accumulate}",
                      f"tokenizer.posterior_sample={posterior}")
    straight = train(config.load(overrides))
    other = tmp_path / "other"
    other.mkdir()
    (other / "stage0").symlink_to(results_dir / "stage0", target_is_directory=True)
    cfg = config.load(overrides + [f"results_dir={other}"])  # the same run in another results dir

    restore = crash_training_at(monkeypatch, 15)
    with pytest.raises(Crash):
        train(cfg)
    restore()
    resumed = train(cfg)
    a = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert val_losses(straight)[20] == val_losses(resumed)[20]
    # validated once per validation step, not once per micro-batch of it
    steps = [r["step"] for r in store.read_metrics(straight) if r["key"] == "val/loss"]
    assert steps == [0, 10, 20]


def test_a_learned_variance_head_trains_samples_and_is_its_own_run(smoke):
    from harness.sampling import Sampler

    plain = config.load(smoke("train.steps=20"))
    cfg = config.load(smoke("train.steps=20", "model.learn_sigma=true", "train.lr=3e-3"))
    assert config.run_key(cfg) != config.run_key(plain)
    run = train(cfg)
    losses = val_losses(run)
    assert losses[20] < losses[0], losses
    images = Sampler.from_run(run).generate(["a photo of a red circle"] * 2, seed=0)
    assert images.shape[0] == 2 and images.dtype.name == "uint8"


@pytest.mark.parametrize("order", ["random", "raster"])
def test_the_null_caption_probe_reads_no_caption_and_is_logged_beside_the_caption_gain(smoke, order):
    """``val/loss_null`` is the loss with every sample given the null caption: it is the same
    whichever captions the batch carries (the true loss is not), and ``val/caption_null_gain`` is
    its excess over the true loss at every validation."""
    from harness.evaluate.run import trained_module
    from harness.io import read_json
    from harness.train.module import next_captions
    from harness.tokenizers.stage0 import load_tokenizer
    from harness.train.run import prepare_data

    cfg = config.load(smoke("model.token=discrete", f"model.order={order}", "train.steps=10"))
    run = train(cfg)
    logged = {}
    for r in store.read_metrics(run):
        logged.setdefault(r["step"], {})[r["key"]] = r["value"]
    for step in (0, 10):
        m = logged[step]
        assert m["val/caption_null_gain"] == pytest.approx(m["val/loss_null"] - m["val/loss"])
    module = trained_module(run, cfg, load_tokenizer(read_json(run / "stage0.json")["tokenizer"]))
    batch = next(iter(torch.utils.data.DataLoader(prepare_data(cfg)[2], batch_size=8)))
    other = next_captions(batch)
    with torch.no_grad():
        assert module(batch, 0, 0, "null").item() == module(other, 0, 0, "null").item()
        assert module(batch, 0, 0, "loss").item() != module(other, 0, 0, "loss").item()
