"""Tokenizers: shared backbone, round trips, codebook health."""
import torch
import torch.nn.functional as F

from harness.tokenizers.autoencoder import KLAutoencoder, VQAutoencoder, patchify, unpatchify


def test_patchify_round_trip():
    x = torch.randn(2, 3, 16, 16)
    p = patchify(x, 4)
    assert p.shape == (2, 16, 48)
    assert torch.equal(unpatchify(p, 4), x)
    # token k covers pixel block (k // 4, k % 4)
    assert torch.equal(p[0, 5].view(3, 4, 4), x[0, :, 4:8, 4:8])


def test_both_tokenizers_share_the_backbone_shape():
    kl = KLAutoencoder(channels=4, hidden=32, downsample=4, resolution=16, layers=1, heads=2)
    vq = VQAutoencoder(channels=4, hidden=32, downsample=4, resolution=16, layers=1, heads=2,
                       codebook_size=16)
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    assert kl.encode(x).shape == (3, 16, 4)
    assert vq.encode(x).shape == (3, 16)
    assert kl.decode(kl.encode(x)).shape == x.shape == vq.decode(vq.encode(x)).shape
    sizes = lambda m: sorted(p.shape for n, p in m.named_parameters() if "decoder" in n)
    assert sizes(kl) == sizes(vq)


def _fit(model, x, steps=150):
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        recon, aux = model(x)
        loss = F.mse_loss(recon, x) + (1e-4 * aux["kl"] if "kl" in aux else aux["commit"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_round_trip_reconstructs_after_training():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    x = torch.zeros(8, 3, 16, 16) - 0.5
    for i in range(8):
        x[i, i % 3, 2 + i: 8 + i, 3:10] = 0.9
    for model in (KLAutoencoder(4, 32, 4, 16, 1, 2), VQAutoencoder(4, 32, 4, 16, 1, 2, codebook_size=32)):
        before = F.mse_loss(model.eval().decode(model.encode(x)), x).item()
        model.train()
        _fit(model, x)
        after = F.mse_loss(model.decode(model.encode(x)), x).item()
        assert after < 0.25 * before, (type(model).__name__, before, after)


def test_vq_restarts_dead_codes_and_keeps_codes_normalised():
    torch.manual_seed(0)
    vq = VQAutoencoder(4, 32, 4, 16, 1, 2, codebook_size=64, dead_after=3)
    vq.codebook[:] = F.normalize(torch.ones(64, 4), dim=-1)  # every code the same: all but one dead
    x = torch.rand(8, 3, 16, 16) * 2 - 1
    vq.train()
    for _ in range(5):
        _, aux = vq(x)
    used = vq.encode(x).unique().numel()
    assert used > 4
    torch.testing.assert_close(vq.codebook.norm(dim=-1), torch.ones(64), atol=1e-5, rtol=0)
    assert 0 < aux["usage"] <= 1 and aux["perplexity"] >= 1
