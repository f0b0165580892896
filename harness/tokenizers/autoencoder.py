"""Image tokenizers: one patch-transformer encoder/decoder backbone, two bottlenecks.

The continuous tokenizer is a KL autoencoder (a diagonal Gaussian latent, as Stable Diffusion's
VAE); the discrete one is a VQ autoencoder. Both share the backbone, the downsampling factor and
the latent channel count, so the study's comparison isolates quantisation. The VQ codebook is kept
healthy by l2-normalised, low-dimensional codes updated by EMA, with dead codes restarted from the
batch (ViT-VQGAN / SoundStream practice); usage and perplexity are reported.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.models.transformer import Block, init_weights


def patchify(x: Tensor, p: int) -> Tensor:
    """(B, 3, H, W) -> (B, H/p * W/p, 3*p*p), row-major over the token grid."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


def unpatchify(x: Tensor, p: int) -> Tensor:
    b, n, _ = x.shape
    side = int(math.isqrt(n))
    x = x.reshape(b, side, side, 3, p, p).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, 3, side * p, side * p)


class PatchTransformer(nn.Module):
    """Linear in -> learned positions -> bidirectional blocks -> LayerNorm -> linear out.

    A ViT-VQGAN-style backbone: on a CPU, matmuls run ~10x more FLOP/s than the small
    convolutions of a conv autoencoder, so tokenizers train in minutes. ``context="patch"``: every
    token is computed from its own patch alone (no positions; the blocks see a sequence of one), so
    identical patches get identical tokens wherever they are, as a convolutional tokenizer's
    receptive field keeps its tokens local. With attention across the grid, a VQ spreads one
    patch's content over hundreds of codes that depend on the rest of the image (calibration
    item 19 in docs/results/cpu-study/README.md)."""

    def __init__(self, in_dim: int, out_dim: int, width: int, layers: int, heads: int,
                 num_tokens: int, context: str = "image"):
        super().__init__()
        self.local = context == "patch"
        self.inp = nn.Linear(in_dim, width)
        self.pos = None if self.local else nn.Parameter(torch.zeros(1, num_tokens, width))
        self.blocks = nn.ModuleList(Block(width, heads, cross=False) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, out_dim)
        init_weights(self)
        if self.pos is not None:
            nn.init.normal_(self.pos, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        h = self.inp(x)
        h = h.reshape(b * n, 1, -1) if self.local else h + self.pos
        for block in self.blocks:
            h = block(h)
        return self.out(self.norm(h)).reshape(b, n, -1)


class Autoencoder(nn.Module):
    """Shared backbone: images in [-1, 1] (B,3,H,W) <-> token sequences (B, L, channels).

    The encoder maps each ``downsample`` x ``downsample`` patch to one token (mixing across the
    grid); the decoder maps tokens back to patches."""

    kind = ""

    def __init__(self, channels: int, hidden: int, downsample: int, enc_out: int,
                 resolution: int, layers: int, heads: int, context: str = "image"):
        super().__init__()
        self.channels, self.downsample = channels, downsample
        n = (resolution // downsample) ** 2
        patch = 3 * downsample * downsample
        self.encoder = PatchTransformer(patch, enc_out, hidden, layers, heads, n, context)
        self.decoder_net = PatchTransformer(channels, patch, hidden, layers, heads, n, context)

    def encoder_out(self, x: Tensor) -> Tensor:
        return self.encoder(patchify(x, self.downsample))

    def decoder(self, tokens: Tensor) -> Tensor:
        return unpatchify(self.decoder_net(tokens), self.downsample)


class KLAutoencoder(Autoencoder):
    """Continuous tokens: the posterior mean is the token; training samples the posterior."""

    kind = "continuous"

    def __init__(self, channels: int = 4, hidden: int = 128, downsample: int = 4,
                 resolution: int = 32, layers: int = 2, heads: int = 4, context: str = "image"):
        super().__init__(channels, hidden, downsample, 2 * channels, resolution, layers, heads, context)
        # start with a narrow posterior (std ~0.05): unit-variance sampling noise on latents whose
        # means start near 0.1 would drown the signal and the decoder would learn to blur
        nn.init.constant_(self.encoder.out.bias[channels:], -6.0)

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        mean, logvar = self.encoder_out(x).chunk(2, dim=-1)
        logvar = logvar.clamp(-30, 20)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp() if self.training else mean
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).sum(dim=(1, 2)).mean()
        return self.decoder(z), {"kl": kl}

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """(B,3,H,W) -> (B, L, C) posterior means (unscaled)."""
        mean, _ = self.encoder_out(x).chunk(2, dim=-1)
        return mean

    @torch.no_grad()
    def encode_moments(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B,3,H,W) -> the posterior's mean and std, each (B, L, C) (unscaled)."""
        mean, logvar = self.encoder_out(x).chunk(2, dim=-1)
        return mean, (0.5 * logvar.clamp(-30, 20)).exp()

    @torch.no_grad()
    def decode(self, tokens: Tensor) -> Tensor:
        return self.decoder(tokens).clamp(-1, 1)


class VQAutoencoder(Autoencoder):
    """Discrete tokens: nearest l2-normalised code, EMA codebook, dead-code restart."""

    kind = "discrete"

    def __init__(self, channels: int = 4, hidden: int = 128, downsample: int = 4,
                 resolution: int = 32, layers: int = 2, heads: int = 4, codebook_size: int = 256,
                 decay: float = 0.99, commitment: float = 0.25, dead_after: int = 50,
                 context: str = "image"):
        super().__init__(channels, hidden, downsample, channels, resolution, layers, heads, context)
        self.codebook_size, self.decay, self.commitment = codebook_size, decay, commitment
        self.dead_after = dead_after
        codes = F.normalize(torch.randn(codebook_size, channels), dim=-1)
        self.register_buffer("codebook", codes)
        self.register_buffer("ema_sum", codes.clone())
        self.register_buffer("ema_count", torch.ones(codebook_size))
        self.register_buffer("unused_steps", torch.zeros(codebook_size))

    def quantize(self, flat: Tensor) -> tuple[Tensor, Tensor]:
        """flat (N, C) l2-normalised -> (nearest code vectors, indices)."""
        idx = (flat @ self.codebook.t()).argmax(dim=-1)
        return self.codebook[idx], idx

    @torch.no_grad()
    def _update_codebook(self, flat: Tensor, idx: Tensor) -> None:
        onehot = F.one_hot(idx, self.codebook_size).type(flat.dtype)
        counts = onehot.sum(0)
        sums = onehot.t() @ flat
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(counts)
            torch.distributed.all_reduce(sums)
        self.ema_count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        self.codebook.copy_(F.normalize(self.ema_sum, dim=-1))
        self.unused_steps.add_(1).masked_fill_(counts > 0, 0)
        dead = (self.unused_steps >= self.dead_after).nonzero().squeeze(-1)
        if len(dead):
            pick = torch.randint(0, flat.shape[0], (len(dead),), device=flat.device)
            self.codebook[dead] = flat[pick]
            self.ema_sum[dead] = flat[pick]
            self.ema_count[dead] = 1.0
            self.unused_steps[dead] = 0

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        h = self.encoder_out(x)
        flat = F.normalize(h.flatten(0, 1), dim=-1)
        q, idx = self.quantize(flat)
        if self.training:
            self._update_codebook(flat, idx)
        commit = F.mse_loss(flat, q.detach())
        q = flat + (q - flat).detach()
        probs = torch.bincount(idx, minlength=self.codebook_size).float() / idx.numel()
        perplexity = torch.exp(-(probs * (probs + 1e-10).log()).sum())
        return self.decoder(q.view(x.shape[0], -1, self.channels)), {"commit": self.commitment * commit, "perplexity": perplexity,
                                    "usage": (probs > 0).float().mean()}

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """(B,3,H,W) -> (B, L) code indices."""
        h = self.encoder_out(x)
        b, n, c = h.shape
        _, idx = self.quantize(F.normalize(h.flatten(0, 1), dim=-1))
        return idx.view(b, n)

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        return self.decoder(self.codebook[codes]).clamp(-1, 1)


def build_autoencoder(token: str, channels: int, hidden: int, downsample: int, resolution: int,
                      layers: int, heads: int, codebook_size: int,
                      commitment: float = 0.25, context: str = "image") -> Autoencoder:
    if token == "continuous":
        return KLAutoencoder(channels, hidden, downsample, resolution, layers, heads, context)
    return VQAutoencoder(channels, hidden, downsample, resolution, layers, heads, codebook_size,
                         commitment=commitment, context=context)
