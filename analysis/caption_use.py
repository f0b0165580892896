"""Does a trained model use its caption? Validation loss with the true, a shuffled and the null
caption, per run of a sweep.

    python analysis/caption_use.py --runs results/cpu/runs.csv --out docs/results/cpu-study

A model that reads its caption has loss(true) < loss(shuffled) and loss(null); equal losses mean
the image prior is all it learned, and GenEval stays at chance whatever FID says. The same
validation batch and the same randomness (masks, diffusion noise) serve all three captions.
Writes ``caption_use.csv`` (run_key, token, order, size, loss_true, loss_shuffled, loss_null,
context_spread, gain = loss_shuffled - loss_true, and loss_shuffled_within, gain_within: the same
with each caption swapped for one of its own kind); ``context_spread`` near 0 means the text path
collapsed to one context for every caption.

In a world with named scenes (``data.named_scenes``) a shuffle mostly gives a named scene's
picture a described scene's caption ("a photo of two circles" on a picture of seven squares), a
pairing training never shows; what that costs dominates ``gain``. ``gain_within`` swaps a named
scene's caption for another name and a described scene's for another description, so it asks
only whether the model reads which scene of a kind its caption names (the cpu study's item 99).
"""
from __future__ import annotations

if __name__ == "__main__":  # run as a file by any python: re-run it with the project's .venv
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo, from any directory
    from harness.bootstrap import use_project_python

    use_project_python()

import argparse
import json
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch

from harness.errors import UserError, cli_main
from harness.io import write_text
from harness.run_dir import RunDir
from harness.text.aligner import context_spread


def shuffled_order(captions: list[str], seed: int = 0, kinds: set[str] = frozenset()) -> list[int]:
    """A seeded permutation of ``captions``; with ``kinds`` (the named scenes' names), within each
    kind: a caption that holds a name ("an image of a loreli") goes to a named scene, a description
    to a described scene. Each kind is permuted with the same seed, so with one kind present this
    is the plain shuffle."""
    named = [not kinds.isdisjoint(c.split()) for c in captions]
    groups = [[i for i in range(len(captions)) if named[i] == kind] for kind in (True, False)]
    order = list(range(len(captions)))
    for group in (g for g in groups if g):
        perm = torch.randperm(len(group), generator=torch.Generator().manual_seed(seed)).tolist()
        for i, j in zip(group, perm):
            order[i] = group[j]
    return order


@torch.no_grad()
def caption_losses(run_dir: Path, n: int = 256, seed: int = 0) -> dict[str, float]:
    """EMA validation loss on the first ``n`` val examples with true, shuffled (across kinds and
    within them, ``shuffled_order``) and null captions."""
    from harness.data.shapes import named_scene_names
    from harness.sampling import Sampler
    from harness.tokenizers.stage0 import load_tokens

    sampler = Sampler.from_run(run_dir, "cpu")
    tok_dir = json.loads(RunDir(run_dir).stage0.read_text())["tokenizer"]
    tokens, captions = load_tokens(tok_dir, "val")
    tokens, captions = tokens[:n], captions[:n]
    if not tokens.is_floating_point():
        tokens = tokens.long()
    data = sampler.cfg.data
    names = set(named_scene_names(data.named_scenes)) if data.name == "shapes" else set()
    order, within = shuffled_order(captions, seed), shuffled_order(captions, seed, names)
    contexts = {"true": sampler.context(captions),
                "shuffled": sampler.context([captions[i] for i in order]),
                "null": sampler.nets["aligner"](*sampler.nets["aligner"].null_features(len(captions)))}
    if within != order:  # with one kind present the two shuffles are one
        contexts["shuffled_within"] = sampler.context([captions[i] for i in within])
    generator = sampler.nets["generator"]
    losses = {name: generator.loss(tokens, ctx, mask, generator=torch.Generator().manual_seed(seed)).item()
              for name, (ctx, mask) in contexts.items()}
    losses.setdefault("shuffled_within", losses["shuffled"])
    return {**losses, "context_spread": context_spread(*contexts["true"]).item()}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="caption_use", description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=Path, required=True, help="a sweep's runs.csv")
    p.add_argument("--out", type=Path, required=True, help="folder for caption_use.csv")
    p.add_argument("--n", type=int, default=256, help="validation examples")
    return p


@cli_main
def main(argv: Sequence[str] | None = None) -> Path:
    torch.set_num_threads(1)
    args = parser().parse_args(argv)
    if not args.runs.is_file():
        raise UserError("--runs", f"{args.runs} does not exist")
    runs = pd.read_csv(args.runs)
    runs = runs[runs["status"] == "completed"].drop_duplicates("run_key")
    rows = []
    for r in runs.itertuples():
        losses = caption_losses(Path(r.run_dir), args.n)
        rows.append({"run_key": r.run_key, "token": r.token, "order": r.order, "size": r.size,
                     "params": r.params,
                     **{f"loss_{k}": losses[k] for k in ("true", "shuffled", "null")},
                     "context_spread": losses["context_spread"],
                     "gain": losses["shuffled"] - losses["true"],
                     "loss_shuffled_within": losses["shuffled_within"],
                     "gain_within": losses["shuffled_within"] - losses["true"]})
        print(rows[-1], flush=True)
    out = args.out / "caption_use.csv"
    write_text(out, pd.DataFrame(rows).sort_values(["token", "order", "params"]).to_csv(index=False))
    return out


if __name__ == "__main__":
    main()
