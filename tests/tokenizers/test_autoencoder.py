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


def test_a_patch_context_tokenizer_codes_each_patch_alone():
    """context="patch": a token depends on its own patch only (a changed patch changes its token
    alone, and one patch content gets one token wherever it is); context="image" mixes the grid."""
    torch.manual_seed(0)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    x[1] = x[0]
    x[1, :, 0:4, 0:4] = 0.3  # patch 0 differs
    x[:, :, 8:12, 8:12] = x[:, :, 4:8, 0:4]  # patch 10 repeats patch 4's content
    for context, local in (("patch", True), ("image", False)):
        kl = KLAutoencoder(4, 32, 4, 16, 1, 2, context=context).eval()
        vq = VQAutoencoder(4, 32, 4, 16, 1, 2, codebook_size=512, context=context).eval()
        z = kl.encode(x)
        assert (z[0, 1:] == z[1, 1:]).all().item() == local
        assert torch.equal(z[:, 4], z[:, 10]) == local
        codes = vq.encode(x)
        assert not torch.equal(kl.encoder_out(x)[0, 0], kl.encoder_out(x)[1, 0])
        if local:
            assert torch.equal(codes[0, 1:], codes[1, 1:]) and torch.equal(codes[:, 4], codes[:, 10])
        # the decoder is local too: changing one token's latent changes its own patch only
        z2 = z.clone()
        z2[0, 5] += 1.0
        diff = (kl.decode(z2) - kl.decode(z))[0].abs().sum(0)
        patches = patchify(diff[None, None].expand(1, 3, 16, 16), 4)[0].sum(-1) > 0
        assert patches.nonzero().flatten().tolist() == ([5] if local else list(range(16)))
