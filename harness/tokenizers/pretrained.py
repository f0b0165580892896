"""Pretrained image tokenizers from diffusers, behind the interface of our own autoencoders.

``tokenizer.pretrained_continuous`` / ``tokenizer.pretrained_discrete`` name a diffusers ``AutoencoderKL`` or ``VQModel`` by local path or
Hugging Face id. A path may be the model folder itself or a pipeline folder with a ``vae/`` or
``vqvae/`` subfolder; a hub id may carry a subfolder after the repo (``org/repo/vae``).

- ``PretrainedKL`` (continuous, the paper's Stable-Diffusion KL-VAE): the posterior mean,
  ``(z - shift_factor) * scaling_factor``, grouped ``patch`` x ``patch`` (2x2) into tokens of
  ``patch**2 * latent_channels`` channels, row-major over the grid, channel-major inside a token
  (as MAR). 256px -> 32x32x4 latents -> 256 tokens x 16 channels; ``downsample`` = 8 * 2 = 16.
  ``encode_moments`` also gives the posterior's std, scaled and grouped the same way.
- ``PretrainedVQ`` (discrete, the paper's VQGAN): nearest-codebook indices of the quantised
  latent grid, one token per latent position; decoding looks the codes up in the quantiser's
  embedding. ``downsample`` is the VQ model's spatial factor (16 for a 16x16-token VQGAN).

Both expose ``kind``, ``channels``, ``codebook_size``, ``downsample``, ``encode`` (images in
[-1, 1] -> tokens) and ``decode`` (tokens -> images in [-1, 1]); the scaling lives inside, so the
stage-0 ``Tokenizer`` uses them with scale 1.0. ``check_config`` is the one place where the config
is checked against the model.
"""
from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from harness.config import pretrained_source
from harness.errors import UserError, one_line

FIELD = "tokenizer.pretrained_<token>"
CLASSES = ("AutoencoderKL", "VQModel")


def group(z: Tensor, p: int) -> Tensor:
    """(B, C, H, W) latents -> (B, H/p * W/p, C*p*p) tokens."""
    b, c, h, w = z.shape
    z = z.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return z.reshape(b, (h // p) * (w // p), c * p * p)


def ungroup(tokens: Tensor, p: int, side: int) -> Tensor:
    """(B, side*side, C*p*p) tokens -> (B, C, side*p, side*p) latents; inverse of ``group``."""
    b, _, d = tokens.shape
    c = d // (p * p)
    z = tokens.reshape(b, side, side, c, p, p).permute(0, 3, 1, 4, 2, 5)
    return z.reshape(b, c, side * p, side * p)


def _side(n: int) -> int:
    side = int(round(n ** 0.5))
    if side * side != n:
        raise ValueError(f"{n} tokens do not form a square grid")
    return side


def _factor(config) -> int:
    """Spatial downsampling of a diffusers Encoder: every block but the last halves the size."""
    return 2 ** (len(config.block_out_channels) - 1)


class PretrainedKL(nn.Module):
    """A frozen diffusers ``AutoencoderKL`` as a continuous tokenizer with 2x2 token grouping."""

    kind = "continuous"

    def __init__(self, vae, patch: int = 2):
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        self.patch = patch
        cfg = vae.config
        self.scaling = float(cfg.scaling_factor)
        self.shift = float(getattr(cfg, "shift_factor", None) or 0.0)
        self.channels = cfg.latent_channels * patch * patch
        self.downsample = _factor(cfg) * patch
        self.codebook_size = 0

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """(B,3,H,W) in [-1,1] -> (B, L, channels) scaled, grouped posterior means."""
        return self.encode_moments(x)[0]

    @torch.no_grad()
    def encode_moments(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B,3,H,W) in [-1,1] -> the posterior's mean and std as tokens, each (B, L, channels),
        scaled (the shift moves the mean only) and grouped like ``encode``."""
        dist = self.vae.encode(x.to(self.vae.dtype)).latent_dist
        mean = (dist.mean.float() - self.shift) * self.scaling
        return group(mean, self.patch), group(dist.std.float() * self.scaling, self.patch)

    @torch.no_grad()
    def decode(self, tokens: Tensor) -> Tensor:
        z = ungroup(tokens.float(), self.patch, _side(tokens.shape[1])) / self.scaling + self.shift
        return self.vae.decode(z.to(self.vae.dtype)).sample.float().clamp(-1, 1)


class PretrainedVQ(nn.Module):
    """A frozen diffusers ``VQModel`` as a discrete tokenizer: codebook indices, row-major."""

    kind = "discrete"

    def __init__(self, vq):
        super().__init__()
        self.vq = vq.eval().requires_grad_(False)
        cfg = vq.config
        self.codebook_size = int(cfg.num_vq_embeddings)
        self.channels = int(cfg.vq_embed_dim or cfg.latent_channels)
        self.downsample = _factor(cfg)

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """(B,3,H,W) in [-1,1] -> (B, L) code indices."""
        h = self.vq.encode(x.to(self.vq.dtype)).latents
        _, _, (_, _, idx) = self.vq.quantize(h)
        return idx.reshape(x.shape[0], -1).long()

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        b, n = codes.shape
        side = _side(n)
        shape = (b, side, side, self.channels)
        flat = codes.reshape(-1).long()
        if self.vq.config.lookup_from_codebook:
            out = self.vq.decode(flat, force_not_quantize=True, shape=shape)
        else:
            out = self.vq.decode(self.vq.quantize.get_codebook_entry(flat, shape),
                                 force_not_quantize=True)
        return out.sample.float().clamp(-1, 1)


def locate(source: str) -> tuple[str, str | None, bool]:
    """``source`` -> (path or hub id, subfolder, is local)."""
    path = Path(source).expanduser()
    if path.exists():
        if (path / "config.json").is_file():
            return str(path), None, True
        for sub in ("vae", "vqvae"):
            if (path / sub / "config.json").is_file():
                return str(path), sub, True
        raise UserError(FIELD, f"{source} has no config.json (nor a vae/ or vqvae/ subfolder)")
    parts = source.strip("/").split("/")
    if len(parts) > 2:
        return "/".join(parts[:2]), "/".join(parts[2:]), False
    return source, None, False


def load_pretrained(source: str) -> PretrainedKL | PretrainedVQ:
    """Load the diffusers tokenizer at ``source`` (local path or hub id), frozen, on the CPU."""
    try:
        import diffusers
    except ImportError as e:
        raise UserError(FIELD, "pretrained tokenizers need `pip install .[scale]` (diffusers)") from e
    name, subfolder, local = locate(source)
    kwargs = {"subfolder": subfolder, "local_files_only": local}
    try:
        config = diffusers.AutoencoderKL.load_config(name, **kwargs)  # any model class reads config.json
        kwargs["low_cpu_mem_usage"] = find_spec("accelerate") is not None  # else diffusers warns
        cls = config.get("_class_name")
        if cls not in CLASSES:
            raise UserError(FIELD, f"{source} is a {cls!r}, not a supported tokenizer", CLASSES)
        model = getattr(diffusers, cls).from_pretrained(name, **kwargs)
    except (OSError, ValueError) as e:
        raise UserError(FIELD, f"cannot load {source!r}: {one_line(e)}") from None
    return PretrainedKL(model) if cls == "AutoencoderKL" else PretrainedVQ(model)


def check_config(cfg: DictConfig, token: str, model: PretrainedKL | PretrainedVQ) -> None:
    """The config must describe the tokens the model produces: token type, ``tokenizer.downsample``
    (token grid = resolution / downsample), and ``tokenizer.channels`` (continuous) or
    ``tokenizer.codebook_size`` (discrete), which size the generator and the FLOP estimates."""
    t, source = cfg.tokenizer, pretrained_source(cfg, token)
    if model.kind != token:
        need = "an AutoencoderKL" if token == "continuous" else "a VQModel"
        raise UserError(f"tokenizer.pretrained_{token}", f"{source} gives {model.kind} tokens but model.token={token} needs {need}")
    if t.downsample != model.downsample:
        raise UserError("tokenizer.downsample", f"must be {model.downsample} for {source} "
                        f"(got {t.downsample})", [model.downsample])
    if token == "continuous" and t.channels != model.channels:
        raise UserError("tokenizer.channels", f"must be {model.channels} for {source} "
                        f"(got {t.channels})", [model.channels])
    if token == "discrete" and t.codebook_size != model.codebook_size:
        raise UserError("tokenizer.codebook_size", f"must be {model.codebook_size} for {source} "
                        f"(got {t.codebook_size})", [model.codebook_size])
