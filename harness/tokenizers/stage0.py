"""Stage 0 for tokenizers: train once per config hash, measure, pre-encode the dataset.

``results/stage0/tokenizer-<token>-<hash>/`` holds ``model.pt`` (weights), ``meta.json``
(reconstruction PSNR on val, VQ codebook usage/perplexity, the latent scale, the config) and
``tokens_{train,val}.pt`` (every image's tokens, already scaled, with its caption), so generator
runs never run the encoder. The directory is built in a temp folder and renamed into place: it
exists complete or not at all. A file lock lets concurrent jobs wait for one trainer.

With ``tokenizer.pretrained_<token>`` set (a diffusers AutoencoderKL / VQModel, see ``pretrained.py``)
nothing is trained: the directory records the source in ``meta.json`` (scale 1.0, the scaling is
inside the wrapper) and holds the same pre-encoded token sets; no weights are copied.

With ``tokenizer.posterior_sample`` (continuous tokens) the directory also holds
``tokens_train_std.pt``, the posterior's std per token and channel at the tokens' scale, so that
training can draw mean + std * noise afresh each step, as MAR does (``harness.data.tokens``);
validation keeps the mean. The option enters the directory's hash only when on, so earlier
stage-0 directories keep their paths.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from harness import progress
from harness.config import config_hash, pretrained_source
from harness.data.datasets import data_key, rendered, to_float
from harness.environment import environment
from harness.io import build_once, read_json, write_json
from harness.tokenizers.autoencoder import Autoencoder, build_autoencoder


def tokenizer_dir(cfg: DictConfig, token: str) -> Path:
    tok = OmegaConf.to_container(cfg.tokenizer)
    source = pretrained_source(cfg, token)
    tok.pop("pretrained_continuous"), tok.pop("pretrained_discrete")
    posterior = tok.pop("posterior_sample") and token == "continuous"
    context = tok.pop("context")
    if source:  # training knobs do not change a pretrained tokenizer's tokens
        tok = {"pretrained": source, **{k: tok[k] for k in ("downsample", "channels", "codebook_size")}}
    if posterior:  # keyed only when on: earlier directories keep their hash
        tok["posterior_sample"] = True
    if context != "image" and not source:  # likewise
        tok["context"] = context
    key = config_hash({"data": data_key(cfg.data), "token": token, "tokenizer": tok})
    return Path(cfg.results_dir) / "stage0" / f"tokenizer-{token}-{key}"


class Tokenizer:
    """A trained tokenizer with its latent scale: images <-> generator-ready tokens."""

    def __init__(self, model: Autoencoder, scale: float, meta: dict):
        self.model, self.scale, self.meta = model.eval(), scale, meta
        self.kind = model.kind

    @property
    def token_dim(self) -> int:
        return self.model.channels

    @property
    def codebook_size(self) -> int:
        return getattr(self.model, "codebook_size", 0)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.model.encode(images)
        return tokens / self.scale if self.kind == "continuous" else tokens

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.kind == "continuous":
            tokens = tokens * self.scale
        return self.model.decode(tokens)

    def to(self, device) -> "Tokenizer":
        self.model.to(device)
        return self


def _psnr(model: Autoencoder, images: torch.Tensor, batch: int = 256) -> float:
    """Mean PSNR (dB) of reconstructions of uint8 images, computed on [0, 255]."""
    model.eval()
    values = []
    device = next(model.parameters()).device
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = to_float(images[i: i + batch]).to(device)
            recon = model.decode(model.encode(x))
            mse = ((recon - x) * 127.5).pow(2).flatten(1).mean(1).clamp_min(1e-10)
            values.append(10 * torch.log10(255.0 ** 2 / mse).cpu())
    return torch.cat(values).mean().item()


def _encode_all(model: Autoencoder, images: torch.Tensor, batch: int = 256,
                moments: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Every image's tokens; with ``moments`` (continuous) the posterior's (mean, std)."""
    model.eval()
    device = next(model.parameters()).device
    encode = model.encode_moments if moments else model.encode
    with torch.no_grad():
        out = [encode(to_float(images[i: i + batch]).to(device)) for i in range(0, len(images), batch)]
    if moments:
        return torch.cat([m.cpu() for m, _ in out]), torch.cat([s.cpu() for _, s in out])
    return torch.cat([t.cpu() for t in out])


def _train(cfg: DictConfig, token: str, out: Path) -> None:
    from harness.tokenizers.training import fit_autoencoder

    t = cfg.tokenizer
    torch.manual_seed(t.seed)
    images, _ = rendered(cfg.data, "train", cfg.results_dir)
    model = build_autoencoder(token, t.channels, t.hidden, t.downsample, cfg.data.resolution,
                              t.layers, t.heads, t.codebook_size, t.commitment, t.context)
    start = time.time()
    fit_autoencoder(model, images, t, cfg.train.accelerator, out,
                    progress.beside(tokenizer_dir(cfg, token)))
    model = model.cpu().eval()
    val_images, _ = rendered(cfg.data, "val", cfg.results_dir)
    meta = {"token": token, "psnr_val": _psnr(model, val_images), "train_seconds": time.time() - start,
            "config": OmegaConf.to_container(t), "resolution": cfg.data.resolution,
            "data_key": data_key(cfg.data), "environment": environment()}
    _encode_splits(cfg, token, model, meta, out)
    torch.save(model.state_dict(), out / "model.pt")
    write_json(out / "meta.json", meta)


def _encode_splits(cfg: DictConfig, token: str, model, meta: dict, out: Path,
                   batch: int = 256) -> None:
    """Write ``tokens_{train,val}.pt`` (and ``tokens_train_std.pt`` with
    ``tokenizer.posterior_sample``); sets ``meta["scale"]`` (train std) unless already set."""
    posterior = token == "continuous" and cfg.tokenizer.posterior_sample
    for split in ("train", "val"):
        split_images, captions = rendered(cfg.data, split, cfg.results_dir)
        std = None
        if posterior and split == "train":  # validation uses the mean: no std for val
            tokens, std = _encode_all(model, split_images, batch, moments=True)
        else:
            tokens = _encode_all(model, split_images, batch)
        if token == "continuous" and split == "train" and "scale" not in meta:
            meta["scale"] = tokens.float().std().item()
        if token == "discrete":
            counts = torch.bincount(tokens.flatten(), minlength=model.codebook_size).float()
            p = counts / counts.sum()
            meta[f"codebook_usage_{split}"] = (counts > 0).float().mean().item()
            meta[f"codebook_perplexity_{split}"] = math.exp(-(p * (p + 1e-10).log()).sum().item())
        scale = meta.get("scale", 1.0)
        tokens = tokens / scale if token == "continuous" else tokens.to(torch.int32)
        if token == "continuous":
            meta[f"token_std_{split}"] = tokens.float().std().item()
        if std is not None:  # at the tokens' scale; the mean posterior std says how wide draws are
            std = std / scale
            meta[f"posterior_std_{split}"] = std.float().mean().item()
            torch.save(std, out / f"tokens_{split}_std.pt")
        torch.save({"tokens": tokens, "captions": captions}, out / f"tokens_{split}.pt")
    meta.setdefault("scale", 1.0)


def _pretrained(cfg: DictConfig, token: str, out: Path) -> None:
    """Adopt ``tokenizer.pretrained_<token>``: check it against the config, measure, pre-encode."""
    from harness.tokenizers.pretrained import check_config, load_pretrained

    t = cfg.tokenizer
    pretrained = pretrained_source(cfg, token)
    model = load_pretrained(pretrained)
    check_config(cfg, token, model)
    gpu = torch.cuda.is_available() and cfg.train.accelerator in ("auto", "gpu", "cuda")
    model.to("cuda" if gpu else "cpu")
    start = time.time()
    source = str(Path(pretrained).resolve()) if Path(pretrained).exists() else pretrained
    val_images, _ = rendered(cfg.data, "val", cfg.results_dir)
    meta = {"token": token, "pretrained": source, "scale": 1.0,
            "psnr_val": _psnr(model, val_images, t.batch_size),
            "config": OmegaConf.to_container(t), "resolution": cfg.data.resolution,
            "data_key": data_key(cfg.data), "environment": environment()}
    _encode_splits(cfg, token, model, meta, out, t.batch_size)
    meta["encode_seconds"] = time.time() - start
    write_json(out / "meta.json", meta)


def ensure_tokenizer(cfg: DictConfig, token: str) -> Path:
    """Train (or find) the tokenizer for ``token``; returns its stage-0 directory."""
    build = _pretrained if pretrained_source(cfg, token) else _train
    return build_once(tokenizer_dir(cfg, token), lambda tmp: build(cfg, token, tmp))


def load_tokenizer(path: str | Path) -> Tokenizer:
    path = Path(path)
    meta = read_json(path / "meta.json")
    if meta.get("pretrained"):
        from harness.tokenizers.pretrained import load_pretrained

        return Tokenizer(load_pretrained(meta["pretrained"]), 1.0, meta)
    c = meta["config"]
    model = build_autoencoder(meta["token"], c["channels"], c["hidden"], c["downsample"],
                              meta["resolution"], c["layers"], c["heads"], c["codebook_size"],
                              c["commitment"], c.get("context", "image"))
    model.load_state_dict(torch.load(path / "model.pt", weights_only=True, map_location="cpu"))
    return Tokenizer(model, meta["scale"], meta)


def load_tokens(path: str | Path, split: str) -> tuple[torch.Tensor, list[str]]:
    blob = torch.load(Path(path) / f"tokens_{split}.pt", weights_only=True)
    return blob["tokens"], blob["captions"]


def load_token_std(path: str | Path, split: str = "train") -> torch.Tensor | None:
    """The posterior std of every cached token (``tokenizer.posterior_sample``), or None when the
    directory holds means only."""
    file = Path(path) / f"tokens_{split}_std.pt"
    return torch.load(file, weights_only=True) if file.exists() else None
