"""tokenizer.posterior_sample: stage 0 caches the KL posterior's std beside its mean, and training
reads a fresh draw mean + std * noise per image and step, seeded by (seed, step, index);
validation reads the mean. Stage-0 directories of the default config keep their paths."""
import pytest
import torch

from harness import config
from harness.data.tokens import Draw, TokenDataModule, TokenDataset
from harness.io import read_json
from harness.tokenizers.stage0 import ensure_tokenizer, load_token_std, load_tokens, tokenizer_dir

SEED = 5


def test_stage0_paths_are_keyed_by_the_option_only_when_it_is_on():
    def name(token, *extra):
        return tokenizer_dir(config.load(["results_dir=r", *extra]), token).name

    # the paths these configs had before the option existed
    assert name("continuous") == "tokenizer-continuous-a1872ca96e66"
    assert name("discrete") == "tokenizer-discrete-f823a5d3c409"
    pretrained = "tokenizer.pretrained_continuous=org/vae"
    assert name("continuous", pretrained) == "tokenizer-continuous-f35025d56de7"
    on = "tokenizer.posterior_sample=true"
    assert name("continuous", on) != name("continuous")
    assert name("continuous", pretrained, on) != name("continuous", pretrained)
    assert name("discrete", on) == name("discrete")  # VQ codes have no posterior to sample


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    """The smoke KL tokenizer trained twice, with and without the option (same seed)."""
    from tests.conftest import SMOKE

    root = tmp_path_factory.mktemp("posterior")
    dirs = {}
    for on in (False, True):
        cfg = config.load(SMOKE + [f"results_dir={root}", "model.token=continuous",
                                   f"tokenizer.posterior_sample={str(on).lower()}"])
        dirs[on] = ensure_tokenizer(cfg, "continuous")
    return dirs


def test_stage0_caches_a_positive_std_beside_the_unchanged_means(cached):
    means, _ = load_tokens(cached[True], "train")
    std = load_token_std(cached[True])
    assert std.shape == means.shape and (std > 0).all()
    assert read_json(cached[True] / "meta.json")["posterior_std_train"] == pytest.approx(std.mean().item())
    assert load_token_std(cached[True], "val") is None  # validation uses the mean
    assert load_token_std(cached[False]) is None
    torch.testing.assert_close(load_tokens(cached[False], "train")[0], means, rtol=0, atol=0)
    with pytest.raises(ValueError, match="does not match"):  # would broadcast silently
        TokenDataset(means, [""] * len(means), std=std[:, :1])


def datamodule(cached, steps=3):
    tokens, captions = load_tokens(cached[True], "train")
    val = TokenDataset(*load_tokens(cached[True], "val"))
    train = TokenDataset(tokens, captions, std=load_token_std(cached[True]))
    return TokenDataModule(train, val, batch_size=8, steps=steps, seed=SEED)


def batches(dm, start=0, rank=0, world=1):
    dm.sampler.start, dm.sampler.rank, dm.sampler.world = start, rank, world
    return [b["tokens"] for b in dm.train_dataloader()]


def test_training_draws_are_fresh_per_step_and_replayed_exactly(cached):
    dm = datamodule(cached)
    ds = dm.train_set
    first = batches(dm)
    i = dm.sampler.batch(0)[0]  # the first image of step 0
    assert all(torch.equal(a, b) for a, b in zip(first, batches(dm)))     # same step, same draw
    assert all(torch.equal(a, b) for a, b in zip(first[1:], batches(dm, start=1)))  # resumed
    # data parallel: rank 1 of 2 draws exactly the global batch's odd items
    assert all(torch.equal(a[1::2], b) for a, b in zip(first, batches(dm, rank=1, world=2)))
    # one image at two steps: two draws around its mean, the noise standard normal
    mean, std = ds.tokens[i], ds.std[i]
    a, b = ds[Draw(SEED, 0, i)]["tokens"], ds[Draw(SEED, 1, i)]["tokens"]
    assert not torch.equal(a, b) and torch.equal(a, first[0][0])
    noise = torch.stack([(ds[Draw(SEED, s, i)]["tokens"] - mean) / std for s in range(64)])
    assert abs(noise.mean().item()) < 0.05 and noise.std().item() == pytest.approx(1.0, abs=0.05)


def test_validation_reads_the_means(cached):
    dm = datamodule(cached)
    val = torch.cat([b["tokens"] for b in dm.val_dataloader()])
    assert torch.equal(val, load_tokens(cached[True], "val")[0])
    assert torch.equal(dm.train_set[3]["tokens"], dm.train_set.tokens[3])  # an index: the mean


def test_without_std_the_sampler_yields_plain_indices(cached):
    tokens, captions = load_tokens(cached[False], "train")
    dm = TokenDataModule(TokenDataset(tokens, captions), TokenDataset(tokens, captions), 8, 2, SEED)
    assert next(iter(dm.sampler)) == dm.sampler.batch(0)
    assert torch.equal(next(iter(dm.train_dataloader()))["tokens"], tokens[dm.sampler.batch(0)])
