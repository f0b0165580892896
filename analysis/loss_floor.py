"""Validation loss against the world's own floor: how much of it is reducible, and how that scales.

Evaluation writes a run's loss floor, the validation loss of a generator that knows the shapes world
exactly, into the results table (``loss_floor``; the same for every size of a variant;
``python -m harness.evaluate.loss_floor RUN ...`` computes it for runs evaluated before, into
``loss_floor.json`` in the run directory). Per variant whose runs carry it, this reports the floor, the
reducible fraction (val loss − floor) / val loss at each size (seed means), and a pure power law of
the reducible loss against ``params``, L − floor = A·N^−α, with its 95% bootstrap interval: H1's
offset power law with its offset known rather than fitted. Beside it, the offset E that H1's fit
found from the models alone, and whether E's interval holds the floor (when it does not, E is the
budget's plateau, not the world's entropy). ``loss_floor.csv`` holds the numbers, report.md a
table; runs without a floor add nothing.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis.fitting import power_exponent
from harness.io import read_json
from harness.run_dir import RunDir

COLUMNS = ["token", "order", "loss_floor", "n_sizes", "reducible_by_size", "alpha", "alpha_ci_low",
           "alpha_ci_high", "r2", "fitted_E", "fitted_E_ci_low", "fitted_E_ci_high", "E_holds_floor"]
MIN_SIZES = 3  # a pure power law has two parameters


def floors(runs: pd.DataFrame, run_dirs: dict[str, Path]) -> dict[tuple[str, str], float]:
    """Each variant's loss floor: the table's ``loss_floor`` (evaluation writes it), else the
    ``loss_floor.json`` of the first of its runs that carries one (runs evaluated before)."""
    found: dict[tuple[str, str], float] = {}
    column = runs["loss_floor"] if "loss_floor" in runs.columns else pd.Series(np.nan, index=runs.index)
    for r, value in zip(runs.itertuples(), pd.to_numeric(column, errors="coerce")):
        if np.isfinite(value):
            found.setdefault((r.token, r.order), float(value))
    for r in runs.itertuples():
        if (r.token, r.order) not in found and r.run_key in run_dirs:
            if (path := RunDir(run_dirs[r.run_key]).loss_floor).is_file():
                found[r.token, r.order] = float(read_json(path)["loss_floor"])
    return found


def check(runs: pd.DataFrame, run_dirs: dict[str, Path], fits: pd.DataFrame, n_boot: int = 500,
          seed: int = 0, method: str = "residual") -> tuple[pd.DataFrame, list[str]]:
    """One row per variant with a floor and ``MIN_SIZES`` sizes or more (see the module docstring);
    ``fits`` is fits.csv (its offset fit of val_loss against params gives E)."""
    rows, notes = [], []
    for (token, order), floor in sorted(floors(runs, run_dirs).items()):
        part = runs[(runs.token == token) & (runs.order == order)].drop_duplicates("run_key")
        part = part[np.isfinite(part.val_loss)]
        means = part.groupby("size").agg(params=("params", "median"), loss=("val_loss", "mean"))
        means = means.sort_values("params")
        if len(means) < MIN_SIZES or (part.val_loss <= floor).any():
            why = (f"{len(means)} size{'s' * (len(means) != 1)} (needs {MIN_SIZES})" if len(means) < MIN_SIZES
                   else "a validation loss at or below the floor")
            notes.append(f"loss floor: {token}/{order} has {why}; not fitted")
            continue
        alpha, (lo, hi), r2 = power_exponent(part["params"], part["val_loss"] - floor, part["size"], n_boot,
                                             seed, method, ("loss_floor", token, order))
        offset = fits[(fits.metric == "val_loss") & (fits.token == token) & (fits.order == order)
                      & (fits.x == "params") & (fits.form == "offset")]
        e = offset.iloc[0] if len(offset) else None
        rows.append({"token": token, "order": order, "loss_floor": floor, "n_sizes": len(means),
                     "reducible_by_size": " → ".join(f"{(m - floor) / m:.0%}" for m in means["loss"]),
                     "alpha": alpha, "alpha_ci_low": lo, "alpha_ci_high": hi, "r2": r2,
                     "fitted_E": np.nan if e is None else e.E,
                     "fitted_E_ci_low": np.nan if e is None else e.E_ci_low,
                     "fitted_E_ci_high": np.nan if e is None else e.E_ci_high,
                     "E_holds_floor": None if e is None else bool(e.E_ci_low <= floor <= e.E_ci_high)})
    return pd.DataFrame(rows, columns=COLUMNS), notes
