"""The smoke sweep through the local launcher, as a user runs it: interrupted, re-run (resuming from
the checkpoint), re-run again (nothing recomputed); the table and MLflow hold every run."""
from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import mlflow
import pytest

from harness import faults
from harness.run_status import read_status
from harness.run_dir import RunDir
from harness.sweep import records, table
from tests.sweep.conftest import communicate, wait_for

ARGS = ["--preset", "smoke", "--size", "xs", "--variants", "continuous-random,discrete-raster",
        "--launcher", "local", "--progress-every", "5"]
# The smoke runs log train/loss at steps 4, 9, 14, 19 and val/loss at 0, 10, 20, checkpointing at
# 10 and 20: the 5th metric written is train/loss@14, after the first checkpoint. The first job to
# get there pauses with it written to metrics.jsonl but not yet to MLflow, and Ctrl-C lands then:
# the window in which a metric used to be lost from MLflow.
PAUSE = "metrics.appended:pause@5"
PROGRESS = re.compile(r"^\[run (continuous-random|discrete-raster)-xs\S*\] train \d+/20, loss [\d.e-]+, ETA ",
                      re.M)


@pytest.mark.slow
def test_local_sweep_is_interruptible_resumable_and_idempotent(sweeper, tmp_path):
    # 1. Ctrl-C while a job is paused after its first checkpoint: the jobs stop, runs are resumable
    sweeper.extra_env = {faults.ENV: PAUSE, faults.DIR_ENV: str(tmp_path)}
    log = tmp_path / "driver.log"
    proc = sweeper.start(*ARGS, log=log)
    try:
        wait_for(lambda: (tmp_path / "metrics.appended.fired").exists(), 600, "the paused job", proc)
        # while the job waits, the driver shows its training progress (a line every 5 s)
        wait_for(lambda: PROGRESS.search(log.read_text()), 600, "the paused run's progress line", proc)
    finally:
        proc.send_signal(signal.SIGINT)
        communicate(proc, 600)
    out = log.read_text()
    assert proc.returncode == 130, out
    # the other job may or may not have finished by now (it is not paused): either count is right
    assert re.search(r"^\[sweep smoke\] [01]/2 done, [012] running, 0 failed, [01] queued; elapsed \S+, ETA",
                     out, re.M), out
    assert "run the same command again to resume" in out
    paused = [Path((tmp_path / "metrics.appended.fired").read_text())]
    assert read_status(paused[0])["status"] == "running", out
    for d in sweeper.run_dirs().values():
        assert not records.is_locked(d)

    # 2. the same command finishes the sweep; the interrupted run resumed from its checkpoint
    done = sweeper.run(*ARGS)
    assert done.returncode == 0, done.stdout + done.stderr
    print(f"local smoke sweep (2 runs, resumed): {done.wall:.0f}s")
    assert "[sweep smoke]" in done.stdout and "2 completed" in done.stdout
    starts = [a for a in records.read_attempts(paused[0]) if a["event"] == "start"]
    assert len(starts) == 2 and starts[0]["resume_step"] is None and starts[1]["resume_step"] == 10
    rows = table.read(sweeper.results / "smoke" / "runs.csv")
    assert len(rows) == 2 and {r["status"] for r in rows} == {"completed"}
    for r in rows:
        blank = {*table.TAIL, "loss_floor"}  # no named scenes; the default world's loss floor is not exact
        assert all(r[c] != "" for c in table.COLUMNS if c not in blank), r
        assert all(r[c] == "" for c in blank), r
        assert float(r["params"]) > 0 and float(r["train_flops"]) > 0 and r["steps"] == "20"
    for d in sweeper.run_dirs().values():
        assert list(RunDir(d).jobs.glob("*_0_log.out")), "per-job logs live in the run dir"

    # MLflow: one experiment, the parent, a finished child per run with its tags and metrics
    client = mlflow.MlflowClient(sweeper.uri)
    exp = client.get_experiment_by_name("smoke")
    parent_id = (sweeper.results / "smoke" / "parent_run_id").read_text().strip()
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    children = [r for r in runs.values() if r.data.tags.get("mlflow.parentRunId") == parent_id]
    assert {r.info.run_name for r in children} == {r["run_key"] for r in rows}
    for child in children:
        assert child.info.status == "FINISHED"
        assert {child.data.tags[k] for k in ("token", "order", "size")} <= {"continuous", "discrete",
                                                                          "random", "raster", "xs"}
        assert {"eval/fid", "eval/geneval_overall", "val/loss", "train/loss"} <= set(child.data.metrics)
        history = client.get_metric_history(child.info.run_id, "train/loss")
        assert sorted(m.step for m in history) == [4, 9, 14, 19], "resumed runs log each step once"
    assert runs["smoke"].info.status == "FINISHED"

    # 3. again: everything is completed, nothing is recomputed
    stamps = {k: (d / "metrics.json").stat().st_mtime for k, d in sweeper.run_dirs().items()}
    again = sweeper.run(*ARGS)
    assert again.returncode == 0
    assert "2 completed, 0 to run" in again.stdout
    assert stamps == {k: (d / "metrics.json").stat().st_mtime for k, d in sweeper.run_dirs().items()}
    status = sweeper.run(*ARGS, "--status", "--json")
    assert {s["state"] for s in json.loads(status.stdout)} == {"completed"}

    # 4. the analysis command runs end to end on the sweep's real results table
    from analysis import plot_scaling

    out = sweeper.results / "smoke" / "analysis"
    assert plot_scaling.main(["--runs", str(sweeper.results / "smoke" / "runs.csv"),
                              "--out", str(out), "--n-boot", "50", "--no-mlflow"]) == out
    expected = {"fits.csv", "extrapolation.csv", "correlations.csv", "report.md"}
    expected |= {f"{fig}.{ext}" for fig in ("scaling", "geneval_tags", "loss_vs_flops", "samples")
                 for ext in ("png", "pdf")}
    assert expected <= {p.name for p in out.iterdir()}
