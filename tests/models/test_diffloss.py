"""The diffusion head learns a known 2-D Gaussian mixture and samples it back, predicting epsilon
or the velocity; with learn_sigma its loss and sampler follow MAR's learned-variance formulas."""
import math

import pytest
import torch

from harness.models.diffloss import DiffLoss


def mixture(n, gen):
    means = torch.tensor([[-2.0, 0.0], [2.0, 1.0]])
    comp = torch.randint(0, 2, (n,), generator=gen)
    return means[comp] + 0.3 * torch.randn(n, 2, generator=gen), comp


# the tests that share it run on one xdist worker, so that it is trained once (~28 s)
ON_ONE_WORKER = pytest.mark.xdist_group("diffloss-trained-head")


@pytest.fixture(scope="module", params=["eps", "v"])
def trained_head(request):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    head = DiffLoss(token_dim=2, cond_dim=4, width=64, depth=3, steps=1000, batch_mul=4,
                    prediction=request.param)
    opt = torch.optim.Adam(head.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    z = torch.zeros(256, 4)
    for _ in range(1500):
        x, _ = mixture(256, gen)
        loss = head(x, z, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return head


@ON_ONE_WORKER
def test_diffusion_head_samples_a_gaussian_mixture(trained_head):
    head = trained_head
    samples = head.sample(torch.zeros(4000, 4), temperature=1.0, num_steps=50,
                          generator=torch.Generator().manual_seed(1))
    # bimodal: few samples between the modes
    between = ((samples[:, 0] > -0.8) & (samples[:, 0] < 0.8)).float().mean()
    assert between < 0.08
    # each mode: its weight (1/2), its mean and its spread (0.3)
    means = torch.tensor([[-2.0, 0.0], [2.0, 1.0]])
    for side, mean in zip((samples[:, 0] < 0, samples[:, 0] > 0), means):
        assert abs(side.float().mean().item() - 0.5) < 0.05
        torch.testing.assert_close(samples[side].mean(0), mean, atol=0.15, rtol=0)
        torch.testing.assert_close(samples[side].std(0), torch.full((2,), 0.3), atol=0.06, rtol=0)


def test_velocity_converts_to_the_noise_it_stands_for():
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(64, 3, generator=gen), torch.randn(64, 3, generator=gen)
    ac = torch.rand(64, 1, generator=gen).clamp(1e-4, 1 - 1e-4)
    x_t = ac.sqrt() * x0 + (1 - ac).sqrt() * noise
    velocity = ac.sqrt() * noise - (1 - ac).sqrt() * x0
    head = DiffLoss(token_dim=3, cond_dim=4, width=8, depth=1, steps=10, prediction="v")
    torch.testing.assert_close(head.to_eps(velocity, x_t, ac), noise)
    eps_head = DiffLoss(token_dim=3, cond_dim=4, width=8, depth=1, steps=10)
    assert eps_head.to_eps(noise, x_t, ac) is noise


def test_guided_sampling_uses_one_batched_call_and_shares_noise():
    head = DiffLoss(token_dim=2, cond_dim=4, width=16, depth=1, steps=100)
    calls = []
    orig = head.net.denoise
    head.net.denoise = lambda x, c: calls.append(x.shape[0]) or orig(x, c)
    z = torch.randn(10, 4)
    out = head.sample(z, cfg=3.0, num_steps=5, guided=True, generator=torch.Generator().manual_seed(0))
    assert out.shape == (5, 2)
    assert calls == [10] * 5


@ON_ONE_WORKER
def test_lower_temperature_concentrates_samples_on_the_modes(trained_head):
    z = torch.zeros(4000, 4)
    means = torch.tensor([[-2.0, 0.0], [2.0, 1.0]])

    def spread(samples):
        nearest = torch.cdist(samples, means).min(dim=1).values
        return nearest.pow(2).mean().sqrt()

    hot = trained_head.sample(z, temperature=1.0, num_steps=50, generator=torch.Generator().manual_seed(0))
    cold = trained_head.sample(z, temperature=0.5, num_steps=50, generator=torch.Generator().manual_seed(0))
    assert spread(cold) < 0.8 * spread(hot)


# --- learned variance (MAR's head: learn_sigma=True) -------------------------------------------

def random_head(steps=1000, learn_sigma=True, scale=0.3, seed=0, **kw):
    """A small head with random (not zero-initialised) weights, so eps and v are non-trivial."""
    head = DiffLoss(token_dim=3, cond_dim=4, width=16, depth=2, steps=steps,
                    learn_sigma=learn_sigma, **kw)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=gen))
    return head


def ref_cosine_chain(steps):
    """MAR's cosine schedule (betas_for_alpha_bar) and posterior terms, in float64."""
    def alpha_bar(s):
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
    betas = torch.tensor([min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), 0.999)
                          for i in range(steps)], dtype=torch.float64)
    ac = torch.cumprod(1 - betas, 0)
    ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
    post_var = betas * (1 - ac_prev) / (1 - ac)
    return {"beta": betas, "ac": ac,
            "coef1": betas * ac_prev.sqrt() / (1 - ac),
            "coef2": (1 - ac_prev) * (1 - betas).sqrt() / (1 - ac),
            "log_var_clipped": torch.cat([post_var[1:2], post_var[1:]]).log()}


def ref_gauss_kl(m1, lv1, m2, lv2):
    s1, s2 = (0.5 * lv1).exp(), (0.5 * lv2).exp()
    return (s2 / s1).log() + (s1 ** 2 + (m1 - m2) ** 2) / (2 * s2 ** 2) - 0.5


def ref_decoder_nll(x, mean, log_var):
    """-log mass of x's bin [x - 1/255, x + 1/255] (edge bins open beyond +-0.999), tanh CDF."""
    def cdf(u):
        return 0.5 * (1 + torch.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u ** 3)))
    std = (0.5 * log_var).exp()
    hi = torch.where(x > 0.999, torch.ones_like(x), cdf((x + 1 / 255 - mean) / std))
    lo = torch.where(x < -0.999, torch.zeros_like(x), cdf((x - 1 / 255 - mean) / std))
    return -(hi - lo).clamp(min=1e-12).log()


def test_learned_sigma_loss_matches_mar_formulas():
    steps, batch_mul = 10, 3
    head = random_head(steps=steps, batch_mul=batch_mul)
    assert head.net.out.out_features == 2 * 3
    gen = torch.Generator().manual_seed(1)
    target = 0.5 * torch.randn(6, 3, generator=gen)
    target[:, 0] -= 1.2   # exercise the decoder's open lower edge bin ...
    target[:, 2] += 1.2   # ... and the upper one
    z = torch.randn(6, 4, generator=gen)
    loss = head(target, z, generator=torch.Generator().manual_seed(2))

    # Same draws as forward, then MAR's training_losses(MSE, LEARNED_RANGE) by hand in float64.
    draws = torch.Generator().manual_seed(2)
    x0 = target.repeat(batch_mul, 1).double()
    t = torch.randint(0, steps, (x0.shape[0],), generator=draws)
    noise = torch.randn(x0.shape, generator=draws).double()
    assert (t == 0).any() and (t > 0).any()
    ch = {k: v[t][:, None] for k, v in ref_cosine_chain(steps).items()}
    x_t = ch["ac"].sqrt() * x0 + (1 - ch["ac"]).sqrt() * noise
    out = head.net(x_t.float(), t, z.repeat(batch_mul, 1)).double()
    eps, v = out[:, :3], out[:, 3:]
    pred_x0 = (1 / ch["ac"]).sqrt() * x_t - (1 / ch["ac"] - 1).sqrt() * eps
    model_mean = ch["coef1"] * pred_x0 + ch["coef2"] * x_t
    true_mean = ch["coef1"] * x0 + ch["coef2"] * x_t
    frac = (v + 1) / 2
    model_log_var = frac * ch["beta"].log() + (1 - frac) * ch["log_var_clipped"]
    kl = ref_gauss_kl(true_mean, ch["log_var_clipped"], model_mean, model_log_var)
    nll = ref_decoder_nll(x0, model_mean, model_log_var)
    vb = torch.where((t == 0)[:, None], nll, kl).mean(1) / math.log(2)
    expected = ((eps - noise) ** 2).mean() + vb.mean()
    assert vb.mean() > 0.01 * expected  # the VB term is not negligible here
    torch.testing.assert_close(loss.double(), expected, rtol=1e-4, atol=1e-5)
    # row by row too, so the few t=0 (decoder NLL) rows are checked on their own
    rows = head.vb_bits(x0.float(), x_t.float(), t, eps.float(), v.float())
    torch.testing.assert_close(rows.double(), vb, rtol=1e-4, atol=1e-5)


def test_vb_term_trains_only_the_variance_half():
    head = random_head(steps=50, batch_mul=2)
    outputs = []
    orig = head.net.forward

    def recording_forward(*args):
        out = orig(*args)
        out.retain_grad()
        outputs.append(out)
        return out
    head.net.forward = recording_forward
    gen = torch.Generator().manual_seed(0)
    target, z = torch.randn(5, 3, generator=gen), torch.randn(5, 4, generator=gen)
    head(target, z, generator=torch.Generator().manual_seed(3)).backward()
    out = outputs[0]

    # Redraw forward's t and noise from the same seed.
    draws = torch.Generator().manual_seed(3)
    t = torch.randint(0, 50, (10,), generator=draws)
    noise = torch.randn(10, 3, generator=draws)
    ac = head.alphas_cumprod[t][:, None]
    x0 = target.repeat(2, 1)
    x_t = ac.sqrt() * x0 + (1 - ac).sqrt() * noise

    # eps half: exactly the MSE gradient, nothing from the VB term (its mean is detached)
    eps = out[:, :3].detach()
    torch.testing.assert_close(out.grad[:, :3], 2 * (eps - noise) / eps.numel())
    # v half: non-zero, and exactly the VB term's gradient
    v = out[:, 3:].detach().requires_grad_()
    head.vb_bits(x0, x_t, t, eps, v).mean().backward()
    assert out.grad[:, 3:].abs().sum() > 0
    torch.testing.assert_close(out.grad[:, 3:], v.grad)


def test_learned_sigma_samples_are_finite_with_and_without_guidance():
    head = random_head(scale=0.1)
    z = torch.randn(7, 4, generator=torch.Generator().manual_seed(0))
    out = head.sample(z, temperature=0.9, num_steps=20, generator=torch.Generator().manual_seed(1))
    assert out.shape == (7, 3) and torch.isfinite(out).all()
    out = head.sample(torch.cat([z, torch.zeros_like(z)]), cfg=torch.linspace(1, 4, 7),
                      num_steps=20, guided=True, generator=torch.Generator().manual_seed(1))
    assert out.shape == (7, 3) and torch.isfinite(out).all()


def reference_chain(head, eps_of_x, var_of_step, n, num_steps, temperature, seed):
    """The respaced DDPM chain by hand with a given per-step variance, same noise draws."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=gen)
    _, acs = head.respaced(num_steps)
    for i, ac in enumerate(acs):
        ac_prev = acs[i + 1] if i + 1 < len(acs) else torch.tensor(1.0)
        x0 = ((x - (1 - ac).sqrt() * eps_of_x(x)) / ac.sqrt()).clamp(-head.x0_clip, head.x0_clip)
        beta = 1 - ac / ac_prev
        post_var = beta * (1 - ac_prev) / (1 - ac)
        mean = (beta * ac_prev.sqrt() * x0 + (1 - ac_prev) * (1 - beta).sqrt() * x) / (1 - ac)
        if i + 1 < len(acs):
            x = mean + var_of_step(beta, post_var).sqrt() * temperature * torch.randn(x.shape, generator=gen)
        else:
            x = mean
    return x


@pytest.mark.parametrize("v, expected_var", [
    (-1.0, lambda beta, post: post),                      # v=-1: posterior variance
    (1.0, lambda beta, post: beta),                       # v=+1: beta_t
    (0.0, lambda beta, post: (beta * post).sqrt()),       # in between: geometric mean
])
def test_learned_sigma_sampling_uses_the_interpolated_variance(v, expected_var):
    head = random_head(steps=100)
    head.net.denoise = lambda x, c: torch.cat([0.3 * x, torch.full_like(x, v)], dim=-1)
    out = head.sample(torch.zeros(500, 4), temperature=0.8, num_steps=10,
                      generator=torch.Generator().manual_seed(4))
    ref = reference_chain(head, lambda x: 0.3 * x, expected_var, 500, 10, 0.8, seed=4)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    if v == -1.0:  # identical to the fixed-variance head given the same epsilon
        fixed = random_head(steps=100, learn_sigma=False)
        fixed.net.denoise = lambda x, c: 0.3 * x
        same = fixed.sample(torch.zeros(500, 4), temperature=0.8, num_steps=10,
                            generator=torch.Generator().manual_seed(4))
        torch.testing.assert_close(out, same, rtol=1e-5, atol=1e-6)


def test_guided_learned_sigma_takes_the_variance_from_the_conditional_half():
    head = random_head(steps=100)
    n = 400

    def denoise(x, c):  # cond rows: eps=0.5x, v=+1; uncond rows: eps=0.2x, v=-1
        half = torch.arange(x.shape[0])[:, None] < n
        return torch.cat([torch.where(half, 0.5, 0.2) * x, torch.where(half, 1.0, -1.0).expand_as(x)], -1)
    head.net.denoise = denoise
    out = head.sample(torch.zeros(2 * n, 4), cfg=3.0, num_steps=10, guided=True,
                      generator=torch.Generator().manual_seed(5))
    ref = reference_chain(head, lambda x: (0.2 + 3.0 * 0.3) * x, lambda beta, post: beta,
                          n, 10, 1.0, seed=5)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("learn_sigma", [False, True])
def test_weighted_loss_weighs_each_tokens_draws(learn_sigma):
    """``weight`` weighs each token's rows (its ``batch_mul`` draws): the loss is the weighted mean
    of the tokens' own losses, and equal weights give the plain mean."""
    torch.manual_seed(0)
    head = DiffLoss(token_dim=2, cond_dim=4, width=16, depth=2, steps=100, batch_mul=3,
                    learn_sigma=learn_sigma)
    x, z = torch.randn(5, 2), torch.randn(5, 4)

    def loss(weight):  # the same (t, noise) draws whatever the weights
        return head(x, z, generator=torch.Generator().manual_seed(1), weight=weight).item()

    assert loss(torch.full((5,), 0.3)) == pytest.approx(loss(None), rel=1e-6)
    own = torch.tensor([loss(torch.eye(5)[i]) for i in range(5)])
    assert len(set(own.tolist())) == 5
    w = torch.tensor([1.0, 0.5, 0.25, 2.0, 0.0])
    assert loss(w) == pytest.approx(((w * own).sum() / w.sum()).item(), rel=1e-5)
