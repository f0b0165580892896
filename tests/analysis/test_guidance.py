"""The analysis fits FID against size at every guidance scale the runs were measured at, from the
files ``python -m harness.evaluate.guidance`` writes into run directories."""
from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import guidance
from analysis.report import ReportInputs, render
from harness.io import write_json
from harness.run_dir import RunDir

SIZES = {"xxs": 1e5, "xs": 3e5, "s": 1e6, "m": 3e6}


def make_runs(tmp_path, alpha: float = 0.16, default_seed: int = 0):
    """Four sizes of one variant: FID = 30·N^-alpha (3% noise) at guidance 1.5, falling 5% per
    size at 3; guidance 2 measured at the two smallest sizes only. The size-m run's table row is
    for evaluation seed 7, whose scan is ``fid-seed7.json`` and holds only guidance 1.5."""
    rng = np.random.default_rng(0)
    rows, dirs = [], {}
    for i, (size, n) in enumerate(SIZES.items()):
        key = f"continuous-random-{size}"
        run = RunDir(tmp_path / key)
        run.path.mkdir()
        run.config.write_text(f"eval:\n  seed: {default_seed}\n")
        seed = 7 if size == "m" else default_seed
        scan = {"1.5": {"fid": 30 * n ** -alpha * rng.lognormal(0, 0.03)}}
        if size != "m":
            scan["3"] = {"fid": 10 * 0.95 ** i}
        if i < 2:
            scan["2"] = {"fid": 5.0}
        write_json(run.guidance_fid(seed, default_seed), scan)
        rows.append({"run_key": key, "token": "continuous", "order": "random", "size": size,
                     "params": n, "seed": seed, "status": "completed"})
        dirs[key] = run.path
    return pd.DataFrame(rows), dirs


def test_each_scale_measured_at_enough_sizes_gets_a_power_law(tmp_path):
    runs, dirs = make_runs(tmp_path)
    table, notes = guidance.scan(runs, dirs, n_boot=200)
    assert list(table["cfg"]) == [1.5, 3.0]
    at15 = table.iloc[0]
    assert at15["n_sizes"] == 4 and at15["falls"]  # the size-m row read fid-seed7.json
    assert at15["alpha_ci_low"] < 0.16 < at15["alpha_ci_high"] and abs(at15["alpha"] - 0.16) < 0.03
    assert table.iloc[1]["n_sizes"] == 3  # no guidance 3 in the seed-7 scan
    assert notes == ["guidance: continuous/random at guidance 2 is measured at 2 sizes (needs 3); "
                     "not fitted"]
    section = render(ReportInputs(sweep="t", source="t", x="params", n_runs=4, n_completed=4,
                                  fits=pd.DataFrame(), extrapolation=pd.DataFrame(),
                                  correlations=pd.DataFrame(), winners=pd.DataFrame(),
                                  excluded=pd.DataFrame(), guidance=table))
    assert "| continuous/random | 1.5 |" in section


def test_a_flat_fid_does_not_fall_and_runs_without_scans_add_nothing(tmp_path):
    runs, dirs = make_runs(tmp_path, alpha=0.0)
    table, _ = guidance.scan(runs, dirs, n_boot=200)
    assert not table.iloc[0]["falls"]
    empty, notes = guidance.scan(runs, {}, n_boot=200)
    assert empty.empty and notes == [] and list(empty.columns) == guidance.COLUMNS
