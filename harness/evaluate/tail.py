"""What a run knows of the shapes world's long tail (``data.named_scenes``): the quantization
model's learning curve (Michaud et al. 2023), measured kind by kind.

Every named kind has one picture: its objects on the world's plain background. The run's EMA
networks score it twice, with the kind's own caption and with the caption of the kind half the
ranks away (the same picture and randomness, another name); the difference is what the name is
worth to the model, the kind's caption gain. A kind counts as learned when its name removes at
least half of its picture's loss (own-caption loss <= half the other-caption loss).

  tail_kinds_learned      how many kinds are learned
  tail_loss               the loss expected over named scenes (each kind's own-caption loss,
                          weighted by its frequency)
  tail_gain_<a>_<b>       mean caption gain of the kinds of frequency ranks a..b (1-based)

``analysis/quantization.py`` compares how the tail loss falls with size with what the kinds
learned predict: the probability mass of the kinds not learned (the quantization model).
"""
from __future__ import annotations

import numpy as np
import torch
from omegaconf import DictConfig

from harness.data.datasets import to_float
from harness.data.shapes import NamedScenes, named_scene, named_scene_probabilities, render
from harness.data.tokens import TokenDataset

REPEATS = 4  # fresh randomness (masks, diffusion noise) per scoring, averaged
_BUCKETS = (1, 9, 33, 129, 513, 2049)


def kind_data(named: NamedScenes, cells: int, resolution: int, tok, text: DictConfig
              ) -> tuple[TokenDataset, TokenDataset]:
    """(own captions, other captions): each kind's picture through the run's tokenizer, with
    its own caption and with the caption of kind (k + K/2) mod K (``text``: the run's text
    config, for a frozen encoder's features)."""
    from harness.text.cache import caption_features

    scenes = [named_scene(k, named.count, cells, color=named.color) for k in range(named.count)]
    images = np.stack([render(scene, resolution) for scene in scenes])
    with torch.no_grad():
        tokens = torch.cat([tok.encode(to_float(torch.from_numpy(images[i:i + 256]))).cpu()
                            for i in range(0, len(images), 256)])
    half = named.count // 2
    own = [scene.caption for scene in scenes]
    own_text = caption_features(text, own)
    other_text = None if own_text is None else {k: torch.cat([v[half:], v[:half]]) for k, v in own_text.items()}
    return TokenDataset(tokens, own, own_text), TokenDataset(tokens, own[half:] + own[:half], other_text)


@torch.no_grad()
def kind_losses(module, data: TokenDataset, batch_size: int = 128) -> np.ndarray:
    """Each kind's loss under the module's EMA networks, averaged over ``REPEATS`` draws of the
    probe's fixed randomness: kind k's r-th draw is val sample ``k + r * len(data)``'s (the same
    for every caption set), scored ``batch_size`` kinds at a time (``probe="losses"``: each kind as
    if alone in its batch)."""
    n = len(data)
    losses = np.zeros((n, REPEATS))
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
    for r in range(REPEATS):
        first = 0
        for batch in loader:
            batch = {k: v.to(module.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            out = module(batch, first + r * n, first + r * n, "losses")
            losses[first:first + len(out), r] = out.double().cpu().numpy()
            first += len(out)
    return losses.mean(axis=1)


def tail_metrics(own: np.ndarray, other: np.ndarray, named: NamedScenes) -> dict[str, float]:
    """The module docstring's metrics from each kind's own- and other-caption loss."""
    gain = other - own
    p = named_scene_probabilities(named.count, named.zipf)
    out = {"tail_kinds_learned": float((own <= 0.5 * other).sum()), "tail_loss": float((p * own).sum())}
    for lo, hi in zip(_BUCKETS, _BUCKETS[1:]):
        if lo <= named.count:
            out[f"tail_gain_{lo}_{min(hi - 1, named.count)}"] = float(gain[lo - 1:hi - 1].mean())
    return out


def run_tail_metrics(module, tok, cfg: DictConfig) -> dict[str, float]:
    """:func:`tail_metrics` of a trained module on its run's named kinds."""
    from harness.data.datasets import named_scenes

    named = named_scenes(cfg.data)
    own, other = kind_data(named, cfg.data.cells, cfg.data.resolution, tok, cfg.text)
    return tail_metrics(kind_losses(module, own), kind_losses(module, other), named)
