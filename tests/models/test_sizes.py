"""The paper ladder, built on the meta device, counts what the paper reports."""
import pytest
import torch

from harness import config
from harness.registry import LADDERS, PAPER_PARAMS
from harness.train.module import build_networks, counted_parameters


def paper_cfg(size: str, token: str):
    return config.load(["model.ladder=paper", f"model.size={size}", f"model.token={token}",
                        "model.head_depth=6", "text.aligner_layers=6", "text.width=4096",
                        "text.heads=32", "text.max_len=128", "data.resolution=256",
                        "tokenizer.downsample=16", "tokenizer.channels=16"])


@pytest.mark.parametrize("size", list(PAPER_PARAMS))
@pytest.mark.parametrize("token", ["continuous", "discrete"])
def test_paper_ladder_parameter_counts_within_15_percent(size, token):
    cfg = paper_cfg(size, token)
    with torch.device("meta"):
        nets = build_networks(cfg, token_dim=16, codebook_size=8192, vocabulary=["a"])
    n = counted_parameters(nets)
    assert abs(n / PAPER_PARAMS[size] - 1) < 0.15, (size, token, n)


def test_cpu_ladder_spans_more_than_10x():
    counts = []
    for size in LADDERS["cpu"]:
        cfg = config.load([f"model.size={size}"])
        nets = build_networks(cfg, token_dim=4, codebook_size=256, vocabulary=["a", "b"])
        counts.append(counted_parameters(nets))
    assert counts == sorted(counts)
    assert counts[-1] / counts[0] > 10
