"""The diffusion head learns a known 2-D Gaussian mixture and samples it back."""
import pytest
import torch

from harness.models.diffloss import DiffLoss


def mixture(n, gen):
    means = torch.tensor([[-2.0, 0.0], [2.0, 1.0]])
    comp = torch.randint(0, 2, (n,), generator=gen)
    return means[comp] + 0.3 * torch.randn(n, 2, generator=gen), comp


@pytest.fixture(scope="module")
def trained_head():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    head = DiffLoss(token_dim=2, cond_dim=4, width=64, depth=3, steps=1000, batch_mul=4)
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


def test_diffusion_head_samples_a_gaussian_mixture(trained_head):
    head = trained_head
    samples = head.sample(torch.zeros(4000, 4), temperature=1.0, num_steps=50,
                          generator=torch.Generator().manual_seed(1))
    ref, _ = mixture(4000, torch.Generator().manual_seed(2))
    torch.testing.assert_close(samples.mean(0), ref.mean(0), atol=0.15, rtol=0)
    torch.testing.assert_close(torch.cov(samples.T), torch.cov(ref.T), atol=0.25, rtol=0)
    # bimodal: few samples between the modes
    between = ((samples[:, 0] > -0.8) & (samples[:, 0] < 0.8)).float().mean()
    assert between < 0.08


def test_guided_sampling_uses_one_batched_call_and_shares_noise():
    head = DiffLoss(token_dim=2, cond_dim=4, width=16, depth=1, steps=100)
    calls = []
    orig = head.net.denoise
    head.net.denoise = lambda x, c: calls.append(x.shape[0]) or orig(x, c)
    z = torch.randn(10, 4)
    out = head.sample(z, cfg=3.0, num_steps=5, guided=True, generator=torch.Generator().manual_seed(0))
    assert out.shape == (5, 2)
    assert calls == [10] * 5


def test_lower_temperature_concentrates_samples_on_the_modes(trained_head):
    z = torch.zeros(4000, 4)
    means = torch.tensor([[-2.0, 0.0], [2.0, 1.0]])

    def spread(samples):
        nearest = torch.cdist(samples, means).min(dim=1).values
        return nearest.pow(2).mean().sqrt()

    hot = trained_head.sample(z, temperature=1.0, num_steps=50, generator=torch.Generator().manual_seed(0))
    cold = trained_head.sample(z, temperature=0.5, num_steps=50, generator=torch.Generator().manual_seed(0))
    assert spread(cold) < 0.8 * spread(hot)
