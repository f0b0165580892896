"""Reliability of sweep jobs (issue #8): a local job's worker killed with SIGKILL three times, and a
run that failed (NaN loss): refused by ``python -m harness.evaluate``, reported by the sweep, left
out of the results table's metrics and of the analysis."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from omegaconf import OmegaConf

from harness import faults
from harness.registry import METRICS
from harness.sweep import records, table
from harness.tracking import store
from harness.run_status import read_status
from harness.run_dir import RunDir

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


def stop(proc) -> None:
    """End a sweep left running by a failed assertion: Ctrl-C cancels its jobs, then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def last_step(run) -> int:
    rows = [r["step"] for r in store.read_metrics(run) if r["key"] == "train/loss"]
    return max(rows) if rows else -1


# ---- kill -9 of the worker of a local sweep job, three times --------------------------------

KEY = "discrete-raster-xs"
# each attempt is killed at its 8th, 11th, 9th newly written metric (one per step: log_every=1)
HITS = (8, 11, 9)
KILL = ["--preset", "smoke", "--size", "xs", "--variants", "discrete-raster", "--launcher", "local",
        "--progress-every", "5", "train.steps=60", "train.checkpoint_every=5", "train.log_every=1",
        "train.val_every=20"]


@pytest.mark.slow
def test_kill_9_of_a_sweep_worker_three_times_then_the_sweep_completes_the_run(new_sweeper):
    start = time.time()
    sweeper = new_sweeper("results")
    # (its own MLflow store: two sweeps creating one fresh sqlite store at once race on its schema)
    reference = dataclasses.replace(new_sweeper("reference"), uri=sweeper.uri.replace("mlflow.db", "reference.db"))
    # the same one-run sweep, never interrupted, alongside (its own processes: one thread each)
    straight = reference.start(*KILL)
    kills = []
    try:
        for hit in HITS:
            # the job's worker kills itself (SIGKILL) when it writes its hit-th new metric
            sweeper.extra_env = {faults.ENV: f"metrics.appended:SIGKILL@{hit}"}
            out = sweeper.run(*KILL)
            run = sweeper.run_dirs()[KEY]
            kills.append(last_step(run))
            # the sweep ends with the run left to do (exit 1), neither failed nor completed
            assert out.returncode == 1, out.stdout + out.stderr
            assert read_status(run)["status"] == "running", (hit, out.stdout)
            assert kills[-1] < 60, "killed while training"
            assert not records.is_locked(run)
            assert records.read_attempts(run)[-1]["pid"] != os.getpid()
        sweeper.extra_env = {}
        status = sweeper.run(*KILL, "--status", "--json")
        assert [s["state"] for s in json.loads(status.stdout)] == ["pending"], status.stdout
        assert "interrupted" in json.loads(status.stdout)[0]["detail"]

        done = sweeper.run(*KILL)
        ref_out = straight.communicate(timeout=900)[0]
    finally:
        stop(straight)
    assert done.returncode == 0, done.stdout + done.stderr
    assert straight.returncode == 0, ref_out
    print(f"sweep with 3 kill -9 (at train/loss steps {kills}), then re-run: {time.time() - start:.0f}s")

    run, other = sweeper.run_dirs()[KEY], reference.run_dirs()[KEY]
    assert run.name == other.name
    assert read_status(run)["status"] == "completed"
    attempts = records.read_attempts(run)
    assert [a["event"] for a in attempts] == ["start"] * 4 + ["trained", "completed"]
    resumed = [a["resume_step"] for a in attempts[:4]]
    assert resumed[0] is None and all(r is not None and r % 5 == 0 for r in resumed[1:]), resumed
    assert resumed[1:] == sorted(resumed[1:]) and resumed[1] > 0
    assert len({a["pid"] for a in attempts[:4]}) == 4
    assert [r["status"] for r in table.read(sweeper.results / "smoke" / "runs.csv")] == ["completed"]

    # Tolerance, as in tests/reliability/test_interrupts.py: each attempt is a fresh
    # process, whose CPU kernels may sum in another order than the uninterrupted run's.
    a = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(other / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (run, other))
    print(f"largest weight difference {worst:.2e};", {k: (ma[k], mb[k]) for k in ("val_loss", "fid", "geneval_overall")},
          "identical" if all(ma[k] == mb[k] for k in METRICS) else "within tolerance")
    assert ma["val_loss"] == pytest.approx(mb["val_loss"], rel=1e-4)
    for k in METRICS:
        assert ma[k] == pytest.approx(mb[k], rel=1e-4, abs=1e-6), k


# ---- a failed run ---------------------------------------------------------------------------

@pytest.mark.slow
def test_a_failed_run_is_refused_by_evaluate_and_left_out_of_the_table_and_the_analysis(
        sweeper, tmp_path, capsys):
    import mlflow

    from analysis import plot_scaling
    from analysis.fitting import observations, split_by_status
    from analysis.runs_table import read_runs_csv

    spec = OmegaConf.load(REPO / "sweeps" / "smoke.yaml")
    spec.name = "faulty"
    spec.grid = {"token": ["discrete"], "order": ["raster"], "size": ["xs", "s"]}
    # size s diverges: its loss becomes NaN and the run fails
    spec.size_overrides = {"s": {"train": {"lr": 1.0e12}}}
    sweep_file = tmp_path / "faulty.yaml"
    OmegaConf.save(spec, sweep_file)
    out = sweeper.run("--file", str(sweep_file), "--launcher", "debug")
    assert out.returncode == 1, out.stdout + out.stderr
    runs = sweeper.run_dirs()
    good, bad = runs["discrete-raster-xs"], runs["discrete-raster-s"]
    status = read_status(bad)
    assert status["status"] == "failed" and "loss is nan" in status["reason"], status
    assert any(r["key"] == "val/loss" for r in store.read_metrics(bad)), "a val loss before the NaN"
    assert read_status(good)["status"] == "completed"

    # python -m harness.evaluate refuses it: one line, exit code 2, nothing written
    before = {p: p.stat().st_mtime_ns for p in bad.rglob("*")}
    ev = subprocess.run([sys.executable, "-m", "harness.evaluate", str(bad)], cwd=REPO,
                        env=sweeper.env(), capture_output=True, text=True, timeout=300)
    assert ev.returncode == 2, ev.stdout + ev.stderr
    lines = ev.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in ev.stderr, ev.stderr
    assert "'failed'" in lines[0] and bad.name in lines[0], lines[0]
    assert ev.stdout == ""
    assert not (bad / "metrics.json").exists()
    assert {p: p.stat().st_mtime_ns for p in bad.rglob("*")} == before, "evaluate wrote nothing"

    # MLflow marks it FAILED (the sweep reports it: tests/sweep/test_sweep_failures.py)
    client = mlflow.MlflowClient(sweeper.uri)
    assert client.get_run(RunDir(bad).mlflow_run_id.read_text().strip()).info.status == "FAILED"

    # the results table: a failed row without metrics; the completed one with all of them
    csv = sweeper.results / "faulty" / "runs.csv"
    rows = {r["run_key"]: r for r in table.read(csv)}
    assert rows[bad.name]["status"] == "failed"
    assert all(rows[bad.name][k] == "" for k in METRICS), rows[bad.name]
    assert rows[good.name]["status"] == "completed"
    assert all(rows[good.name][k] != "" for k in METRICS), rows[good.name]

    # the analysis leaves it out and says so
    completed, excluded = split_by_status(read_runs_csv(csv))
    assert list(excluded["run_key"]) == [bad.name] and list(completed["run_key"]) == [good.name]
    assert set(observations(completed)[0]["run_key"]) == {good.name}
    capsys.readouterr()
    result = plot_scaling.main(["--runs", str(csv), "--out", str(tmp_path / "analysis"), "--n-boot", "20",
                                "--no-mlflow"])
    printed = capsys.readouterr().out
    assert "1 runs excluded (status not completed: 1 failed)" in printed, printed
    report = (result / "report.md").read_text()
    assert "excluded: 1" in report and bad.name in report
