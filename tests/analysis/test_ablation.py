"""An ablation pairs two sweeps' runs by variant and size and says, per metric, where the base
sweep is the better one and whether the difference exceeds the seed spread."""
from __future__ import annotations

import pandas as pd
import pytest

from analysis import ablation


def sweep(gain: dict[str, list[float]], loss: float = 1.0, status: str = "completed") -> pd.DataFrame:
    """continuous/random runs: size -> caption gain per training seed; val loss ``loss``."""
    rows = [{"run_key": f"{size}-{seed}", "token": "continuous", "order": "random", "size": size,
             "params": {"s": 1e5, "xl": 1e6}[size], "train_seed": seed, "status": status,
             "caption_gain": g, "val_loss": loss}
            for size, gains in gain.items() for seed, g in enumerate(gains)]
    return pd.DataFrame(rows)


def test_seed_means_are_compared_and_the_better_side_follows_the_metric():
    base = sweep({"s": [0.5], "xl": [0.40, 0.44]}, loss=0.9)
    frozen = sweep({"s": [0.3], "xl": [0.42, 0.46]}, loss=1.0)
    table, notes = ablation.compare(base, frozen)
    assert notes == []
    gain = table[table["metric"] == "caption_gain"].set_index("size")
    assert gain.loc["xl", "base"] == pytest.approx(0.42) and gain.loc["xl", "diff"] == pytest.approx(-0.02)
    assert gain.loc["s", "diff"] == pytest.approx(0.2) and bool(gain.loc["s", "base_better"])
    # xl's difference (-0.02) is inside its seed spread (0.04 a side); s has one seed a side
    assert not bool(gain.loc["xl", "beyond_spread"]) and pd.isna(gain.loc["s", "beyond_spread"])
    assert list(gain["seeds_base"]) == [1, 2] and gain.loc["xl", "spread_base"] == pytest.approx(0.04)
    # a lower validation loss is the better one
    loss = table[table["metric"] == "val_loss"]
    assert loss["base_better"].all() and (loss["diff"] < 0).all()
    text = ablation.render(table, notes, "frozen aligner")
    assert "caption_gain (higher is better): base better in 1 of 2 models" in text
    assert "val_loss (lower is better): base better in 2 of 2 models" in text


def test_runs_not_completed_or_in_one_sweep_only_are_not_compared(tmp_path):
    base = pd.concat([sweep({"s": [0.5], "xl": [0.4]}), sweep({"xl": [9.0]}, status="failed")])
    frozen = sweep({"s": [0.3]})
    table, notes = ablation.compare(base, frozen)
    assert set(table["size"]) == {"s"}
    assert notes == ["ablation: continuous/random/xl is only in the base sweep; not compared"]

    base.to_csv(tmp_path / "a.csv", index=False)
    frozen.to_csv(tmp_path / "b.csv", index=False)
    out = ablation.main(["--runs", str(tmp_path / "a.csv"), "--ablated", str(tmp_path / "b.csv"),
                         "--out", str(tmp_path / "out")])
    assert "only in the base sweep" in out.read_text()
    assert len(pd.read_csv(tmp_path / "out" / "ablation.csv")) == 2  # caption gain and val loss at s


def test_caption_use_tables_add_the_within_kind_caption_gain(tmp_path):
    base, frozen = sweep({"s": [0.5], "xl": [0.4]}), sweep({"s": [0.3], "xl": [0.6]})
    base.to_csv(tmp_path / "a.csv", index=False)
    frozen.to_csv(tmp_path / "b.csv", index=False)
    # caption_use.csv rows, by run key: the base sweep reads more within kinds at both sizes
    pd.DataFrame({"run_key": ["s-0", "xl-0"], "gain": [9, 9], "gain_within": [0.2, 0.3]}).to_csv(tmp_path / "ca.csv")
    pd.DataFrame({"run_key": ["s-0", "xl-0"], "gain": [9, 9], "gain_within": [0.1, 0.25]}).to_csv(tmp_path / "cb.csv")
    ablation.main(["--runs", str(tmp_path / "a.csv"), "--ablated", str(tmp_path / "b.csv"), "--out", str(tmp_path / "out"),
                   "--caption-use", str(tmp_path / "ca.csv"), str(tmp_path / "cb.csv")])
    table = pd.read_csv(tmp_path / "out" / "ablation.csv")
    within = table[table["metric"] == "caption_gain_within"].set_index("size")
    assert within["base_better"].all() and within.loc["xl", "diff"] == pytest.approx(0.05)
    assert list(table[table["metric"] == "caption_gain"]["base_better"]) == [True, False]  # the runs' own
    assert "caption_gain_within (higher is better): base better in 2 of 2 models" in (tmp_path / "out" / "ablation.md").read_text()


def test_bad_input_is_one_line_naming_the_flag(tmp_path, capsys):
    sweep({"s": [0.5]}).drop(columns="order").to_csv(tmp_path / "a.csv", index=False)
    sweep({"s": [0.5]}).to_csv(tmp_path / "b.csv", index=False)
    sweep({"s": [0.5]}).to_csv(tmp_path / "c.csv", index=False)  # a runs.csv, not a caption_use.csv
    use = ["--caption-use", str(tmp_path / "c.csv"), str(tmp_path / "c.csv")]
    for argv, flag in (([str(tmp_path / "a.csv"), str(tmp_path / "b.csv")], "--runs: missing columns order"),
                       ([str(tmp_path / "b.csv"), str(tmp_path / "none.csv")], "--ablated: "),
                       ([str(tmp_path / "b.csv"), str(tmp_path / "b.csv"), *use], "--caption-use: ")):
        with pytest.raises(SystemExit) as exit_:
            ablation.main(["--runs", argv[0], "--ablated", argv[1], "--out", str(tmp_path), *argv[2:]])
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip()
        assert flag in err and len(err.splitlines()) == 1
