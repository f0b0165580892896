"""Per-token diffusion loss and sampler for continuous tokens (MAR / Fluid).

The transformer's output ``z`` for a token conditions a small MLP denoiser (residual blocks with
AdaLN) that predicts the noise added to that token: a cosine schedule over ``steps`` training
timesteps, epsilon-prediction, and several (t, noise) draws per token per step (the "diffusion
batch multiplier") because the head is cheap next to the transformer. Sampling is DDPM respaced to
fewer steps; the predicted clean token is clipped to +-x0_clip (tokens are unit-variance latents;
near t=T the prediction divides by sqrt(alpha_bar) ~ 1e-4 and would amplify any error); temperature
scales the noise of each reverse step; classifier-free guidance combines
the conditional and unconditional halves' epsilon, both halves sharing one noise draw.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def timestep_embedding(t: Tensor, dim: int = 256, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of integer timesteps, (N,) -> (N, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class AdaLNBlock(nn.Module):
    """LayerNorm -> shift/scale from the condition -> Linear-SiLU-Linear -> gated residual."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale, gate = self.ada(c).chunk(3, dim=-1)
        return x + gate * self.mlp(self.norm(x) * (1 + scale) + shift)


class Denoiser(nn.Module):
    """MLP epsilon-predictor: (x_t, t, z) -> eps. AdaLN and output layers start at zero."""

    def __init__(self, token_dim: int, cond_dim: int, width: int, depth: int):
        super().__init__()
        self.time = nn.Sequential(nn.Linear(256, width), nn.SiLU(), nn.Linear(width, width))
        self.cond = nn.Linear(cond_dim, width)
        self.inp = nn.Linear(token_dim, width)
        self.blocks = nn.ModuleList(AdaLNBlock(width) for _ in range(depth))
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.out = nn.Linear(width, token_dim)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for block in self.blocks:
            nn.init.zeros_(block.ada[-1].weight)
            nn.init.zeros_(block.ada[-1].bias)
        for layer in (self.final_ada[-1], self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, t: Tensor, z: Tensor) -> Tensor:
        return self.denoise(x, self.time(timestep_embedding(t)) + self.cond(z))

    def denoise(self, x: Tensor, c: Tensor) -> Tensor:
        """The network given its condition ``c`` = time embedding + projected ``z`` (a sampler
        computes both parts once per chain rather than once per step)."""
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.final_ada(c).chunk(2, dim=-1)
        return self.out(self.final_norm(h) * (1 + scale) + shift)


def cosine_alphas_cumprod(steps: int, s: float = 0.008) -> Tensor:
    """Nichol & Dhariwal's cosine schedule, betas clipped at 0.999."""
    x = torch.linspace(0, steps, steps + 1, dtype=torch.float64)
    ac = torch.cos(((x / steps) + s) / (1 + s) * math.pi / 2) ** 2
    ac = ac / ac[0]
    betas = (1 - ac[1:] / ac[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - betas, dim=0)


class DiffLoss(nn.Module):
    """The continuous-token head: a diffusion loss in training, a sampler at generation."""

    def __init__(self, token_dim: int, cond_dim: int, width: int, depth: int,
                 steps: int = 1000, batch_mul: int = 4, x0_clip: float = 10.0):
        super().__init__()
        self.x0_clip = x0_clip
        self.token_dim = token_dim
        self.steps = steps
        self.batch_mul = batch_mul
        self.net = Denoiser(token_dim, cond_dim, width, depth)
        self.register_buffer("alphas_cumprod", cosine_alphas_cumprod(steps).float(), persistent=False)

    def forward(self, target: Tensor, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Mean epsilon-MSE over ``batch_mul`` (t, noise) draws per token. target (N,C), z (N,D)."""
        target = target.repeat(self.batch_mul, 1)
        z = z.repeat(self.batch_mul, 1)
        n = target.shape[0]
        t = torch.randint(0, self.steps, (n,), device=target.device, generator=generator)
        noise = torch.randn(target.shape, device=target.device, generator=generator,
                            dtype=target.dtype)
        ac = self.alphas_cumprod[t][:, None]
        x_t = ac.sqrt() * target + (1 - ac).sqrt() * noise
        eps = self.net(x_t, t, z)
        return F.mse_loss(eps.float(), noise.float())

    def respaced(self, num_steps: int) -> tuple[Tensor, Tensor]:
        """Timesteps (descending) of a respaced chain and their cumulative alphas."""
        num_steps = min(num_steps, self.steps)
        t = torch.linspace(0, self.steps - 1, num_steps, device=self.alphas_cumprod.device)
        t = t.round().long().unique()
        return t.flip(0), self.alphas_cumprod[t].flip(0)

    @torch.no_grad()
    def sample(self, z: Tensor, temperature: float = 1.0, cfg: float | Tensor = 1.0,
               num_steps: int = 50, generator: torch.Generator | None = None,
               guided: bool = False) -> Tensor:
        """Draw one token per condition. With ``guided``, ``z`` is [cond; uncond] (2N rows) and
        the result has N rows; ``cfg`` may be a scalar or an (N,) tensor."""
        n = z.shape[0] // 2 if guided else z.shape[0]
        x = torch.randn((n, self.token_dim), device=z.device, generator=generator, dtype=z.dtype)
        ts, acs = self.respaced(num_steps)
        cond = self.net.cond(z)
        times = self.net.time(timestep_embedding(ts)).to(cond.dtype)
        for i, ac in enumerate(acs):
            ac_prev = acs[i + 1] if i + 1 < len(acs) else torch.ones_like(ac)
            eps = self.net.denoise(torch.cat([x, x]) if guided else x, times[i] + cond)
            if guided:
                eps_c, eps_u = eps.chunk(2)
                w = cfg if not torch.is_tensor(cfg) else cfg.view(-1, 1)
                eps = eps_u + w * (eps_c - eps_u)
            x0 = ((x - (1 - ac).sqrt() * eps) / ac.sqrt()).clamp(-self.x0_clip, self.x0_clip)
            beta = 1 - ac / ac_prev
            mean = (beta * ac_prev.sqrt() / (1 - ac)) * x0 + ((1 - ac_prev) * (1 - beta).sqrt() / (1 - ac)) * x
            if i + 1 < len(acs):
                var = beta * (1 - ac_prev) / (1 - ac)
                noise = torch.randn(x.shape, device=x.device, generator=generator, dtype=x.dtype)
                x = mean + var.sqrt() * temperature * noise
            else:
                x = mean
        return x
