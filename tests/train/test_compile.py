"""``train.compile``: the trained networks' transformer blocks and diffusion head run compiled
(torch.compile, inductor: on the CPU it builds C++ kernels with gcc) and learn as the eager ones."""
from __future__ import annotations

import time

import pytest
import torch
from torch._dynamo.utils import counters

from tests.train.tiny_fit import fit, module, tiny_config

RUN = ("model.token=continuous", "model.order=random", "train.steps=3")


@pytest.mark.slow
def test_compiled_training_matches_eager():
    eager = fit(tiny_config(*RUN), draws=False)
    torch._dynamo.reset()
    counters.clear()
    cfg = tiny_config(*RUN, "train.compile=true")
    compiled = module(cfg)
    # compiled in place: parameter names (checkpoints, EMA, FSDP units) are unchanged
    assert compiled.state_dict().keys() == module(tiny_config(*RUN)).state_dict().keys()
    start = time.time()
    records = fit(cfg, compiled, draws=False)
    print(f"compiled run: {time.time() - start:.0f} s, graphs: {counters['stats']['unique_graphs']}")
    assert counters["stats"]["unique_graphs"] >= 2  # a transformer block, the denoiser
    assert [r["loss"] for r in records] == pytest.approx([r["loss"] for r in eager], rel=1e-4)
