"""The sampling API: captions -> images, from a trained run (EMA weights) or live networks.

    sampler = Sampler.from_run("results/runs/continuous-random-s-...")
    images = sampler.generate(["a red circle", "two squares"], seed=0)   # uint8 (N, H, W, 3)

Classifier-free guidance scale, temperature and step counts default to the run's ``sample``
config (the paper's per-variant settings) and can be overridden per call.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from harness import config as C
from harness.data.datasets import caption_vocabulary, to_uint8
from harness.io import read_json
from harness.run_dir import RunDir
from harness.tokenizers.stage0 import Tokenizer, load_tokenizer


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_ema(run_dir: str | Path, cfg: DictConfig, tok: Tokenizer) -> nn.ModuleDict:
    """The EMA networks of a run's last checkpoint."""
    from harness.train.module import build_networks

    run = RunDir(run_dir)
    ckpt = run.latest_checkpoint()
    if ckpt is None:
        raise FileNotFoundError(f"no usable checkpoint in {run.checkpoints}")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    nets = build_networks(cfg, tok.token_dim, tok.codebook_size, caption_vocabulary(cfg.data))
    nets.load_state_dict({k[len("ema."):]: v for k, v in state.items() if k.startswith("ema.")})
    return nets.eval()


class Sampler:
    def __init__(self, nets: nn.ModuleDict, tokenizer: Tokenizer, cfg: DictConfig,
                 device: str | torch.device = "auto"):
        self.device = pick_device(device) if isinstance(device, str) else device
        self.nets = nets.eval().to(self.device)
        self.tokenizer = tokenizer.to(self.device)
        self.cfg = cfg
        self.hf = None
        if cfg.text.encoder != "learned":
            from harness.text.encoders import EncodedOnce, frozen_encoder

            self.hf = EncodedOnce(frozen_encoder(cfg.text.encoder, cfg.text.max_len).to(self.device))

    @classmethod
    def from_run(cls, run_dir: str | Path, device: str = "auto") -> "Sampler":
        run = RunDir(run_dir)
        cfg = C.load_saved(run.config)
        tok = load_tokenizer(read_json(run.stage0)["tokenizer"])
        return cls(load_ema(run.path, cfg, tok), tok, cfg, device)

    @torch.no_grad()
    def context(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.hf is not None:
            feats, mask = self.hf.encode(prompts)
        else:
            feats, mask = self.nets["text"].encode(prompts)
        return self.nets["aligner"](feats, mask)

    @torch.no_grad()
    def tokens(self, prompts: list[str], seed: int = 0, cfg_scale: float | None = None,
               temperature: float | None = None, steps: int | None = None,
               diffusion_steps: int | None = None, kv_cache: bool = True) -> torch.Tensor:
        s = self.cfg.sample
        cfg_scale = s.cfg if cfg_scale is None else cfg_scale
        context, cmask = self.context(prompts)
        null, null_mask = (None, None)
        if cfg_scale != 1.0:
            null, null_mask = self.nets["aligner"](*self.nets["aligner"].null_features(len(prompts)))
        g = torch.Generator(device=self.device).manual_seed(seed)
        return self.nets["generator"].sample(
            context, cmask, null, null_mask, cfg=cfg_scale,
            temperature=s.temperature if temperature is None else temperature,
            steps=s.steps if steps is None else steps,
            diffusion_steps=s.diffusion_steps if diffusion_steps is None else diffusion_steps,
            top_k=s.top_k, generator=g, kv_cache=kv_cache)

    @torch.no_grad()
    def generate(self, prompts: list[str], seed: int = 0, batch_size: int | None = None,
                 **kwargs) -> np.ndarray:
        """uint8 images (N, H, W, 3); batch b of the call uses seed ``seed + b``."""
        batch_size = batch_size or self.cfg.eval.batch_size
        out = []
        for b, i in enumerate(range(0, len(prompts), batch_size)):
            toks = self.tokens(prompts[i: i + batch_size], seed=seed + b, **kwargs)
            out.append(to_uint8(self.tokenizer.decode(toks)))
        return np.concatenate(out) if out else np.zeros((0, 0, 0, 3), np.uint8)
