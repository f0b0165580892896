"""The README's table of the default study's results is the committed reference run's.

``README.md`` ("What it shows") quotes, per variant, the validation loss at the smallest and the
largest size, H1's offset power-law fit and the largest size's GenEval and FID. They are recomputed
here from ``docs/results/cpu-study/runs.csv`` and ``fits.csv`` and compared at the precision the
README prints them, so a refreshed reference run with a stale README (or a mistyped number) fails.
"""
from __future__ import annotations

import csv
import re
from collections import defaultdict
from pathlib import Path
from statistics import mean

from harness.registry import LADDERS

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "docs" / "results" / "cpu-study"
ROW = re.compile(r"^\| (continuous|discrete)/(random|raster)(?: \(Fluid\))? \| (.+) \|$")


def readme_rows() -> dict[tuple[str, str], list[str]]:
    """The "What it shows" table's cells, by (token, order)."""
    section = (REPO / "README.md").read_text().split("**What it shows**", 1)[1].split("\n\n", 2)[1]
    rows = {}
    for line in section.splitlines():
        if m := ROW.match(line):
            rows[m.group(1), m.group(2)] = [c.strip() for c in m.group(3).split("|")]
    return rows


def seed_means(metric: str) -> dict[tuple[str, str, str], float]:
    values = defaultdict(list)
    for row in csv.DictReader((STUDY / "runs.csv").open()):
        values[row["token"], row["order"], row["size"]].append(float(row[metric]))
    return {k: mean(v) for k, v in values.items()}


def test_the_readme_quotes_the_reference_runs_results():
    rows = readme_rows()
    assert len(rows) == 4, "the README's results table should have one row per variant"
    sizes = list(LADDERS["cpu"])
    smallest, largest = sizes[0], sizes[-1]
    loss, geneval, fid = seed_means("val_loss"), seed_means("geneval_overall"), seed_means("fid")
    fits = {(r["token"], r["order"]): r for r in csv.DictReader((STUDY / "fits.csv").open())
            if r["metric"] == "val_loss" and r["x"] == "params" and r["form"] == "offset"}
    for (token, order), (loss_cell, fit_cell, geneval_cell, fid_cell) in rows.items():
        v = (token, order)
        assert loss_cell == f"{loss[(*v, smallest)]:.4f} → {loss[(*v, largest)]:.4f}", v
        f = fits[v]
        alpha, low, high, r2 = (float(f[k]) for k in ("alpha", "alpha_ci_low", "alpha_ci_high", "r2"))
        assert fit_cell == f"{alpha:.3f} [{low:.3f}, {high:.3f}], {r2:.3f}", v
        assert geneval_cell == f"{geneval[(*v, largest)]:.3f}", v
        assert fid_cell == f"{fid[(*v, largest)]:.2f}", v
