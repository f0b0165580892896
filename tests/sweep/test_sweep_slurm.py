"""The smoke sweep on a real (one-node) SLURM cluster, with one run preempted by USR2: it
checkpoints, is requeued, resumes from its checkpoint and ends with the same metrics as a run that
was never interrupted. Needs root (the cluster is started by scripts/slurm/start_slurm.sh);
skipped with the reason otherwise."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from harness import faults
from harness.registry import METRICS
from harness.run_dir import RunDir
from harness.sweep import records, table
from harness.tracking import store
from tests.sweep.conftest import wait_for

REPO = Path(__file__).resolve().parents[2]
# one worker runs them all (make test runs two workers): one cluster, started once
pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.xdist_group("slurm")]

SELECT = ["--preset", "smoke", "--size", "xs", "--variants", "continuous-random,discrete-raster",
          "--progress-every", "10"]
ONE_THREAD = ["train.threads=1"]  # like a 1-CPU job
# The 5th metric a smoke run writes is train/loss@14, after its checkpoint at step 10: the first job
# to get there pauses, so the signal lands mid-training whatever the machine's load.
PAUSE_AFTER_CHECKPOINT = "metrics.appended:pause@5"


def slurm_up() -> bool:
    return shutil.which("sinfo") is not None and subprocess.run(
        ["sinfo", "-h"], capture_output=True, timeout=30).returncode == 0


@pytest.fixture(scope="module")
def slurm_cluster():
    """Start the local cluster (stopped afterwards only if this fixture started it)."""
    if os.geteuid() != 0:
        pytest.skip("the SLURM test needs root to start a local cluster (scripts/slurm/start_slurm.sh)")
    was_up = slurm_up()
    out = subprocess.run([str(REPO / "scripts" / "slurm" / "start_slurm.sh")], capture_output=True,
                         text=True, timeout=900)
    if out.returncode == 3:
        pytest.skip(f"SLURM cannot be started here: {out.stderr.strip().splitlines()[-1]}")
    assert out.returncode == 0, out.stdout + out.stderr
    yield
    if not was_up:
        subprocess.run([str(REPO / "scripts" / "slurm" / "stop_slurm.sh")], capture_output=True, timeout=120)


def curve(run_dir, key: str) -> dict[int, float]:
    return {r["step"]: r["value"] for r in store.read_metrics(run_dir) if r["key"] == key}


def same_results(run_dir, other) -> tuple[dict, dict]:
    """An interrupted run ends where the uninterrupted one does: every metric, and every point of
    its loss curves, each once (none lost), within 1e-6. Returns both metrics.json."""
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, other))
    for k in METRICS:
        assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-9), k
    for key in ("val/loss", "train/loss"):
        interrupted, straight = curve(run_dir, key), curve(other, key)
        assert sorted(interrupted) == sorted(straight), key
        for step, value in interrupted.items():
            assert value == pytest.approx(straight[step], rel=1e-6), (key, step)
    return a, b


def test_slurm_sweep_with_a_preempted_run(slurm_cluster, sweeper, new_sweeper, tmp_path):
    start = time.time()
    sweeper.extra_env = {faults.ENV: PAUSE_AFTER_CHECKPOINT, faults.DIR_ENV: str(tmp_path)}
    log = tmp_path / "driver.log"
    proc = sweeper.start(*SELECT, "--launcher", "slurm", *ONE_THREAD, log=log)
    fired = tmp_path / "metrics.appended.fired"
    try:
        wait_for(fired.exists, 900, "a job paused after its first checkpoint", proc, poll=0.2)
        run_dir = Path(fired.read_text())
        # while the job waits on its node, the driver shows its progress, read from the run dir
        line = re.compile(rf"^\[run {run_dir.name}\] train \d+/20, loss [\d.e-]+, ETA ", re.M)
        wait_for(lambda: line.search(log.read_text()), 600, "the paused run's progress line", proc)
        job_id = records.read_job(run_dir)["job_id"]
        signal = subprocess.run(["scancel", "--signal=USR2", job_id], capture_output=True, text=True)
        assert signal.returncode == 0, signal.stderr
        proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = log.read_text()
    wall = time.time() - start
    assert proc.returncode == 0, out
    print(f"slurm smoke sweep (2 runs, one preempted): {wall:.0f}s")
    assert "stage 0" in out or "size xs: 2 run(s)" in out
    events = [a["event"] for a in records.read_attempts(run_dir)]
    assert events == ["start", "preempted", "start", "trained", "completed"], events
    first, preempted, resumed = records.read_attempts(run_dir)[:3]
    assert resumed["restart"] == "1" and resumed["job_id"] == first["job_id"]
    assert resumed["resume_step"] == 10, "resumed mid-training from its checkpoint"
    assert resumed["resume_step"] == preempted["checkpoint_step"]
    assert list(RunDir(run_dir).jobs.glob("*_log.out")), "the job's log is linked in the run dir"
    rows = table.read(sweeper.results / "smoke" / "runs.csv")
    assert [r["status"] for r in rows] == ["completed", "completed"]

    # the same run, never interrupted (in-process, other results dir, same stage 0)
    reference = new_sweeper("reference")
    variant = "-".join(run_dir.name.split("-")[:2])
    straight = reference.run("--preset", "smoke", "--size", "xs", "--variants", variant,
                             "--launcher", "debug", *ONE_THREAD)
    assert straight.returncode == 0, straight.stdout + straight.stderr
    other = reference.run_dirs()[f"{variant}-xs"]
    assert other.name == run_dir.name
    a, b = same_results(run_dir, other)
    print("preempted vs uninterrupted:", {k: (a[k], b[k]) for k in ("val_loss", "fid", "geneval_overall")},
          "identical" if all(a[k] == b[k] for k in METRICS) else "within 1e-6")


# A real time limit: 1 minute (SLURM's smallest), USR2 5 s before it. slurmctld checks time limits
# every 30 s (PERIODIC_TIMEOUT) and sends the warning signal at the first check that is at most
# signal_delay_s + 30 s before the end, so each attempt gets USR2 25-55 s after it starts, always
# before the limit itself (OverTimeLimit=0, KillWait=5 in scripts/slurm/start_slurm.sh). submitit
# counts each such USR2 as a time-out (the job ran past min(0.8 x limit, limit - 10 min)), so the
# sweep allows more requeues than the default 3. Stage 0 is not checkpointable: it gets 10 minutes.
TIME_LIMIT = {"time_min": 1, "signal_delay_s": 5, "max_requeues": 20, "stage0": {"time_min": 10}}
# The first attempt pauses after its checkpoint at step 20 (the 4th metric it writes: val@0,
# loss@9, loss@19, loss@29), so SLURM's time limit always lands mid-training; later attempts pass
# the point (it fired once) and go on from their checkpoints.
STEPS = 100
TIME_LIMITED = [f"train.steps={STEPS}", "train.checkpoint_every=20", "train.val_every=50",
                "train.log_every=10", "train.threads=1"]
PAUSE_IN_FIRST_ATTEMPT = "metrics.appended:pause@4"


def test_slurm_time_limit_checkpoints_requeues_and_resumes(slurm_cluster, new_sweeper, tmp_path):
    import dataclasses

    import mlflow
    from omegaconf import OmegaConf

    spec = OmegaConf.load(REPO / "sweeps" / "smoke.yaml")
    spec.name = "timelimit"
    spec.grid = {"token": ["continuous"], "order": ["random"], "size": ["xs"]}
    spec.launcher.slurm = OmegaConf.merge(spec.launcher.slurm, TIME_LIMIT)
    sweep_file = tmp_path / "timelimit.yaml"
    OmegaConf.save(spec, sweep_file)
    args = ["--file", str(sweep_file), "--progress-every", "10", *TIME_LIMITED]

    start = time.time()
    sweeper = new_sweeper("results")
    sweeper.extra_env = {faults.ENV: PAUSE_IN_FIRST_ATTEMPT, faults.DIR_ENV: str(tmp_path)}
    # the same run, never interrupted, alongside (in-process launcher, its own MLflow store)
    reference = dataclasses.replace(new_sweeper("reference"), uri=f"sqlite:///{tmp_path}/reference.db")
    proc = sweeper.start(*args, "--launcher", "slurm")
    straight = reference.start(*args, "--launcher", "debug")
    first_id = None
    try:
        def started() -> bool:
            nonlocal first_id
            run = sweeper.run_dirs().get("continuous-random-xs")
            if run is not None and RunDir(run).mlflow_run_id.exists():
                first_id = RunDir(run).mlflow_run_id.read_text().strip()
            return first_id is not None

        wait_for(started, 900, "the job's MLflow run", proc, poll=0.2)
        out = proc.communicate(timeout=1200)[0]
        ref_out = straight.communicate(timeout=600)[0]
    finally:
        for p in (proc, straight):
            if p.poll() is None:
                p.kill()
    wall = time.time() - start
    assert proc.returncode == 0, out
    assert straight.returncode == 0, ref_out
    run_dir = sweeper.run_dirs()["continuous-random-xs"]
    other = reference.run_dirs()["continuous-random-xs"]
    assert other.name == run_dir.name

    # checkpointed, requeued (same job, SLURM's restart count going up) and resumed, each attempt
    # from the checkpoint its predecessor left; at least once in the middle of training
    attempts = records.read_attempts(run_dir)
    events = [a["event"] for a in attempts]
    print(f"slurm run with a 1-minute time limit: {wall:.0f}s, attempts {events}")
    assert events[0] == "start" and events[-1] == "completed" and "failed" not in events, events
    starts = [a for a in attempts if a["event"] == "start"]
    preempted = [a for a in attempts if a["event"] == "preempted"]
    assert preempted and {a["job_id"] for a in starts} == {starts[0]["job_id"]}, attempts
    restarts = [0 if a["restart"] is None else int(a["restart"]) for a in starts]
    assert restarts[0] == 0 and restarts == sorted(set(restarts)) and restarts[-1] >= 1, restarts
    # (a USR2 during an attempt's imports requeues it before it logs its start, and its record may
    # lack the checkpoint step: torch is half-imported in the signal handler)
    checkpoint = None
    for a in attempts:
        if a["event"] == "preempted" and a["checkpoint_step"] is not None:
            checkpoint = a["checkpoint_step"]
        elif a["event"] == "start":
            assert a["resume_step"] == checkpoint, attempts
    assert any(p["checkpoint_step"] and 0 < p["checkpoint_step"] < STEPS for p in preempted), preempted

    # it was SLURM's time limit that stopped it: a 1-minute limit, and submitit saw a time-out
    job_id = starts[0]["job_id"]
    limit = subprocess.run(["sacct", "-X", "-n", "-j", job_id, "-o", "Timelimit"], capture_output=True,
                           text=True)
    assert limit.stdout.split()[0] in ("00:01:00", "1"), limit.stdout + limit.stderr
    logs = "".join(p.read_text() for p in RunDir(run_dir).jobs.glob(f"{job_id}*_log.err"))
    assert logs.count("Caught signal SIGUSR2") >= len(preempted) and "this job is timed-out" in logs, logs[-3000:]

    # one MLflow run throughout, finished, holding every step once
    assert RunDir(run_dir).mlflow_run_id.read_text().strip() == first_id
    client = mlflow.MlflowClient(sweeper.uri)
    exp = client.get_experiment_by_name("timelimit")
    children = [r for r in client.search_runs([exp.experiment_id]) if r.info.run_name == run_dir.name]
    assert [r.info.run_id for r in children] == [first_id]
    assert children[0].info.status == "FINISHED"
    for key in ("train/loss", "val/loss"):
        steps = [m.step for m in client.get_metric_history(first_id, key)]
        assert sorted(steps) == sorted(curve(other, key)), key

    # and ends where the uninterrupted run ends
    a, b = same_results(run_dir, other)
    print("time-limited vs uninterrupted:", {k: (a[k], b[k]) for k in ("val_loss", "fid", "geneval_overall")},
          "identical" if all(a[k] == b[k] for k in METRICS) else "within 1e-6")


def test_two_slurm_drivers_at_once_train_each_run_once(slurm_cluster, sweeper):
    """Two ``--launcher slurm`` drivers of one sweep started together (test_sweep_concurrent.py
    has the local one): both submit, the second job of each run waits on its lock, then finds the
    run done; each run trained once, one table, one parent, one child per config."""
    from tests.sweep.test_sweep_concurrent import ARGS, check_two_drivers

    procs = [sweeper.start(*ARGS, "--launcher", "slurm", *ONE_THREAD) for _ in range(2)]
    try:
        outs = [p.communicate(timeout=1200)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], outs
    check_two_drivers(sweeper, outs)
