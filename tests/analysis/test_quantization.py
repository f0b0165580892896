"""The quantization check compares the tail loss's exponent with that of the probability mass of
the kinds a run has not learned."""
from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import quantization
from analysis.report import ReportInputs, render

SIZES = {"xxs": 1e5, "xs": 3e5, "s": 1e6, "m": 3e6, "xl": 1e7}


def runs(loss_power: float, z: float = 1.5, beta: float = 0.3, kinds: int = 512) -> pd.DataFrame:
    """Two variants whose kinds learned grow as N^β and whose tail loss is the unlearned mass to
    the power ``loss_power`` (1: the quantization model), with 3% noise; two seeds at xl."""
    rng = np.random.default_rng(0)
    rows = []
    for token in ("continuous", "discrete"):
        for size, n in SIZES.items():
            for seed in ((0, 1) if size == "xl" else (0,)):
                learned = round(2 * n ** beta * rng.lognormal(0, 0.03))
                rows.append({"run_key": f"{token}-{size}-{seed}", "token": token, "order": "raster",
                             "size": size, "params": n, "named_scenes": kinds, "named_scene_zipf": z,
                             "status": "completed", "tail_kinds_learned": learned,
                             "tail_loss": 5 * quantization.unlearned_mass(learned, kinds, z) ** loss_power
                             * rng.lognormal(0, 0.03)})
    return pd.DataFrame(rows)


def test_the_predicted_exponent_is_recovered_and_a_wrong_one_is_flagged():
    table, notes = quantization.check(runs(1.0), n_boot=200)
    assert notes == [] and list(table["verdict"]) == ["consistent", "consistent"]
    assert np.allclose(table["beta"], 0.3, atol=0.03)
    # the finite tail's mass falls faster than the infinite tail's (z - 1)·β = 0.15
    mass = [quantization.unlearned_mass(2 * n ** 0.3, 512, 1.5) for n in SIZES.values()]
    expected = -np.polyfit(np.log(list(SIZES.values())), np.log(mass), 1)[0]
    assert expected > 0.15 * 1.2 and np.allclose(table["alpha_predicted"], expected, rtol=0.1)
    assert (table["alpha_ci_low"] < expected).all() and (table["alpha_ci_high"] > expected).all()
    assert table["kinds_learned"].iloc[0].count("→") == 4

    table, _ = quantization.check(runs(3.0), n_boot=200)
    assert list(table["verdict"]) == ["inconsistent", "inconsistent"]
    assert "**inconsistent**" in render(ReportInputs("t", "s", "params", 12, 12, *[pd.DataFrame()] * 4,
                                                     excluded=pd.DataFrame(), quantization=table))


def test_without_tail_columns_or_with_too_few_sizes_nothing_is_claimed():
    table, notes = quantization.check(runs(1.0).drop(columns="tail_loss"))
    assert table.empty and notes == []
    assert "Not checked" in render(ReportInputs("t", "s", "params", 0, 0, *[pd.DataFrame()] * 4,
                                                excluded=pd.DataFrame()))
    few = runs(1.0)
    few = few[few["size"].isin(["m", "xl"])]
    table, notes = quantization.check(few)
    assert table.empty and len(notes) == 2 and "needs 3" in notes[0]
