"""report.md: the sweep's scaling results in prose and tables, with the figures inline.

The CSVs beside it carry the unrounded numbers; the report rounds to 4 significant digits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd

from harness.registry import LOWER_IS_BETTER
from harness.io import write_text

FITS_COLUMNS = {
    "metric, token, order": "what was fitted: the metric and the variant",
    "x": "params (model size N, the paper's: generator + aligner), train_flops (the paper's "
         "3 x forward x images), or --x: trainable_params, executed_flops (what runs)",
    "form": "offset E+A·x^-α, power A·x^-α, loglinear b0+b1·log10 x (clipped to [0,1]), "
            "logit sigmoid(b0+b1·log10 x)",
    "E, A, alpha (+ _ci_low/_ci_high)": "power-law parameters and 95% bootstrap intervals "
                                         "(E = 0 for power; empty for GenEval forms)",
    "slope, intercept (+ _ci_*)": "GenEval forms: change per decade of x, value at x = 1 "
                                  "(in logit units for logit)",
    "r2": "R² of the fit on seed-averaged points, in log space for power laws",
    "n_points, n_sizes": "runs×seeds used, distinct sizes",
    "converged, starts_agreeing, n_starts, objective": "optimiser check: best L-BFGS result "
        "converged; how many of the grid's starts reached the same minimum; mean Huber loss / δ",
    "n_boot, n_boot_ok, ci_method, ci_widen": "bootstrap resamples requested and fitted, the "
        "method, and the factor applied to the percentile interval's half-widths",
    "x0, x_min, x_max": "centring size of the fit and the fitted range of x",
}

PAPER_CORRELATIONS = {"fid": 0.917, "geneval_overall": -0.931}


@dataclass
class ReportInputs:
    """Everything the report shows; built by analysis/plot_scaling.py."""

    sweep: str
    source: str
    x: str
    n_runs: int
    n_completed: int
    fits: pd.DataFrame
    extrapolation: pd.DataFrame
    correlations: pd.DataFrame
    winners: pd.DataFrame
    excluded: pd.DataFrame
    figures: dict[str, str] = field(default_factory=dict)
    """Figure title -> PNG file name relative to the report."""
    messages: list[str] = field(default_factory=list)
    n_boot: int = 0
    seed: int = 0
    method: str = "residual"
    hypotheses: pd.DataFrame = field(default_factory=pd.DataFrame)
    """analysis.hypotheses.check's table: the paper's findings, each with a verdict."""
    fid_nets: list[str] = field(default_factory=list)
    """The other feature nets' FID columns the FID claims were tested under too."""
    text_use: pd.DataFrame = field(default_factory=pd.DataFrame)
    """``text_use``'s table: per trained model, whether it reads its caption."""
    quantization: pd.DataFrame = field(default_factory=pd.DataFrame)
    """analysis.quantization.check's table: measured vs predicted loss exponent of the long tail."""
    guidance: pd.DataFrame = field(default_factory=pd.DataFrame)
    """analysis.guidance.scan's table: FID vs size at each guidance scale measured."""
    loss_floor: pd.DataFrame = field(default_factory=pd.DataFrame)
    """analysis.loss_floor.check's table: the reducible loss against the world's floor."""


TEXT_USE_COLUMNS = ("token", "order", "size", "train_seed", "caption_gain", "context_spread",
                    "geneval_overall", "geneval_in_dist", "geneval_ceiling")


def text_use(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per trained model (run key) of the runs table: the caption gain and context spread
    training last logged, its GenEval (mean over evaluation seeds) and its tokenizer's ceiling.
    Empty for a table written before those columns existed."""
    if not {"caption_gain", "context_spread"} <= set(runs.columns) or runs.empty:
        return pd.DataFrame(columns=TEXT_USE_COLUMNS)
    frame = runs.reindex(columns=["run_key", "params", *TEXT_USE_COLUMNS]).copy()
    numeric = ["params", "caption_gain", "context_spread", "geneval_overall", "geneval_in_dist",
               "geneval_ceiling"]
    frame[numeric] = frame[numeric].apply(pd.to_numeric, errors="coerce")
    out = (frame.groupby("run_key", sort=False)
           .agg({**{c: "first" for c in ("token", "order", "size", "train_seed")},
                 **{c: "mean" for c in numeric}})
           .sort_values(["token", "order", "params", "train_seed"], kind="stable"))
    return out.reset_index(drop=True)[list(TEXT_USE_COLUMNS)]


def _text_use(table: pd.DataFrame) -> str:
    if table.empty:
        return "No caption-gain or context-spread columns in the runs table.\n"
    rows = [[*r[:4], *(fmt(v, 3) for v in r[4:])] for r in table.astype(object).values.tolist()]
    return ("Caption gain: validation loss with each sample given another sample's caption minus "
            "with its own (> 0: the model reads its caption). Context spread: how much the text "
            "context varies between captions (~0: one context for every caption). Both from "
            "training's last validation. GenEval overall: on the held-out combinations (counting, "
            "position, colour attribution); in distribution (geneval_in_dist): the same with those "
            "three tags on combinations seen in training. GenEval ceiling: the tokenizer's "
            "reconstructions of true scenes, scored the same way.\n\n"
            + _table(TEXT_USE_COLUMNS, rows) + "\n")


def fmt(value: object, digits: int = 4) -> str:
    """A number at ``digits`` significant digits; blanks for missing values."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, (int, float)):
        return f"{value:.{digits}g}"
    return str(value)


def _ci(value, lo, hi) -> str:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return ""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{fmt(value)} (no CI)"
    return f"{fmt(value)} [{fmt(lo)}, {fmt(hi)}]"


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _exponents(fits: pd.DataFrame) -> str:
    if fits.empty:
        return "No fits were made (see *Skipped fits* below).\n"
    out = []
    for x in fits["x"].unique():
        part = fits[fits["x"] == x]
        if part.empty:
            continue
        power = part[part["form"].isin(["offset", "power"])]
        if not power.empty:
            rows = [(r.metric, f"{r.token}/{r.order}", r.form,
                     _ci(r.alpha, r.alpha_ci_low, r.alpha_ci_high),
                     _ci(r.E, r.E_ci_low, r.E_ci_high) if r.form == "offset" else "0 (fixed)",
                     fmt(r.A), fmt(r.r2), r.n_sizes,
                     "yes" if r.converged else "NO") for r in power.itertuples()]
            out.append(f"**Power laws vs {x}** (α with 95% bootstrap CI)\n\n" + _table(
                ["metric", "variant", "form", "α [95% CI]", "E [95% CI]", "A", "R² (log)",
                 "sizes", "converged"], rows))
        lin = part[part["form"].isin(["loglinear", "logit"])]
        if not lin.empty:
            rows = [(r.metric, f"{r.token}/{r.order}", r.form,
                     _ci(r.slope, r.slope_ci_low, r.slope_ci_high), fmt(r.intercept),
                     fmt(r.r2), r.n_sizes, "yes" if r.converged else "NO")
                    for r in lin.itertuples()]
            out.append(f"**GenEval vs {x}** (slope per decade of {x}, 95% bootstrap CI)\n\n"
                       + _table(["metric", "variant", "form", "slope [95% CI]", "intercept",
                                 "R²", "sizes", "converged"], rows))
    return "\n\n".join(out) + "\n"


def _winners(winners: pd.DataFrame) -> str:
    if winners.empty:
        return "No size was reached by two or more variants.\n"
    out = []
    for metric, part in winners.groupby("metric", sort=False):
        part = part.sort_values("rank")
        best, second = part.iloc[0], part.iloc[1]
        better = "lower" if LOWER_IS_BETTER.get(metric, True) else "higher"
        spread = math.hypot(*(v if math.isfinite(v) else 0.0
                              for v in (best["seed_sd"], second["seed_sd"])))
        verdict = (f"{best['token']}/{best['order']} wins {metric} at {best['size']} "
                   f"({better} is better) by {fmt(second['gap_to_best'])} over "
                   f"{second['token']}/{second['order']}")
        if spread > 0:
            verdict += (f", {second['gap_to_best'] / spread:.1f}× the gap's seed standard "
                        f"deviation ({fmt(spread)})")
        else:
            verdict += " (one seed each: no seed spread)"
        lo_b, hi_b, lo_s, hi_s = (best["fit_ci_low"], best["fit_ci_high"],
                                  second["fit_ci_low"], second["fit_ci_high"])
        if all(math.isfinite(v) for v in (lo_b, hi_b, lo_s, hi_s)):
            overlap = max(lo_b, lo_s) <= min(hi_b, hi_s)
            verdict += (". The fits' 95% bands at this size "
                        + ("overlap" if overlap else "do not overlap") + ".")
        else:
            verdict += "."
        rows = [(r["rank"], f"{r['token']}/{r['order']}", r["mean"], r["seed_sd"], r["n_seeds"],
                 _ci(r["fit_pred"], r["fit_ci_low"], r["fit_ci_high"]), r["gap_to_best"])
                for _, r in part.iterrows()]
        out.append(f"- {verdict}\n\n" + _table(
            ["rank", "variant", "mean", "seed sd", "seeds", "fit [95% CI]", "gap to best"],
            rows))
    return "\n\n".join(out) + "\n"


def _correlations(corr: pd.DataFrame) -> str:
    if corr.empty:
        return "Not enough configurations with both metrics.\n"
    rows = [(r.metric, r.token, r.n, _ci(r.r, r.ci_low, r.ci_high), fmt(r.p_value),
             fmt(PAPER_CORRELATIONS.get(r.metric)) if r.token == "all" else "")
            for r in corr.itertuples()]
    return ("Pearson r with validation loss across configurations (seeds averaged; "
            "95% CI by Fisher's z).\n\n"
            + _table(["metric", "tokens", "n", "r [95% CI]", "p", "paper"], rows) + "\n")


def _extrapolation(extrap: pd.DataFrame) -> str:
    if extrap.empty:
        return "No params-fits to extrapolate.\n"
    main = extrap[extrap["metric"].isin(["val_loss", "fid", "geneval_overall"])
                  & extrap["size"].isin(["1.1B", "10.5B"])]
    rows = [(r.metric, f"{r.token}/{r.order}", r.form, r.size,
             _ci(r.prediction, r.ci_low, r.ci_high), "yes" if r.extrapolated else "")
            for r in main.itertuples()]
    return ("Predictions at two of the paper's ladder sizes (all six, every fit: "
            "`extrapolation.csv`). Far outside the fitted range, treat these as illustration.\n\n"
            + _table(["metric", "variant", "form", "size", "prediction [95% CI]",
                      "extrapolated"], rows) + "\n")


def _hypotheses(table: pd.DataFrame, nets: Sequence[str]) -> str:
    if table.empty:
        return "Not checked (no observations).\n"
    rows = [(r.hypothesis, r.claim, r.variant, r.evidence, f"**{r.verdict}**")
            for r in table.itertuples()]
    return ("The Fluid paper's findings, tested on these runs (definitions in "
            "`analysis/hypotheses.py`)."
            + (" An FID claim holds only where it holds under the default feature net and under "
               f"each other one ({', '.join(nets)}: FID in the space of a net trained with that seed)."
               if nets else "") + "\n\n"
            + _table(["#", "claim", "variant", "evidence", "verdict"], rows) + "\n")


def _quantization(table: pd.DataFrame) -> str:
    if table.empty:
        return "Not checked (the runs carry no tail metrics: a world without named scenes).\n"
    rows = [(f"{r.token}/{r.order}", f"{r.kinds}, {fmt(r.zipf, 3)}", r.kinds_learned,
             _ci(r.beta, r.beta_ci_low, r.beta_ci_high),
             _ci(r.alpha_predicted, r.alpha_predicted_ci_low, r.alpha_predicted_ci_high),
             _ci(r.alpha, r.alpha_ci_low, r.alpha_ci_high), fmt(r.alpha_r2, 3), f"**{r.verdict}**")
            for r in table.itertuples()]
    return ("The named scenes are a long tail of K kinds with Zipf frequencies (P(kind k) ∝ k^-z). "
            "In the quantization model (Michaud et al. 2023; `analysis/quantization.py`) a model "
            "that has learned the n most frequent kinds is left with the loss of the rest, in "
            "proportion to their probability mass M(n); the predicted exponent is that of "
            "M(n(N)), from the kinds each size learned (for an infinite tail it would be "
            "(z−1)·β). Kinds learned by size, smallest first; exponents against params with 95% "
            "bootstrap intervals; `consistent` when the predicted and measured intervals "
            "overlap.\n\n"
            + _table(["variant", "K, z", "kinds learned", "β (kinds ∝ N^β)",
                      "predicted α (unlearned mass)", "measured α (tail loss)", "R² (tail loss)",
                      "verdict"], rows) + "\n")


def _guidance(table: pd.DataFrame) -> str:
    if table.empty:
        return ("None measured (`python -m harness.evaluate.guidance RUN --cfg ...` measures a "
                "run's FID at other guidance scales).\n")
    rows = [(f"{r.token}/{r.order}", f"{r.cfg:g}", r.fid_by_size, _ci(r.alpha, r.alpha_ci_low, r.alpha_ci_high),
             fmt(r.r2, 3), "yes" if r.falls else "no") for r in table.itertuples()]
    return ("FID at guidance scales other than the runs' own, measured by "
            "`python -m harness.evaluate.guidance` (`analysis/guidance.py`): per variant and scale, "
            "FID by size (smallest first, seeds averaged) and a pure power law against params "
            "with its 95% bootstrap interval; `falls` when the interval excludes 0.\n\n"
            + _table(["variant", "guidance", "FID by size", "α [95% CI]", "R²", "falls"], rows) + "\n")


def _loss_floor(table: pd.DataFrame) -> str:
    if table.empty:
        return ("None: no run carries a floor (evaluation computes it where the world fixes every token but "
                "the layout: a shapes grid world without nuisance, read through patch tokens; "
                "`python -m harness.evaluate.loss_floor RUN ...` computes it for runs evaluated before).\n")
    rows = [(f"{r.token}/{r.order}", fmt(r.loss_floor, 4), r.reducible_by_size,
             _ci(r.alpha, r.alpha_ci_low, r.alpha_ci_high), fmt(r.r2, 3),
             _ci(r.fitted_E, r.fitted_E_ci_low, r.fitted_E_ci_high),
             "–" if r.E_holds_floor is None or pd.isna(r.E_holds_floor) else ("yes" if r.E_holds_floor else "no"))
            for r in table.itertuples()]
    return ("The validation loss of a generator that knows the world exactly (`loss_floor`, computed at "
            "evaluation by `harness/evaluate/loss_floor.py`; `analysis/loss_floor.py`): per variant, the reducible "
            "fraction (val loss − floor) / val loss by size (smallest first, seeds averaged), a pure power "
            "law of the reducible loss against params with its 95% bootstrap interval, and the offset E "
            "that H1's fit found without knowing the floor; `E holds the floor` when E's interval does.\n\n"
            + _table(["variant", "floor", "reducible by size", "α [95% CI]", "R²", "fitted E [95% CI]",
                      "E holds the floor"], rows) + "\n")


def render(inp: ReportInputs) -> str:
    """The report's Markdown text."""
    parts = [f"# Scaling analysis: {inp.sweep}\n",
             f"Source: `{inp.source}`. Runs: {inp.n_runs}, completed and used: "
             f"{inp.n_completed}, excluded: {len(inp.excluded)}. Main x axis: {inp.x}.\n",
             "## Figures\n"]
    parts += [f"![{title}]({name})\n" for title, name in inp.figures.items()]
    parts += ["## The paper's findings\n", _hypotheses(inp.hypotheses, inp.fid_nets),
              "## Does each model read its caption?\n", _text_use(inp.text_use),
              "## Scaling exponents\n", _exponents(inp.fits),
              "## The long tail: measured vs predicted exponent\n", _quantization(inp.quantization),
              "## Reducible loss: the world's floor\n", _loss_floor(inp.loss_floor),
              "## FID at other guidance scales\n", _guidance(inp.guidance),
              "## Which variant wins at the largest size\n", _winners(inp.winners),
              "## Correlation with validation loss\n", _correlations(inp.correlations),
              "## Extrapolation to the paper's ladder\n", _extrapolation(inp.extrapolation),
              "## Skipped fits and other notes\n"]
    parts.append("\n".join(f"- {m}" for m in inp.messages) + "\n" if inp.messages
                 else "None.\n")
    parts.append("## Excluded runs (status not completed)\n")
    if inp.excluded.empty:
        parts.append("None.\n")
    else:
        cols = [c for c in ("run_key", "token", "order", "size", "seed", "status")
                if c in inp.excluded.columns]
        parts.append(_table(cols, inp.excluded[cols].astype(object).values.tolist()) + "\n")
    parts += ["## Method\n",
              "Each metric of each variant is fitted against model size and training FLOPs "
              "(Hoffmann et al. 2022 style): Huber loss (δ = 1e-3) on residuals in log space "
              "for power laws (raw or logit space for GenEval), L-BFGS-B from a grid of starts, "
              "best kept; seeds of one configuration are averaged (they evaluate one model). "
              f"Intervals: {inp.n_boot} bootstrap resamples (seed {inp.seed}, method "
              f"`{inp.method}`). `residual` resamples the size-level residuals around the fit "
              "(inflated by √(n/(n−p))) and widens the percentile interval by t(n−p)/z to "
              "correct for the few sizes; `cases` resamples sizes and the seeds within them. "
              "FID's offset form is kept only with ≥ 4 sizes and a ≥ 10% lower objective than "
              "the pure power law. GenEval and the ladder predictions clip to [0, 1].\n",
              "### Columns of fits.csv\n",
              "\n".join(f"- `{k}`: {v}" for k, v in FITS_COLUMNS.items()) + "\n"]
    return "\n".join(parts)


def write_report(path: Path, inp: ReportInputs) -> Path:
    """Render and write report.md atomically."""
    return write_text(path, render(inp))

