"""Where a run stands: read from its directory, its lock and the SLURM queue."""
from __future__ import annotations

import subprocess
import sys

from harness import config as C
from harness.io import write_json
from harness.run_dir import RunDir
from harness.sweep import records, status
from harness.sweep.plan import Run
from harness.run_status import write_status


def make_run(tmp_path, seeds=(0,)) -> Run:
    cfg = C.load(["model.size=xs", f"results_dir={tmp_path}"])
    run = Run(cfg, list(seeds))
    run.dir.mkdir(parents=True)
    return run


def hold_lock(run_dir) -> subprocess.Popen:
    code = ("import sys, time; from harness.sweep.records import run_lock\n"
            "with run_lock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_states_from_the_run_directory(tmp_path):
    run = make_run(tmp_path, seeds=(0, 1))
    assert status.assess(run).state == "pending" and "not started" in status.assess(run).detail
    write_status(run.dir, "running")
    assert "interrupted" in status.assess(run).detail          # no job holds it: resumable
    proc = hold_lock(run.dir)
    try:
        assert status.assess(run).state == "running"
    finally:
        proc.kill()
        proc.wait()
    assert status.assess(run).state == "pending"
    write_status(run.dir, "failed", reason="NonFiniteLoss: loss is nan at step 3")
    assert status.assess(run).state == "failed" and "nan" in status.assess(run).detail
    write_status(run.dir, "completed")
    write_json(run.dir / "metrics.json", {"fid": 1.0})
    assert status.assess(run).detail == "trained; 1 of 2 eval seeds left"
    write_json(run.dir / "metrics-seed1.json", {"fid": 1.0})
    # every seed evaluated, but no job closed the run (MLflow caught up and FINISHED, table row)
    assert status.assess(run).state == "pending" and "closing" in status.assess(run).detail
    records.log_attempt(run.dir, "completed")
    assert status.assess(run).state == "completed"
    records.log_attempt(run.dir, "start")                        # a job works on it again
    assert status.assess(run).state == "pending"


def test_slurm_jobs_in_the_queue_are_queued_or_running(tmp_path):
    run = make_run(tmp_path)
    records.write_job(run.dir, "slurm", "17_3", "t")
    assert status.assess(run, {"17_3": "PENDING"}).state == "queued"
    assert status.assess(run, {"17_3": "RUNNING"}).state == "running"
    write_status(run.dir, "failed", reason="x")
    assert status.assess(run, {"17_3": "REQUEUED"}).state == "queued"   # a retry is on its way
    assert status.assess(run, {}).state == "failed"


def test_eval_paths_agree_with_evaluate(tmp_path):
    from harness.evaluate.run import metrics_path

    run = make_run(tmp_path)
    C.save(run.cfg, run.dir / "config.yaml")
    for seed in (0, 1, 7):
        assert RunDir(run.dir).eval_metrics(seed, run.cfg.eval.seed) == metrics_path(run.dir, seed)


def test_progress_line_counts_and_eta():
    states = [status.RunState(str(i), "v", "xs", s) for i, s in
              enumerate(["completed", "completed", "running", "pending", "failed"])]
    p = status.Progress("demo", 5, done_at_start=1)
    p.clock = lambda: p.start + 120  # two minutes in, however long the test itself takes
    line = p.line(states)
    assert line.startswith("[sweep demo] 2/5 done, 1 running, 1 failed, 1 queued; elapsed 2m00s")
    assert line.endswith("ETA 2m00s")   # 2 finished in 2 minutes this session: 2 left, 2 minutes
    # weighted by cost: the large runs went first (done: 1 before, then 4 and 4), 1 + 1 left
    costs = {"0": 1.0, "1": 4.0, "2": 1.0, "3": 1.0, "4": 4.0}
    p = status.Progress("demo", 5, done_at_start=1, costs=costs, done_cost=1.0)
    p.clock = lambda: p.start + 120
    assert p.line(states).endswith("ETA 0m30s")  # 8 cost units in 2 minutes: 2 units left


def test_the_slurm_queue_is_read_only_for_runs_submitted_there(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(status, "slurm_queue", lambda: calls.append(1) or {"42": "RUNNING"})
    local, on_slurm = make_run(tmp_path / "a"), make_run(tmp_path / "b")
    records.write_job(local.dir, "local", "1234", "s")
    assert [s.state for s in status.assess_all([local])] == ["pending"] and calls == []
    records.write_job(on_slurm.dir, "slurm", "42", "s")
    assert [s.state for s in status.assess_all([local, on_slurm])] == ["pending", "running"]
    assert calls == [1]


def test_the_driver_reads_run_states_without_importing_the_training_stack(tmp_path):
    code = ("import sys; from harness.sweep import status, table\n"
            "assert 'lightning' not in sys.modules and 'torch' not in sys.modules, "
            "sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'lightning'))[:5]")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_job_whose_config_the_code_no_longer_accepts_is_failed_with_the_reason(tmp_path):
    """The code changed between planning and the job's start (a key it no longer knows): the run
    is failed, with the key in its reason and its row in the table, not left 'not started'."""
    import pytest

    from harness.errors import UserError
    from harness.sweep import table
    from harness.sweep.jobs import RunJob

    run = make_run(tmp_path)
    job = RunJob(run.cfg, [0], "t", tmp_path / "runs.csv")
    job.cfg["text"]["retired_knob"] = 1
    with pytest.raises(UserError, match="retired_knob"):
        job()
    state = status.assess(run)
    assert state.state == "failed" and "text.retired_knob: unknown key" in state.detail
    [row] = table.read(tmp_path / "runs.csv")
    assert row["status"] == "failed" and row["run_key"] == run.key
