"""The smoke sweep on a real (one-node) SLURM cluster, with one run preempted by USR2: it
checkpoints, is requeued, resumes from its checkpoint and ends with the same metrics as a run that
was never interrupted. Needs root (the cluster is started by scripts/slurm/start_slurm.sh);
skipped with the reason otherwise."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from harness.sweep import records, table
from harness.tracking import store

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SELECT = ["--preset", "smoke", "--size", "xs", "--variants", "continuous-random,discrete-raster",
          "--progress-every", "10"]
# longer than the preset, so that the preemption lands mid-training; one thread like a 1-CPU job
LONGER = ["train.steps=40", "train.threads=1"]
METRICS = ("val_loss", "fid", "geneval_overall", *(f"geneval_{t}" for t in table.GENEVAL_TAGS))


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


def wait_for(predicate, timeout: float, what: str, proc=None):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the sweep ended before {what}: {proc.stdout.read()}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def curve(run_dir, key: str) -> dict[int, float]:
    return {r["step"]: r["value"] for r in store.read_metrics(run_dir) if r["key"] == key}


def test_slurm_sweep_with_a_preempted_run(slurm_cluster, sweeper, new_sweeper):
    start = time.time()
    proc = sweeper.start(*SELECT, "--launcher", "slurm", *LONGER)
    try:
        def target():
            return sweeper.run_dirs().get("continuous-random-xs")

        wait_for(lambda: target() is not None and (target() / "checkpoints" / "last.ckpt").exists(),
                 900, "the first checkpoint", proc)
        job_id = records.read_job(target())["job_id"]
        signal = subprocess.run(["scancel", "--signal=USR2", job_id], capture_output=True, text=True)
        assert signal.returncode == 0, signal.stderr
        out = proc.communicate(timeout=900)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    wall = time.time() - start
    assert proc.returncode == 0, out
    print(f"slurm smoke sweep (2 runs, one preempted): {wall:.0f}s")
    assert "stage 0" in out or "size xs: 2 run(s)" in out
    run_dir = target()
    events = [a["event"] for a in records.read_attempts(run_dir)]
    assert events == ["start", "preempted", "start", "completed"], events
    first, preempted, resumed = records.read_attempts(run_dir)[:3]
    assert resumed["restart"] == "1" and resumed["job_id"] == first["job_id"]
    assert 10 <= resumed["resume_step"] < 40, "resumed mid-training from its checkpoint"
    assert resumed["resume_step"] == preempted["checkpoint_step"]
    assert list(records.jobs_dir(run_dir).glob("*_log.out")), "the job's log is linked in the run dir"
    rows = table.read(sweeper.results / "smoke" / "runs.csv")
    assert [r["status"] for r in rows] == ["completed", "completed"]

    # the same run, never interrupted (in-process, other results dir, same stage 0)
    reference = new_sweeper("reference")
    straight = reference.run("--preset", "smoke", "--size", "xs", "--variants", "continuous-random",
                             "--launcher", "debug", *LONGER)
    assert straight.returncode == 0, straight.stdout + straight.stderr
    other = reference.run_dirs()["continuous-random-xs"]
    assert other.name == run_dir.name
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, other))
    for k in METRICS:
        assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-9), k
    for key in ("val/loss", "train/loss"):
        preempted_curve, straight_curve = curve(run_dir, key), curve(other, key)
        assert max(preempted_curve) == max(straight_curve)
        # a point logged after the checkpoint but before the signal took effect is not replayed
        # (training resumes after the checkpoint's step); every point that exists is the same
        for step, value in preempted_curve.items():
            assert value == pytest.approx(straight_curve[step], rel=1e-6), (key, step)
    print("preempted vs uninterrupted:", {k: (a[k], b[k]) for k in ("val_loss", "fid", "geneval_overall")},
          "identical" if all(a[k] == b[k] for k in METRICS) else "within 1e-6")
