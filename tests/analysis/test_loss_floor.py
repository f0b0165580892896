"""The analysis reads each variant's loss floor from the results table (``loss_floor``, written at
evaluation), else from ``loss_floor.json`` in its run directories (``python -m
harness.evaluate.loss_floor``), and fits the reducible loss against size."""
from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import loss_floor
from analysis.report import ReportInputs, render
from harness.io import write_json
from harness.run_dir import RunDir

SIZES = {"xxs": 1e5, "xs": 3e5, "s": 1e6, "m": 3e6, "l": 1e7}
FLOOR = 0.2


def make_runs(tmp_path, with_floor: bool = True):
    """Five sizes × two seeds of one variant: val loss = FLOOR + 5·N^-0.3 (2% noise on the
    reducible part); the floor file sits in the first run's directory only."""
    rng = np.random.default_rng(0)
    rows, dirs = [], {}
    for size, n in SIZES.items():
        for seed in (0, 1):
            key = f"discrete-raster-{size}-{seed}"
            run = RunDir(tmp_path / key)
            run.path.mkdir(parents=True)
            if with_floor and not rows:
                write_json(run.loss_floor, {"loss_floor": FLOOR})
            rows.append({"run_key": key, "token": "discrete", "order": "raster", "size": size, "params": n,
                         "val_loss": FLOOR + 5 * n ** -0.3 * rng.lognormal(0, 0.02), "status": "completed"})
            dirs[key] = run.path
    return pd.DataFrame(rows), dirs


def offset_fit(E: float, lo: float, hi: float) -> pd.DataFrame:
    return pd.DataFrame([{"metric": "val_loss", "token": "discrete", "order": "raster", "x": "params",
                          "form": "offset", "E": E, "E_ci_low": lo, "E_ci_high": hi}])


def test_the_reducible_loss_gets_a_power_law_and_the_fitted_offset_is_checked(tmp_path):
    runs, dirs = make_runs(tmp_path)
    table, notes = loss_floor.check(runs, dirs, offset_fit(0.3, 0.25, 0.35), n_boot=200)
    assert notes == [] and len(table) == 1
    row = table.iloc[0]
    assert row["loss_floor"] == FLOOR and row["n_sizes"] == 5
    assert row["alpha_ci_low"] < 0.3 < row["alpha_ci_high"] and abs(row["alpha"] - 0.3) < 0.03
    assert not row["E_holds_floor"]  # the fit's offset sits above the world's floor
    first = (runs.val_loss[:2].mean() - FLOOR) / runs.val_loss[:2].mean()
    assert row["reducible_by_size"].startswith(f"{first:.0%} → ")
    held, _ = loss_floor.check(runs, dirs, offset_fit(0.21, 0.1, 0.3), n_boot=200)
    assert held.iloc[0]["E_holds_floor"]
    section = render(ReportInputs(sweep="t", source="t", x="params", n_runs=10, n_completed=10,
                                  fits=pd.DataFrame(), extrapolation=pd.DataFrame(),
                                  correlations=pd.DataFrame(), winners=pd.DataFrame(),
                                  excluded=pd.DataFrame(), loss_floor=table))
    assert "| discrete/raster | 0.2 |" in section and "| no |" in section


def test_runs_without_a_floor_add_nothing_and_a_loss_below_it_is_not_fitted(tmp_path):
    runs, dirs = make_runs(tmp_path, with_floor=False)
    empty, notes = loss_floor.check(runs, dirs, offset_fit(0.3, 0.25, 0.35), n_boot=200)
    assert empty.empty and notes == [] and list(empty.columns) == loss_floor.COLUMNS
    runs, dirs = make_runs(tmp_path / "below")
    runs.loc[0, "val_loss"] = FLOOR / 2
    table, notes = loss_floor.check(runs, dirs, offset_fit(0.3, 0.25, 0.35), n_boot=200)
    assert table.empty and notes == ["loss floor: discrete/raster has a validation loss at or below the "
                                     "floor; not fitted"]


def test_the_tables_floor_comes_first_and_the_run_directory_is_the_fallback(tmp_path):
    runs, dirs = make_runs(tmp_path)
    assert loss_floor.floors(runs, dirs) == {("discrete", "raster"): FLOOR}  # no column: the file
    runs["loss_floor"] = np.nan
    runs.loc[3, "loss_floor"] = 0.15  # evaluated with the floor: the table says it
    assert loss_floor.floors(runs, dirs) == {("discrete", "raster"): 0.15}
    assert loss_floor.floors(runs.assign(loss_floor="0.15"), {}) == {("discrete", "raster"): 0.15}  # as read from csv
    assert loss_floor.floors(runs.assign(loss_floor=np.nan), {}) == {}
