"""Per-token diffusion loss and sampler for continuous tokens (MAR / Fluid).

The transformer's output ``z`` for a token conditions a small MLP denoiser (residual blocks with
AdaLN) that predicts the noise added to that token: a cosine schedule over ``steps`` training
timesteps, epsilon-prediction (MAR's; or velocity prediction, ``prediction="v"``), and several
(t, noise) draws per token per step (the "diffusion batch multiplier") because the head is cheap
next to the transformer. Sampling is DDPM respaced to fewer steps; the predicted clean token is
clipped to +-x0_clip (tokens are unit-variance latents; near t=T the prediction divides by
sqrt(alpha_bar) ~ 1e-4 and would amplify any error); temperature scales the noise of each reverse
step; classifier-free guidance combines the conditional and unconditional halves' epsilon, both
halves sharing one noise draw.

By default each reverse step uses the posterior variance (fixed, "sigma small"). With
``learn_sigma`` the head is MAR's: as in improved DDPM (Nichol & Dhariwal, 2021) the denoiser also
outputs a value v per channel that interpolates the step's log-variance between the posterior
variance (v=-1) and beta_t (v=+1), trained by the variational bound (VB) with the predicted mean
held fixed, so the epsilon-MSE alone trains the mean.

With ``prediction="v"`` the denoiser's output is the velocity sqrt(a) eps - sqrt(1-a) x0 (Salimans
& Ho, 2022; not the variance value above) and the loss is its MSE. In terms of the clean token,
the epsilon-MSE weights an error by the signal-to-noise ratio a/(1-a), which vanishes at high
noise, where a token's mode (e.g. an object's colour) is chosen; the velocity MSE weights it by
SNR + 1. Everything downstream (the VB term, guidance, the sampler) converts the velocity to
epsilon first: the conversion is linear in the output at a fixed x_t, so guidance on the velocity
equals guidance on epsilon.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.registry import DIFFUSION_PREDICTIONS


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
    """MLP epsilon-predictor: (x_t, t, z) -> eps, or [eps, v] (``out_dim`` = 2 * token_dim) for a
    learned variance. AdaLN and output layers start at zero."""

    def __init__(self, token_dim: int, cond_dim: int, width: int, depth: int,
                 out_dim: int | None = None):
        super().__init__()
        self.time = nn.Sequential(nn.Linear(256, width), nn.SiLU(), nn.Linear(width, width))
        self.cond = nn.Linear(cond_dim, width)
        self.inp = nn.Linear(token_dim, width)
        self.blocks = nn.ModuleList(AdaLNBlock(width) for _ in range(depth))
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.out = nn.Linear(width, out_dim or token_dim)
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


def weighted_mean(values: Tensor, weight: Tensor | None) -> Tensor:
    """The mean of ``values`` (N,), weighted by ``weight`` (N,) when given."""
    if weight is None:
        return values.mean()
    return (values * weight).sum() / weight.sum()


def cosine_alphas_cumprod(steps: int, s: float = 0.008) -> Tensor:
    """Nichol & Dhariwal's cosine schedule, betas clipped at 0.999."""
    x = torch.linspace(0, steps, steps + 1, dtype=torch.float64)
    ac = torch.cos(((x / steps) + s) / (1 + s) * math.pi / 2) ** 2
    ac = ac / ac[0]
    betas = (1 - ac[1:] / ac[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - betas, dim=0)


def posterior(ac: Tensor, ac_prev: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The step from cumulative alpha ``ac_prev`` to ``ac``: its beta, and q(x_prev | x_t, x_0)
    as the coefficients of x_0 and x_t in its mean and its variance."""
    beta = 1 - ac / ac_prev
    coef_x0 = beta * ac_prev.sqrt() / (1 - ac)
    coef_xt = (1 - ac_prev) * (1 - beta).sqrt() / (1 - ac)
    var = beta * (1 - ac_prev) / (1 - ac)
    return beta, coef_x0, coef_xt, var


def learned_log_variance(v: Tensor, log_beta: Tensor, log_posterior_var: Tensor) -> Tensor:
    """Improved DDPM's "learned range": v=-1 gives the posterior variance, v=+1 gives beta_t, in
    between the log-variances mix linearly. v is the raw network output (not clamped, as in MAR)."""
    frac = (v + 1) / 2
    return frac * log_beta + (1 - frac) * log_posterior_var


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (logvar2 - logvar1 - 1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_normal_cdf(x: Tensor) -> Tensor:
    """The tanh approximation of the standard normal CDF that improved DDPM (and MAR) use."""
    return 0.5 * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_nll(x: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """-log of the mass N(mean, std^2) puts on x's bin, in nats: improved DDPM's decoder term for
    8-bit data in [-1, 1] (bins 2/255 wide; below -0.999 / above 0.999 the bin runs to -inf / +inf).
    MAR applies it unchanged to latent tokens, so values beyond +-1 fall in those edge bins."""
    inv_std = torch.exp(-log_std)
    upper = _approx_normal_cdf(inv_std * (x - mean + 1 / 255))
    lower = _approx_normal_cdf(inv_std * (x - mean - 1 / 255))
    log_mass = torch.where(
        x < -0.999, upper.clamp(min=1e-12).log(),
        torch.where(x > 0.999, (1 - lower).clamp(min=1e-12).log(),
                    (upper - lower).clamp(min=1e-12).log()))
    return -log_mass


class DiffLoss(nn.Module):
    """The continuous-token head: a diffusion loss in training, a sampler at generation.

    With ``learn_sigma`` the denoiser outputs [eps, v] (2 * token_dim channels), the loss adds the
    VB term for v, and the sampler draws each step with the learned variance."""

    def __init__(self, token_dim: int, cond_dim: int, width: int, depth: int,
                 steps: int = 1000, batch_mul: int = 4, x0_clip: float = 10.0,
                 learn_sigma: bool = False, prediction: str = "eps"):
        super().__init__()
        if prediction not in DIFFUSION_PREDICTIONS:
            raise ValueError(f"prediction must be one of {DIFFUSION_PREDICTIONS}, got {prediction!r}")
        self.prediction = prediction
        self.x0_clip = x0_clip
        self.token_dim = token_dim
        self.steps = steps
        self.batch_mul = batch_mul
        self.learn_sigma = learn_sigma
        self.net = Denoiser(token_dim, cond_dim, width, depth,
                            out_dim=2 * token_dim if learn_sigma else token_dim)
        ac = cosine_alphas_cumprod(steps)
        self.register_buffer("alphas_cumprod", ac.float(), persistent=False)
        if learn_sigma:
            # The training chain's posterior, in float64 then stored as float32 (as MAR does). At
            # t=0 the posterior variance is 0; its log is "clipped" to that of t=1 (improved DDPM).
            beta, coef_x0, coef_xt, var = posterior(ac, torch.cat([ac.new_ones(1), ac[:-1]]))
            if steps > 1:
                var[0] = var[1]
            for name, value in (("log_beta", beta.log()), ("post_coef_x0", coef_x0),
                                ("post_coef_xt", coef_xt), ("post_log_var", var.log())):
                self.register_buffer(name, value.float(), persistent=False)

    def forward(self, target: Tensor, z: Tensor, generator: torch.Generator | None = None,
                weight: Tensor | None = None) -> Tensor:
        """Mean epsilon-MSE over ``batch_mul`` (t, noise) draws per token, plus with
        ``learn_sigma`` the mean VB term in bits (MAR's loss, unscaled). target (N,C), z (N,D);
        ``weight`` (N,), when given, weighs each token's rows in both means."""
        target = target.repeat(self.batch_mul, 1)
        z = z.repeat(self.batch_mul, 1)
        if weight is not None:
            weight = weight.repeat(self.batch_mul)
        n = target.shape[0]
        t = torch.randint(0, self.steps, (n,), device=target.device, generator=generator)
        noise = torch.randn(target.shape, device=target.device, generator=generator,
                            dtype=target.dtype)
        ac = self.alphas_cumprod[t][:, None]
        x_t = ac.sqrt() * target + (1 - ac).sqrt() * noise
        out = self.net(x_t, t, z).float()
        if self.prediction == "v":
            goal = ac.sqrt() * noise - (1 - ac).sqrt() * target
        else:
            goal = noise
        if self.learn_sigma:
            out, v = out.split(self.token_dim, dim=-1)
        if weight is None:  # the plain mean over every element, MAR's
            mse = F.mse_loss(out, goal.float())
        else:
            mse = weighted_mean(F.mse_loss(out, goal.float(), reduction="none").mean(dim=-1), weight)
        if not self.learn_sigma:
            return mse
        eps = self.to_eps(out.detach(), x_t, ac)
        return mse + weighted_mean(self.vb_bits(target.float(), x_t.float(), t, eps, v), weight)

    def to_eps(self, out: Tensor, x_t: Tensor, ac: Tensor) -> Tensor:
        """The epsilon that the denoiser's output stands for at x_t and cumulative alpha ``ac``."""
        if self.prediction == "v":
            return (1 - ac).sqrt() * x_t + ac.sqrt() * out
        return out

    def vb_bits(self, x0: Tensor, x_t: Tensor, t: Tensor, eps: Tensor, v: Tensor) -> Tensor:
        """Per-row VB term in bits per channel: KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)) for
        t > 0 and the decoder NLL of x0 at t = 0, where p has the mean implied by ``eps`` and the
        learned variance from ``v``. ``forward`` passes eps detached, so only v learns from it."""
        def at(buf: Tensor) -> Tensor:
            return buf[t][:, None]
        ac = at(self.alphas_cumprod)
        x0_pred = (x_t - (1 - ac).sqrt() * eps) / ac.sqrt()  # unclipped in training, as in MAR
        mean = at(self.post_coef_x0) * x0_pred + at(self.post_coef_xt) * x_t
        true_mean = at(self.post_coef_x0) * x0 + at(self.post_coef_xt) * x_t
        true_log_var = at(self.post_log_var)
        log_var = learned_log_variance(v, at(self.log_beta), true_log_var)
        kl = normal_kl(true_mean, true_log_var, mean, log_var)
        nll = discretized_gaussian_nll(x0, mean, 0.5 * log_var)
        return torch.where((t == 0)[:, None], nll, kl).mean(dim=-1) / math.log(2.0)

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
        the result has N rows; ``cfg`` may be a scalar or an (N,) tensor. With ``learn_sigma``
        each step's variance is learned from v on the respaced chain (guided: the conditional
        half's v, as in MAR, which keeps the conditional rows of its doubled batch)."""
        n = z.shape[0] // 2 if guided else z.shape[0]
        x = torch.randn((n, self.token_dim), device=z.device, generator=generator, dtype=z.dtype)
        ts, acs = self.respaced(num_steps)
        cond = self.net.cond(z)
        times = self.net.time(timestep_embedding(ts)).to(cond.dtype)
        for i, ac in enumerate(acs):
            ac_prev = acs[i + 1] if i + 1 < len(acs) else torch.ones_like(ac)
            x_in = torch.cat([x, x]) if guided else x
            out = self.net.denoise(x_in, times[i] + cond)
            v = None
            if self.learn_sigma:
                out, v = out.split(self.token_dim, dim=-1)
                v = v[:n]
            eps = self.to_eps(out, x_in, ac)
            if guided:
                eps_c, eps_u = eps.chunk(2)
                w = cfg if not torch.is_tensor(cfg) else cfg.view(-1, 1)
                eps = eps_u + w * (eps_c - eps_u)
            x0 = ((x - (1 - ac).sqrt() * eps) / ac.sqrt()).clamp(-self.x0_clip, self.x0_clip)
            beta, coef_x0, coef_xt, var = posterior(ac, ac_prev)
            mean = coef_x0 * x0 + coef_xt * x
            if i + 1 < len(acs):
                if v is None:
                    std = var.sqrt()
                else:
                    std = (0.5 * learned_log_variance(v.float(), beta.log(), var.log())).exp()
                    std = std.to(x.dtype)
                noise = torch.randn(x.shape, device=x.device, generator=generator, dtype=x.dtype)
                x = mean + std * temperature * noise
            else:
                x = mean
        return x
