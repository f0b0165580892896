"""Two sweeps that differ in one setting, compared model by model.

    python analysis/ablation.py --runs results/cpu/runs.csv \\
        --ablated results-frozen/cpu/runs.csv --name "frozen aligner" --out docs/results/cpu-study

An ablation trains the same grid twice, once with one setting changed (for example the aligner
frozen, ``text.lr_scale=0``, against the paper's trained aligner). Runs are paired by variant and
size; where a side has several training or evaluation seeds their mean is compared, and the
spread between the seeds is reported beside the difference, since a difference smaller than the
seed spread says nothing. Per metric, ``wins`` counts the models where the base sweep is the better
one (higher caption gain, GenEval and kinds learned; lower losses and FID). Writes ``ablation.csv``
(one row per variant, size and metric) and ``ablation.md`` (one table per metric, and the counts);
a model that only one sweep trained is listed in the notes and not compared.

``--caption-use BASE ABLATED`` adds each side's ``analysis/caption_use.py`` table: its
``gain_within`` (the caption gain with captions swapped within their kind, named scene or
described scene) joins the runs by run key as ``caption_gain_within``.
"""
from __future__ import annotations

if __name__ == "__main__":  # run as a file by any python: re-run it with the project's .venv
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo, from any directory
    from harness.bootstrap import use_project_python

    use_project_python()

import argparse
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from analysis.fitting import split_by_status
from analysis.runs_table import read_runs_tables
from harness.errors import UserError, cli_main
from harness.io import write_text

# metric -> +1 where higher is better, -1 where lower is
METRICS = {"caption_gain": +1, "caption_gain_within": +1, "caption_null_gain": +1, "val_loss": -1, "tail_loss": -1, "tail_kinds_learned": +1,
           "geneval_overall": +1, "fid": -1}
KEY = ["token", "order", "size"]
COLUMNS = [*KEY, "params", "metric", "base", "ablated", "diff", "seeds_base", "seeds_ablated",
           "spread_base", "spread_ablated", "base_better", "beyond_spread"]


def _completed(runs: pd.DataFrame, flag: str = "runs") -> pd.DataFrame:
    missing = [c for c in (*KEY, "params") if c not in runs.columns]
    if missing:
        raise UserError(f"--{flag}", f"missing columns {', '.join(missing)}", [*KEY, "params", "status"])
    done = split_by_status(runs)[0]
    return done.drop_duplicates("run_key") if "run_key" in done.columns else done


def _per_model(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Mean, count and spread (max - min; NaN for one seed) of ``metric`` per variant and size."""
    g = runs.dropna(subset=[metric]).groupby(KEY)
    out = g.agg(params=("params", "median"), mean=(metric, "mean"), n=(metric, "size"),
                hi=(metric, "max"), lo=(metric, "min"))
    out["spread"] = np.where(out["n"] > 1, out["hi"] - out["lo"], np.nan)
    return out[["params", "mean", "n", "spread"]]


def compare(base: pd.DataFrame, ablated: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """One row per (variant, size, metric) that both sweeps completed (see the module docstring),
    and notes on the models only one of them has."""
    base, ablated = _completed(base), _completed(ablated, "ablated")
    models = lambda runs: set(map(tuple, runs[KEY].to_numpy()))  # noqa: E731
    notes = [f"ablation: {'/'.join(m)} is only in the {side} sweep; not compared"
             for side, mine, other in (("base", base, ablated), ("ablated", ablated, base))
             for m in sorted(models(mine) - models(other))]
    rows = []
    for metric, sign in METRICS.items():
        if metric not in base.columns or metric not in ablated.columns:
            continue
        both = _per_model(base, metric).merge(_per_model(ablated, metric).drop(columns="params"),
                                              left_index=True, right_index=True, suffixes=("_b", "_a"))
        for key, r in both.iterrows():
            diff = r["mean_b"] - r["mean_a"]
            noise = np.nanmax([r["spread_b"], r["spread_a"], 0.0])
            rows.append({**dict(zip(KEY, key)), "params": r["params"], "metric": metric,
                         "base": r["mean_b"], "ablated": r["mean_a"], "diff": diff,
                         "seeds_base": int(r["n_b"]), "seeds_ablated": int(r["n_a"]),
                         "spread_base": r["spread_b"], "spread_ablated": r["spread_a"],
                         "base_better": bool(sign * diff > 0),
                         "beyond_spread": bool(abs(diff) > noise) if noise > 0 else np.nan})
    table = pd.DataFrame(rows, columns=COLUMNS)
    rank = table["metric"].map(list(METRICS).index)  # metrics in METRICS order, models by size
    table = table.assign(rank=rank).sort_values(["rank", "token", "order", "params"], kind="stable")
    return table.drop(columns="rank").reset_index(drop=True), notes


def render(table: pd.DataFrame, notes: Sequence[str], name: str) -> str:
    """``ablation.md``: per metric, each model's base and ablated value and the count of wins."""
    lines = [f"# Ablation: the base sweep against the {name} sweep", ""]
    for metric, part in table.groupby("metric", sort=False):
        better = "higher" if METRICS[metric] > 0 else "lower"
        lines += [f"## {metric} ({better} is better): base better in {int(part['base_better'].sum())} "
                  f"of {len(part)} models", "",
                  "| variant | size | base | ablated | base − ablated | seeds | seed spread | beyond it |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in part.itertuples():
            spread = " / ".join("—" if pd.isna(s) else f"{s:.4g}" for s in (r.spread_base, r.spread_ablated))
            beyond = "—" if pd.isna(r.beyond_spread) else ("yes" if r.beyond_spread else "no")
            lines.append(f"| {r.token}/{r.order} | {r.size} | {r.base:.4g} | {r.ablated:.4g} | "
                         f"{r.diff:+.3g} | {r.seeds_base} / {r.seeds_ablated} | {spread} | {beyond} |")
        lines.append("")
    if table.empty:
        lines += ["No model was completed by both sweeps.", ""]
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines).rstrip() + "\n"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ablation", description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=Path, nargs="+", required=True,
                   help="the base sweep's runs.csv (several: read as one table)")
    p.add_argument("--ablated", type=Path, nargs="+", required=True,
                   help="the ablated sweep's runs.csv (several: read as one table)")
    p.add_argument("--name", default="ablated", help="what the ablated sweep changed, for the report")
    p.add_argument("--out", type=Path, required=True, help="folder for ablation.csv and ablation.md")
    p.add_argument("--caption-use", type=Path, nargs=2, metavar=("BASE", "ABLATED"),
                   help="each sweep's caption_use.csv (analysis/caption_use.py): adds caption_gain_within")
    return p


def with_caption_use(runs: pd.DataFrame, path: Path) -> pd.DataFrame:
    """``runs`` with the ``gain_within`` of ``path`` (a caption_use.csv) as ``caption_gain_within``."""
    if not path.is_file():
        raise UserError("--caption-use", f"{path} does not exist")
    table = pd.read_csv(path)
    if not {"run_key", "gain_within"} <= set(table.columns):
        raise UserError("--caption-use", f"{path} lacks run_key or gain_within; write it with analysis/caption_use.py")
    table = table[["run_key", "gain_within"]].rename(columns={"gain_within": "caption_gain_within"})
    return runs.drop(columns="caption_gain_within", errors="ignore").merge(table, on="run_key", how="left")


@cli_main
def main(argv: Sequence[str] | None = None) -> Path:
    args = parser().parse_args(argv)
    base, ablated = read_runs_tables(args.runs, "--runs"), read_runs_tables(args.ablated, "--ablated")
    if args.caption_use:
        base, ablated = (with_caption_use(runs, path) for runs, path in zip((base, ablated), args.caption_use))
    table, notes = compare(base, ablated)
    write_text(args.out / "ablation.csv", table.to_csv(index=False))
    out = args.out / "ablation.md"
    write_text(out, render(table, notes, args.name))
    print(out.read_text(), end="")
    return out


if __name__ == "__main__":
    main()
