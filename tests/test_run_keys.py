"""Run keys stay stable across refactors: a changed key would orphan every existing run directory
(a sweep would retrain it). The default study's keys are those of the committed reference results."""
from __future__ import annotations

import csv
from pathlib import Path

from harness import config as C
from harness.registry import VARIANTS
from harness.sweep import grid, plan

REPO = Path(__file__).resolve().parents[1]


def keys(preset: str, sizes: list[str] | None = None) -> list[str]:
    spec = grid.load_sweep(grid.preset_path(preset))
    chosen = sizes or grid.select(spec, "all", None)[0]
    return sorted(r.key for s in chosen for r in plan.build_runs(spec, [s], list(VARIANTS),
                                                                  ["results_dir=/nonexistent"]))


def test_the_default_studys_keys_are_those_of_the_committed_reference_run():
    table = REPO / "docs" / "results" / "cpu-study" / "runs.csv"
    committed = sorted({row["run_key"] for row in csv.DictReader(table.open())})
    assert keys("cpu") == committed


def test_pinned_keys():
    assert C.run_key(C.load([])) == "continuous-random-s-3c22d95c54"
    assert keys("smoke", ["xs"]) == ["continuous-random-xs-71c115d754", "continuous-raster-xs-e88c9b3228",
                                     "discrete-random-xs-7d4cb08321", "discrete-raster-xs-9b2fc398ce"]
