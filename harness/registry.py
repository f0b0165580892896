"""The study's fixed vocabulary, in one place: every entry point (config, data, sweep, evaluation,
analysis, bench) reads it from here. Torch-free, so the sweep driver and the analysis import it
cheaply. Add a size by adding a line to a ladder; add a ladder by adding a dict.
"""
from __future__ import annotations

from dataclasses import dataclass

# ---- what a run is --------------------------------------------------------------------------

TOKENS = ("discrete", "continuous")  # VQ codes + softmax head | KL latents + diffusion head
ORDERS = ("raster", "random")  # causal next-token (GPT) | bidirectional masked (MAR/BERT)
DIFFUSION_PREDICTIONS = ("eps", "v")  # what the diffusion head predicts: noise (MAR) | velocity
# (token, order) pairs, and their names "<token>-<order>" (--variants continuous-random,...)
VARIANT_PAIRS = tuple((t, o) for t in TOKENS for o in ORDERS)
VARIANTS = tuple(f"{t}-{o}" for t, o in VARIANT_PAIRS)
# The paper's per-variant sampling defaults: (classifier-free guidance scale, temperature).
SAMPLING_DEFAULTS: dict[tuple[str, str], tuple[float, float]] = {
    ("continuous", "random"): (5.0, 0.975),
    ("continuous", "raster"): (4.5, 0.975),
    ("discrete", "random"): (1.6, 1.05),
    ("discrete", "raster"): (2.5, 0.95),
}


def variant(token: str, order: str) -> str:
    return f"{token}-{order}"


# ---- model sizes ----------------------------------------------------------------------------

@dataclass(frozen=True)
class SizeSpec:
    depth: int  # transformer blocks
    width: int  # model width
    heads: int  # attention heads


# Each ladder is itself the scaling grid of a study. ``paper`` is exactly the Fluid paper's
# (depth, width, heads); ``cpu`` spans >10x in parameters at sizes a 2-core CPU trains in minutes.
# As in the paper's ladder, every rung above xxs is deeper than xxs: with xs at depth 2 (wider
# only) discrete random-order models bound colour words no sooner than xxs did, and the default
# study's loss curve bent there (docs/results/cpu-study, item 84).
LADDERS: dict[str, dict[str, SizeSpec]] = {
    "cpu": {
        "xxs": SizeSpec(depth=2, width=32, heads=2),
        "xs": SizeSpec(depth=3, width=64, heads=2),
        "s": SizeSpec(depth=3, width=96, heads=3),
        "m": SizeSpec(depth=4, width=128, heads=4),
        "l": SizeSpec(depth=5, width=160, heads=5),
        "xl": SizeSpec(depth=6, width=192, heads=6),
    },
    "paper": {
        "166M": SizeSpec(depth=12, width=768, heads=12),
        "369M": SizeSpec(depth=16, width=1024, heads=16),
        "665M": SizeSpec(depth=20, width=1280, heads=16),
        "1.1B": SizeSpec(depth=24, width=1536, heads=16),
        "3.1B": SizeSpec(depth=32, width=2304, heads=24),
        "10.5B": SizeSpec(depth=34, width=4096, heads=64),
    },
}
# The paper's nominal parameter count per size: the tests check our counting against it, and the
# analysis extrapolates every parameter fit to it.
PAPER_PARAMS: dict[str, float] = {"166M": 166e6, "369M": 369e6, "665M": 665e6, "1.1B": 1.1e9,
                                  "3.1B": 3.1e9, "10.5B": 10.5e9}


def size_spec(ladder: str, size: str) -> SizeSpec:
    from harness.errors import UserError

    if ladder not in LADDERS:
        raise UserError("model.ladder", f"unknown ladder {ladder!r}", LADDERS)
    if size not in LADDERS[ladder]:
        raise UserError("model.size", f"unknown size {size!r} in ladder {ladder!r}", LADDERS[ladder])
    return LADDERS[ladder][size]


# ---- data layouts ---------------------------------------------------------------------------

# The shapes world's object placement (free, or one object per grid cell) and what its scenes
# carry that no caption names (harness/data/shapes.py)
LAYOUTS = ("free", "grid")
NUISANCES = ("full", "none")
# The shapes world's palette (its RGB values: harness/data/shapes.py), and what colour an object
# gets when its caption names none: any ("random"), its shape's own ("by_shape": SHAPE_COLORS in
# harness/data/shapes.py), or always one of the palette
PALETTE = ("red", "green", "blue", "yellow", "purple", "orange")
UNNAMED_COLORS = ("random", "by_shape", *PALETTE)
# What the shapes world's held-out combinations (harness/data/shapes.py) are kept out of in
# train/val/test: every picture that shows one, or only every caption that names one (the picture
# may still appear under a caption that does not say it, as any arrangement does in real data)
HOLD_OUTS = ("picture", "caption")
# What a tokenizer token sees (TokenizerConfig.context): the whole image (attention across the
# token grid), or its own patch alone (identical patches get identical tokens, wherever they are).
TOKENIZER_CONTEXTS = ("image", "patch")

# An MS-COCO folder: the val captions and images (training data, or the FID-30K reference)
COCO_CAPTIONS = "annotations/captions_val2014.json"
COCO_IMAGES = "val2014"


# ---- what is measured -----------------------------------------------------------------------

# GenEval's six tags (the shapes world renders a prompt of each; the scorer reports each)
GENEVAL_TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
GENEVAL_METRICS = ("geneval_overall", *(f"geneval_{t}" for t in GENEVAL_TAGS))
# The metrics of the results table (runs.csv) and the analysis, and which way is better
METRICS = ("val_loss", "fid", *GENEVAL_METRICS)
LOWER_IS_BETTER = {"val_loss": True, "fid": True} | {m: False for m in GENEVAL_METRICS}
# GenEval of the tokenizer's reconstructions of true scenes (shapes world): the most a model can score
GENEVAL_CEILING = tuple(m.replace("geneval_", "geneval_ceiling_", 1) for m in GENEVAL_METRICS)
# FID of a perfect generator (shapes world): its tokenizer's reconstructions of fresh true scenes,
# their spread over independent draws, the fresh scenes themselves, and the reconstructions of
# scenes redrawn for the reference set's own captions with their spread (harness/evaluate/floor.py)
FID_FLOOR = ("fid_floor", "fid_floor_sd", "fid_floor_real", "fid_floor_matched", "fid_floor_matched_sd")
# FID (shapes world) is read in the space of one trained feature net, and that net's own training
# seed moves a run's FID by x0.67 to x1.96 (calibration item 93): evaluation scores every run's FID
# samples again under nets trained with these seeds too (the default net's seed is 0), and the
# analysis holds an FID verdict only where it holds under every net (harness/evaluate/fid.py)
FID_NET_SEEDS = (1, 2)
FID_NETS = tuple(f"fid_net{s}" for s in FID_NET_SEEDS)
# The tags whose GenEval prompts (the "compositional" split) show only combinations held out of
# training; scored again on prompts of seen combinations (the "train" split), they tell composing
# anew apart from not having learnt the skill at all
HELD_OUT_TAGS = ("counting", "position", "color_attr")
GENEVAL_IN_DIST = ("geneval_in_dist_overall", *(f"geneval_in_dist_{t}" for t in HELD_OUT_TAGS))
# Everything ``python -m harness.evaluate`` writes to metrics.json and logs as eval/<name>
EVAL_METRICS = ("val_loss", "fid", "fid_cleanfid", "kid", "precision", "recall", *GENEVAL_METRICS,
                "eval_seconds")
# Whether the text path is read, from training's last validation: the loss with each sample given
# another's caption minus the true-caption loss, the same with the null caption (what the captions
# tell the model, without a contradicting caption's cost), and the context's spread across captions
TEXT_PROBES = {"caption_gain": "val/caption_gain", "caption_null_gain": "val/caption_null_gain",
               "context_spread": "text/context_spread"}
