"""``train.strategy``: validated choices, and FSDP training from the config (one CPU process over
gloo through ``fsdp_cpu.py``; FSDP at world size 1 keeps full parameters, so it must learn exactly
as a plain run does)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from harness import config
from harness.errors import UserError
from harness.sampling import load_ema
from harness.tokenizers.stage0 import load_tokenizer
from harness.tracking import store
from harness.train.run import lightning_strategy

REPO = Path(__file__).resolve().parents[2]
TINY = ["data.train_size=64", "data.val_size=16", "tokenizer.steps=5", "tokenizer.hidden=32",
        "tokenizer.heads=2", "train.steps=2", "train.batch_size=8", "train.val_every=1",
        "train.checkpoint_every=1", "train.log_every=1", "train.warmup_steps=1", "model.diffusion_steps=100",
        "model.size=xs", "text.width=32", "text.heads=2", "text.encoder_layers=1", "text.aligner_layers=1",
        "train.threads=1"]


def test_unknown_strategy_and_fsdp_without_a_gpu_are_user_errors():
    with pytest.raises(UserError) as err:
        config.load(["train.strategy=deepspeed"])
    assert str(err.value) == ("train.strategy: unknown value 'deepspeed' "
                              "(valid: auto, ddp, ddp_find_unused_parameters_true, fsdp)")
    with pytest.raises(UserError, match=r"^train.accelerator: train.strategy=fsdp runs on GPUs only.*gpu, cuda"):
        config.load(["train.strategy=fsdp", "train.accelerator=cpu"])
    with pytest.raises(UserError, match=r"^train.batch_size: 100 images per step do not split into .* = 16"):
        config.load(["train.batch_size=100", "train.devices=8", "train.accumulate_grad_batches=2"])
    cfg = config.load(["train.strategy=fsdp", "train.accelerator=gpu", "train.devices=8"])
    strategy = lightning_strategy(cfg)
    from harness.models.diffloss import AdaLNBlock
    from harness.models.transformer import Block
    from harness.train.module import EMA

    assert type(strategy).__name__ == "FSDPStrategy" and strategy._state_dict_type == "full"
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == {Block, AdaLNBlock, EMA}
    assert lightning_strategy(config.load(["train.strategy=ddp"])) == "ddp_find_unused_parameters_true"


def _train(script: list[str], results: Path, *extra: str) -> Path:
    out = subprocess.run([sys.executable, *script, *TINY, f"results_dir={results}", *extra], cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return Path(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_fsdp_training_on_cpu_matches_a_plain_run(tmp_path):
    fsdp = _train([str(REPO / "tests" / "train" / "fsdp_cpu.py")], tmp_path)
    plain = _train(["-m", "harness.train"], tmp_path, "train.accelerator=cpu")
    curves = [{(r["key"], r["step"]): r["value"] for r in store.read_metrics(d)
               if r["key"] in ("val/loss", "train/loss")} for d in (fsdp, plain)]
    print("fsdp:", curves[0], "\nplain:", curves[1])
    assert sorted(curves[0]) == sorted(curves[1]) and ("val/loss", 2) in curves[0]
    for key, value in curves[1].items():
        assert curves[0][key] == pytest.approx(value, rel=1e-5, abs=1e-6)
    saved = OmegaConf.load(fsdp / "config.yaml")
    assert saved.train.strategy == "fsdp"
    saved.train.accelerator = "gpu"  # as on a GPU machine (the helper trained on the CPU)
    cfg = config.resolve(OmegaConf.merge(OmegaConf.structured(config.RunConfig), saved))
    # the checkpoint is a full (unsharded) state dict: the sampler loads it like any other
    tok = load_tokenizer(Path(json.loads((fsdp / "stage0.json").read_text())["tokenizer"]))
    ema = load_ema(fsdp, cfg, tok)
    ckpt = torch.load(fsdp / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2
    assert all(torch.equal(v, ckpt["state_dict"][f"ema.{k}"]) for k, v in ema.state_dict().items())
