"""A run that fails is marked failed with its reason, reported (not retried) by the next launch,
and run again only with ``--retry-failed``; the rest of the sweep goes on."""
from __future__ import annotations

from harness.sweep import records, table
from harness.sweep.__main__ import main


def test_failed_runs_are_reported_and_retried_on_request(sweeper, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sweeper.uri)
    args = ["--preset", "smoke", "--size", "xs", "--variants", "discrete-raster", "--launcher", "debug",
            f"results_dir={sweeper.results}", "train.lr=1e12"]          # diverges: NaN loss
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "NonFiniteLoss" in out and "1 failed" in out
    run_dir = next(iter(sweeper.run_dirs().values()))
    assert [a["event"] for a in records.read_attempts(run_dir)] == ["start", "failed"]
    [row] = table.read(sweeper.results / "smoke" / "runs.csv")
    assert row["status"] == "failed"

    assert main(args) == 1                                              # reported, not rerun
    out = capsys.readouterr().out
    assert f"failed: {run_dir.name} (NonFiniteLoss: loss is nan" in out and "--retry-failed" in out
    assert len(records.read_attempts(run_dir)) == 2

    assert main([*args, "--retry-failed"]) == 1                          # rerun (and fails again)
    assert "(retrying)" in capsys.readouterr().out
    assert [a["event"] for a in records.read_attempts(run_dir)] == ["start", "failed", "start", "failed"]
