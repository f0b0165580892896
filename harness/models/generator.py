"""The image generator: one transformer, four variants (token type x generation order).

- ``discrete`` tokens are codebook indices: embedding in, logits out, cross-entropy.
- ``continuous`` tokens are KL latents: linear in, a per-token diffusion head (``DiffLoss``) out.
- ``raster`` order is GPT-like: causal self-attention, teacher-forced next-token prediction from a
  learned start token, sampling one token at a time with a KV cache.
- ``random`` order is MAR/BERT-like: bidirectional self-attention over the sequence with a random
  subset replaced by a mask embedding (a fresh order per sample, the masked fraction drawn from a
  truncated normal on [mask_ratio_min, 1], MAR's, optionally mixed with a uniform on (0, 1] so
  that the contexts of the last sampling steps, where most tokens are known, are trained too;
  one ratio per batch as in MAR, or with ``mask_ratio_per_sample`` one per sample, each sample's
  loss averaged over its own masked tokens: the same objective, every batch a spread of contexts);
  loss on masked tokens; sampling fills the sequence in a few steps on a cosine schedule.
  Validation (``validation_loss``) masks each sample at a fixed ratio instead: a grid over the
  training distribution, so the loss does not depend on the batch.
Every layer reads the text through cross-attention. All randomness takes an optional
``torch.Generator`` so validation loss and sampling are reproducible.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.models.diffloss import DiffLoss, weighted_mean
from harness.models.transformer import Block, KVCache, init_weights, padding_mask

# Validation masks sample j of the val set at the ((j mod VAL_RATIOS) + 1/2) / VAL_RATIOS quantile
# of the training mask-ratio distribution, with its randomness seeded by VAL_SEED + j.
VAL_RATIOS = 16
VAL_SEED = 10_007


def _truncated_normal(low: float, std: float):
    """N(1, std) and its CDF at the truncation bounds ``low`` and 1."""
    normal = torch.distributions.Normal(1.0, std)
    return normal, normal.cdf(torch.tensor(low)), normal.cdf(torch.tensor(1.0))


def truncated_normal_quantile(u: Tensor, low: float, std: float) -> Tensor:
    """The mask ratio at quantile ``u`` (CPU, in [0, 1]) of N(1, std) truncated to [low, 1]."""
    normal, a, b = _truncated_normal(low, std)
    return normal.icdf(a + u * (b - a)).clamp(low, 1.0)


def mask_ratio_quantile(u: Tensor, low: float, std: float, uniform: float = 0.0) -> Tensor:
    """The mask ratio at quantile ``u`` (CPU, in [0, 1]) of the training distribution: MAR's
    N(1, std) truncated to [low, 1], mixed with weight ``uniform`` with U(0, 1) (found by bisection
    on the mixture's CDF; without the mixture, the truncated normal's quantile exactly)."""
    if uniform == 0:
        return truncated_normal_quantile(u, low, std)
    normal, a, b = _truncated_normal(low, std)

    def cdf(r: Tensor) -> Tensor:  # the truncated normal's CDF is 0 below low, 1 at 1
        return (1 - uniform) * ((normal.cdf(r) - a) / (b - a)).clamp(0.0, 1.0) + uniform * r

    lo, hi = torch.zeros_like(u), torch.ones_like(u)
    for _ in range(40):  # 2^-40: exact to float precision
        mid = (lo + hi) / 2
        below = cdf(mid) < u
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return hi


def val_generator(j: int, device: torch.device | str = "cpu") -> torch.Generator:
    """Val sample ``j``'s own randomness (masks, diffusion noise)."""
    return torch.Generator(device=device).manual_seed(VAL_SEED + j)


def mask_ratio(n: int, low: float, std: float, uniform: float, generator: torch.Generator | None,
               device: torch.device) -> Tensor:
    """``n`` training mask ratios (``mask_ratio_quantile``'s distribution), by inverse-CDF sampling."""
    u = torch.rand(n, generator=generator, device=device)
    return mask_ratio_quantile(u.cpu(), low, std, uniform).to(device)


class Generator(nn.Module):
    def __init__(self, token: str, order: str, num_tokens: int, depth: int, width: int, heads: int,
                 mlp_ratio: float = 4.0, token_dim: int = 4, codebook_size: int = 256,
                 head_width: int | None = None, head_depth: int = 3, diffusion_steps: int = 1000,
                 diffusion_batch_mul: int = 4, learn_sigma: bool = False,
                 diffusion_prediction: str = "eps", mask_ratio_min: float = 0.7,
                 mask_ratio_std: float = 0.25, mask_ratio_uniform: float = 0.0,
                 mask_ratio_per_sample: bool = False, final_norm: bool = True,
                 logits_init_std: float = 0.0):
        super().__init__()
        self.token, self.order = token, order
        self.num_tokens, self.width = num_tokens, width
        self.token_dim, self.codebook_size = token_dim, codebook_size
        self.mask_ratio_min, self.mask_ratio_std = mask_ratio_min, mask_ratio_std
        self.mask_ratio_uniform, self.mask_ratio_per_sample = mask_ratio_uniform, mask_ratio_per_sample
        self._val_ratios: Tensor | None = None  # validation's mask ratios, found at first use
        if token == "discrete":
            self.embed = nn.Embedding(codebook_size, width)
        else:
            self.embed = nn.Linear(token_dim, width)
        self.start = nn.Parameter(torch.zeros(1, 1, width))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(torch.zeros(1, num_tokens, width))
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, cross=True) for _ in range(depth))
        # the shapes study drops it (model.final_norm=false): with it, a caption feature that only
        # part of the data rewards (colour words) stayed unread for >1000 steps (docs/results/cpu-study)
        self.norm = nn.LayerNorm(width) if final_norm else nn.Identity()
        init_weights(self)
        for p in (self.start, self.mask_token, self.pos):
            nn.init.normal_(p, std=0.02)
        if token == "discrete":
            self.head = nn.Linear(width, codebook_size)
            nn.init.normal_(self.head.weight, std=logits_init_std)  # std 0: zeros
            nn.init.zeros_(self.head.bias)
        else:
            self.diffloss = DiffLoss(token_dim, width, head_width or width, head_depth,
                                     diffusion_steps, diffusion_batch_mul, learn_sigma=learn_sigma,
                                     prediction=diffusion_prediction)

    @property
    def causal(self) -> bool:
        return self.order == "raster"

    # ---- the transformer -------------------------------------------------------------------
    def backbone(self, x: Tensor, context: Tensor, context_mask: Tensor,
                 caches: list[KVCache] | None = None) -> Tensor:
        cmask = padding_mask(context_mask)
        for i, block in enumerate(self.blocks):
            x = block(x, context, cmask, causal=self.causal,
                      cache=caches[i] if caches is not None else None)
        return self.norm(x)

    def inputs(self, tokens: Tensor, masked: Tensor | None = None) -> Tensor:
        """Embed tokens at their positions. raster: shift right behind the start token;
        random: masked positions get the mask embedding."""
        x = self.embed(tokens)
        if self.order == "raster":
            x = torch.cat([self.start.expand(x.shape[0], -1, -1), x[:, :-1]], dim=1)
        elif masked is not None:
            x = torch.where(masked[..., None], self.mask_token.to(x.dtype), x)
        return x + self.pos

    def random_mask(self, batch: int, generator: torch.Generator | None,
                    device: torch.device) -> Tensor:
        """The training mask: a fresh random order per sample, and the masked count from one ratio
        per batch (MAR's) or, with ``mask_ratio_per_sample``, one ratio per sample."""
        ratio = mask_ratio(batch if self.mask_ratio_per_sample else 1, self.mask_ratio_min,
                           self.mask_ratio_std, self.mask_ratio_uniform, generator, device)
        n_masked = (ratio * self.num_tokens).ceil().clamp(min=1).long().expand(batch)
        order = torch.rand(batch, self.num_tokens, generator=generator, device=device).argsort(dim=1)
        first = torch.arange(self.num_tokens, device=device) < n_masked[:, None]  # in order's places
        return torch.zeros_like(first).scatter(1, order, first)  # the first n of each order, masked

    # ---- training ----------------------------------------------------------------------------
    def loss(self, tokens: Tensor, context: Tensor, context_mask: Tensor,
             generator: torch.Generator | None = None) -> Tensor:
        """tokens: (B, L) codes or (B, L, C) latents. Returns the mean loss over predicted tokens;
        with one mask ratio per sample, the mean over samples of each one's mean over its masked
        tokens (as ``validation_loss`` averages)."""
        b = tokens.shape[0]
        masked = None
        if self.order == "random":
            masked = self.random_mask(b, generator, tokens.device)
        z = self.backbone(self.inputs(tokens, masked), context, context_mask)
        if masked is None:
            return self.head_loss(tokens.flatten(0, 1), z.flatten(0, 1), generator)
        weight = None
        if self.mask_ratio_per_sample:  # each masked token weighs 1 / its sample's masked count
            weight = (1.0 / masked.sum(dim=1, keepdim=True)).expand_as(masked)[masked]
        return self.head_loss(tokens[masked], z[masked], generator, weight)

    def head_loss(self, target: Tensor, z: Tensor, generator: torch.Generator | None,
                  weight: Tensor | None = None) -> Tensor:
        """Mean loss of the head predicting ``target`` tokens (N,) or (N, C) from outputs ``z``;
        with ``weight`` (N,), the mean weighted by it."""
        if self.token == "discrete":
            if weight is None:
                return F.cross_entropy(self.head(z).float(), target)
            return weighted_mean(F.cross_entropy(self.head(z).float(), target, reduction="none"), weight)
        return self.diffloss(target, z, generator=generator, weight=weight)

    # ---- validation --------------------------------------------------------------------------
    def validation_masks(self, first: int, batch: int, device: torch.device
                         ) -> tuple[Tensor, list[torch.Generator]]:
        """Masks of val samples ``first .. first + batch - 1``: sample j is masked at its ratio of
        the fixed grid (``VAL_RATIOS``) in an order drawn from its own generator, seeded by j and
        returned to draw the rest of the sample's randomness (diffusion) from."""
        index = torch.arange(first, first + batch)
        if self._val_ratios is None:  # a bisection per ratio: once, not per batch
            self._val_ratios = mask_ratio_quantile((torch.arange(VAL_RATIOS) + 0.5) / VAL_RATIOS,
                                                   self.mask_ratio_min, self.mask_ratio_std,
                                                   self.mask_ratio_uniform)
        ratios = self._val_ratios[index % VAL_RATIOS]
        masks, generators = [], []
        for j, ratio in zip(index.tolist(), ratios.tolist()):
            g = val_generator(j, device)
            order = torch.rand(self.num_tokens, generator=g, device=device).argsort()
            n_masked = max(1, math.ceil(ratio * self.num_tokens))
            masks.append(torch.zeros(self.num_tokens, dtype=torch.bool, device=device)
                         .scatter(0, order[:n_masked], True))
            generators.append(g)
        return torch.stack(masks), generators

    def validation_loss(self, tokens: Tensor, context: Tensor, context_mask: Tensor,
                        first: int) -> Tensor:
        """Random order's validation loss of val samples ``first ..``: the mean over samples of each
        one's loss at its fixed mask ratio, with its own randomness (``validation_masks``). A val
        set's loss is then a fixed quadrature of the training objective over mask ratios, the same
        however the set is batched (one random ratio per batch made it depend on the batching)."""
        return self.sample_losses(tokens, context, context_mask, first).mean()

    def sample_losses(self, tokens: Tensor, context: Tensor, context_mask: Tensor,
                      first: int) -> Tensor:
        """Each sample's loss, sample ``i`` as val sample ``j = first + i``, with its own randomness
        (``val_generator(j)``; random order: at its fixed mask ratio, ``validation_masks``): in one
        forward, what a batch of that sample alone at ``first = j`` gives (random order:
        ``validation_loss``; raster: ``loss`` with ``val_generator(j)``)."""
        b, device = tokens.shape[0], tokens.device
        if self.order == "random":
            masked, generators = self.validation_masks(first, b, device)
        else:
            masked, generators = None, [val_generator(first + i, device) for i in range(b)]
        z = self.backbone(self.inputs(tokens, masked), context, context_mask)
        if masked is None:
            return torch.stack([self.head_loss(tokens[i], z[i], g) for i, g in enumerate(generators)])
        return torch.stack([self.head_loss(tokens[i][m], z[i][m], g)
                            for i, (m, g) in enumerate(zip(masked, generators))])

    # ---- sampling ----------------------------------------------------------------------------
    def draw(self, z: Tensor, guided: bool, cfg: float | Tensor, temperature: float,
              top_k: int, diffusion_steps: int, generator: torch.Generator | None) -> Tensor:
        """One token per row of ``z`` ([cond; uncond] halves when ``guided``), in one batched call: how
        sampling draws every token (and ``harness.evaluate.occupancy`` draws them at chosen contexts)."""
        if self.token == "continuous":
            return self.diffloss.sample(z, temperature, cfg, diffusion_steps, generator, guided)
        logits = self.head(z).float()
        if guided:
            cond, uncond = logits.chunk(2)
            w = cfg if not torch.is_tensor(cfg) else cfg.view(-1, 1)
            logits = uncond + w * (cond - uncond)
        logits = logits / temperature
        if top_k > 0:
            kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)

    def _empty_tokens(self, b: int, device: torch.device) -> Tensor:
        if self.token == "discrete":
            return torch.zeros(b, self.num_tokens, dtype=torch.long, device=device)
        return torch.zeros(b, self.num_tokens, self.token_dim, device=device)

    @torch.no_grad()
    def sample(self, context: Tensor, context_mask: Tensor, null_context: Tensor | None = None,
               null_mask: Tensor | None = None, cfg: float = 1.0, temperature: float = 1.0,
               steps: int = 16, diffusion_steps: int = 50, top_k: int = 0,
               generator: torch.Generator | None = None, kv_cache: bool = True) -> Tensor:
        """Generate tokens for a batch of text contexts. With ``null_context`` the unconditional
        branch runs beside the conditional one (classifier-free guidance, scale ``cfg``: constant
        for raster, linear in the number of known tokens for random order)."""
        guided = null_context is not None
        if guided:
            context = torch.cat([context, null_context])
            context_mask = torch.cat([context_mask, null_mask])
        kw = dict(guided=guided, temperature=temperature, top_k=top_k,
                  diffusion_steps=diffusion_steps, generator=generator)
        if self.order == "raster":
            return self._sample_raster(context, context_mask, cfg, kv_cache, **kw)
        return self._sample_random(context, context_mask, cfg, steps, **kw)

    def _sample_raster(self, context: Tensor, context_mask: Tensor, cfg: float, kv_cache: bool,
                       guided: bool, **kw) -> Tensor:
        rows = context.shape[0]
        b = rows // 2 if guided else rows
        tokens = self._empty_tokens(b, context.device)
        caches = [KVCache() for _ in self.blocks] if kv_cache else None
        x = self.start.expand(rows, -1, -1) + self.pos[:, :1]
        for i in range(self.num_tokens):
            if kv_cache:
                z = self.backbone(x, context, context_mask, caches)[:, -1]
            else:
                seq = tokens[:, :i] if i else tokens[:, :0]
                seq = torch.cat([seq, seq]) if guided else seq
                prefix = torch.cat([self.start.expand(rows, -1, -1), self.embed(seq)], dim=1)
                z = self.backbone(prefix + self.pos[:, : i + 1], context, context_mask)[:, -1]
            tokens[:, i] = self.draw(z, guided, cfg, **kw)
            if i + 1 < self.num_tokens:
                new = tokens[:, i: i + 1]
                new = torch.cat([new, new]) if guided else new
                x = self.embed(new) + self.pos[:, i + 1: i + 2]
        return tokens

    def _sample_random(self, context: Tensor, context_mask: Tensor, cfg: float, steps: int,
                       guided: bool, generator: torch.Generator | None, **kw) -> Tensor:
        rows = context.shape[0]
        b = rows // 2 if guided else rows
        device = context.device
        L = self.num_tokens
        tokens = self._empty_tokens(b, device)
        order = torch.rand(b, L, generator=generator, device=device).argsort(dim=1)
        masked = torch.ones(b, L, dtype=torch.bool, device=device)
        n_masked = L
        steps = max(1, min(steps, L))
        caches = [KVCache(grows=False) for _ in self.blocks]  # the caption's keys and values, once
        for k in range(steps):
            n_next = int(math.floor(L * math.cos(math.pi / 2 * (k + 1) / steps)))
            n_next = 0 if k == steps - 1 else max(1, min(n_masked - 1, n_next))
            seq, m = (torch.cat([tokens, tokens]), torch.cat([masked, masked])) if guided else (tokens, masked)
            z = self.backbone(self.inputs(seq, m), context, context_mask, caches)
            pick = order[:, n_next:n_masked]
            zc = z[:b].gather(1, pick[..., None].expand(-1, -1, z.shape[-1])).flatten(0, 1)
            if guided:
                zu = z[b:].gather(1, pick[..., None].expand(-1, -1, z.shape[-1])).flatten(0, 1)
                zc = torch.cat([zc, zu])
            w = 1 + (cfg - 1) * (L - n_next) / L
            new = self.draw(zc, guided, w, generator=generator, **kw).view(b, pick.shape[1], *tokens.shape[2:])
            idx = pick if self.token == "discrete" else pick[..., None].expand(-1, -1, self.token_dim)
            tokens = tokens.scatter(1, idx, new)
            masked = masked.scatter(1, pick, False)
            n_masked = n_next
        return tokens
