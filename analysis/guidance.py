"""FID against model size at every guidance scale a sweep's runs were measured at.

Evaluation samples at one classifier-free guidance scale per variant (the paper's), and at those
scales FID can measure how far guidance overshoots more than how good a model is (calibration
items 32 and 38 in ``docs/results/cpu-study``). ``python -m harness.evaluate.guidance RUN --cfg
...`` measures a run's FID at other scales on evaluation's own protocol and writes
``guidance/fid[-seed<s>].json`` in its run directory. Per variant and scale, over the sizes whose
runs carry that scale (at least 3), this fits a pure power law of FID against ``params`` with
its 95% bootstrap interval, as hypothesis 4 does at the runs' own scale: ``falls`` when the
interval excludes 0 on the positive side. ``guidance.csv`` holds the numbers, report.md a table;
runs without guidance measurements add nothing.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from analysis.fitting import power_exponent
from harness.io import read_json
from harness.run_dir import RunDir

COLUMNS = ["token", "order", "cfg", "n_sizes", "fid_by_size", "alpha", "alpha_ci_low",
           "alpha_ci_high", "r2", "falls"]
MIN_SIZES = 3  # a pure power law has two parameters


def measurements(runs: pd.DataFrame, run_dirs: dict[str, Path]) -> pd.DataFrame:
    """One row per (run, evaluation seed, guidance scale) measured: token, order, size, params,
    cfg, fid. ``run_dirs`` maps run keys to their directories (absent ones are skipped)."""
    rows = []
    for r in runs.itertuples():
        run = RunDir(run_dirs[r.run_key]) if r.run_key in run_dirs else None
        if run is None or not run.config.is_file():
            continue
        default_seed = int(OmegaConf.load(run.config).eval.seed)
        seed = default_seed if pd.isna(getattr(r, "seed", np.nan)) else int(r.seed)
        path = run.guidance_fid(seed, default_seed)
        if not path.is_file():
            continue
        for scale, metrics in read_json(path).items():
            rows.append({"token": r.token, "order": r.order, "size": r.size,
                         "params": float(r.params), "cfg": float(scale), "fid": float(metrics["fid"])})
    return pd.DataFrame(rows, columns=["token", "order", "size", "params", "cfg", "fid"])


def scan(runs: pd.DataFrame, run_dirs: dict[str, Path], n_boot: int = 500, seed: int = 0,
         method: str = "residual") -> tuple[pd.DataFrame, list[str]]:
    """One row per (variant, guidance scale) measured at ``MIN_SIZES`` sizes or more (see the
    module docstring), and notes on the scales measured at too few sizes."""
    found = measurements(runs, run_dirs)
    rows, notes = [], []
    for (token, order, cfg), part in found.groupby(["token", "order", "cfg"], sort=True):
        means = part.groupby("size").agg(params=("params", "median"), fid=("fid", "mean"))
        means = means.sort_values("params")
        name = f"{token}/{order} at guidance {cfg:g}"
        if len(means) < MIN_SIZES:
            notes.append(f"guidance: {name} is measured at {len(means)} "
                         f"size{'s' * (len(means) != 1)} (needs {MIN_SIZES}); not fitted")
            continue
        alpha, (lo, hi), r2 = power_exponent(part["params"], part["fid"], part["size"], n_boot, seed,
                                             method, ("guidance", token, order, cfg))
        rows.append({"token": token, "order": order, "cfg": cfg, "n_sizes": len(means),
                     "fid_by_size": " → ".join(f"{v:.3g}" for v in means["fid"]),
                     "alpha": alpha, "alpha_ci_low": lo, "alpha_ci_high": hi, "r2": r2,
                     "falls": bool(np.isfinite(lo) and lo > 0)})
    return pd.DataFrame(rows, columns=COLUMNS), notes
