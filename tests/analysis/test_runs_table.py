"""Several sweeps' runs.csv files read as one table: a second training seed trained into its own
results folder is analysed with the first, and a run listed in two tables is refused."""
from __future__ import annotations

import pandas as pd
import pytest

from analysis import ablation
from analysis.runs_table import read_runs_tables
from tests.analysis.test_ablation import sweep


def test_tables_are_joined_with_the_union_of_their_columns(tmp_path):
    first = sweep({"s": [0.5]})
    second = sweep({"s": [0.7, 0.3]}).iloc[[1]].assign(fid_floor_matched=0.44)  # seed 1, a newer column
    first.to_csv(tmp_path / "a.csv", index=False)
    second.to_csv(tmp_path / "b.csv", index=False)
    table = read_runs_tables([tmp_path / "a.csv", tmp_path / "b.csv"])
    assert list(table["train_seed"]) == [0, 1]
    assert table["fid_floor_matched"].isna().tolist() == [True, False]

    # the ablation averages the seeds from both folders and counts their spread
    sweep({"s": [0.2]}).to_csv(tmp_path / "c.csv", index=False)
    ablation.main(["--runs", str(tmp_path / "a.csv"), str(tmp_path / "b.csv"),
                   "--ablated", str(tmp_path / "c.csv"), "--out", str(tmp_path / "out")])
    gain = pd.read_csv(tmp_path / "out" / "ablation.csv").set_index("metric").loc["caption_gain"]
    assert gain["seeds_base"] == 2 and gain["base"] == pytest.approx(0.4)
    assert gain["spread_base"] == pytest.approx(0.2)


def test_a_run_in_two_tables_is_one_line_naming_both(tmp_path, capsys):
    sweep({"s": [0.5]}).to_csv(tmp_path / "a.csv", index=False)
    sweep({"s": [0.5]}).to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(SystemExit) as exit_:
        ablation.main(["--runs", str(tmp_path / "a.csv"), str(tmp_path / "b.csv"),
                       "--ablated", str(tmp_path / "a.csv"), "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "--runs: run s-0 is in both" in err and "a.csv" in err and "b.csv" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()
