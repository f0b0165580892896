"""Interrupts injected at each phase of a sweep job (``harness.faults``), with SIGINT (Ctrl-C),
SIGTERM (a scheduler's cancel) and SIGKILL (``kill -9``, the OOM killer). After the job is run
again: the run is completed, every (metric, step) is in ``metrics.jsonl`` and in MLflow exactly
once, the results table holds its row, and the metrics equal an uninterrupted run's.

Each fault is placed, not raced: the job stops at the named point whatever the machine's load.
"""
from __future__ import annotations

import collections
import shutil

import mlflow
import pytest

from harness import config, faults
from harness.io import file_lock
from harness.run_status import read_status
from harness.registry import GENEVAL_TAGS
from harness.sweep import records, status, table
from harness.sweep.plan import Run
from harness.tracking import store
from harness.run_dir import RunDir
from tests.forked import run_job

# spread over the xdist workers; the uninterrupted reference run is made once and shared (~80 s)
pytestmark = pytest.mark.slow

# 20 steps, logged every 5 (train/loss at 4, 9, 14, 19), validated and checkpointed every 10:
# metrics.jsonl is appended to at val@0, loss@4, loss@9, val@10, [checkpoint 10], loss@14, ...
RUN = ["train.steps=20", "train.log_every=5", "train.val_every=10", "train.checkpoint_every=10",
       "train.threads=1", "model.token=continuous", "model.order=random"]
SEEDS = [0]
# point -> the hit that fires: each one after the first checkpoint, so the re-run resumes
PHASES = {
    "metrics.appended": 5,     # train/loss@14 written locally, not yet in MLflow
    "checkpoint.rotating": 2,  # step 20: last.ckpt (10) moved to prev.ckpt, the new one in a temp file
    "evaluate.generated": 1,   # the FID images made, no metric yet
    "run.closing": 1,          # evaluated; MLflow not yet caught up and FINISHED, no table row
    "table.writing": 1,        # the job's final table update, in its temp file
}
SIGNALS = ("SIGINT", "SIGTERM", "SIGKILL")
COMPARED = ("val_loss", "fid", "fid_cleanfid", "kid", "geneval_overall",
            *(f"geneval_{t}" for t in GENEVAL_TAGS))


def job(smoke, results, uri: str):
    cfg = config.load(smoke(*RUN, f"tracking.uri={uri}", "tracking.experiment=interrupts",
                            results=results))
    out = results / "runs" / config.run_key(cfg)
    return cfg, out, results / "interrupts" / table.TABLE


@pytest.fixture(scope="module")
def uninterrupted(stage0_root):
    """The run, never interrupted (its own process, like the interrupted ones). Made once per
    session beside the shared stage 0: the first xdist worker to need it builds it under a file
    lock, the others wait and read it."""
    from tests.conftest import SMOKE

    results = stage0_root / "uninterrupted"
    smoke = lambda *extra, results=results: SMOKE + [f"results_dir={results}", *extra]
    uri = f"sqlite:///{results}/mlflow.db"
    with file_lock(stage0_root / "uninterrupted.lock"):
        if not (results / "done").exists():
            shutil.rmtree(results, ignore_errors=True)  # left by a worker that failed half-way
            results.mkdir()
            (results / "stage0").symlink_to(stage0_root / "stage0", target_is_directory=True)
            cfg, _, table_path = job(smoke, results, uri)
            assert run_job(cfg, SEEDS, "interrupts", table_path) == 0
            (results / "done").touch()
    return job(smoke, results, uri)[1]


def curves(run_dir) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = collections.defaultdict(dict)
    for r in store.read_metrics(run_dir):
        out[r["key"]][r["step"]] = r["value"]
    return out


@pytest.mark.parametrize("signal", SIGNALS)
@pytest.mark.parametrize("point", list(PHASES))
def test_an_interrupt_at_any_phase_loses_nothing(point, signal, smoke, results_dir, tmp_path,
                                                 uninterrupted):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg, run_dir, table_path = job(smoke, results_dir, uri)
    fault_dir = tmp_path / "faults"
    fault_dir.mkdir()
    env = {faults.ENV: f"{point}:{signal}@{PHASES[point]}", faults.DIR_ENV: str(fault_dir)}
    code = run_job(cfg, SEEDS, "interrupts", table_path, env)
    assert (fault_dir / f"{point}.fired").exists(), f"the fault at {point} did not fire"
    if signal == "SIGKILL":
        assert code == -9
    elif signal == "SIGINT":  # KeyboardInterrupt: the job stopped (Lightning exits 1 on it)
        assert code != 0, "SIGINT did not stop the job"
    # the sweep does not count the stopped run as completed: its next launch runs the job again
    assert status.assess(Run(cfg, SEEDS)).state == "pending"
    # the same job again (the fault has fired in this folder: it passes the point this time)
    assert run_job(cfg, SEEDS, "interrupts", table_path, env) == 0
    assert status.assess(Run(cfg, SEEDS)).state == "completed"
    if point == "run.closing":  # a job for a closed run (a second driver's, say) leaves it closed
        attempts = records.read_attempts(run_dir)
        assert run_job(cfg, SEEDS, "interrupts", table_path, env) == 0
        assert records.read_attempts(run_dir) == attempts

    assert read_status(run_dir)["status"] == "completed"
    assert [a["event"] for a in records.read_attempts(run_dir)].count("trained") == 1
    rows = table.read(table_path)
    assert sorted(int(r["seed"]) for r in rows) == SEEDS and {r["status"] for r in rows} == {"completed"}
    assert not list(table_path.parent.glob(".*.tmp")) and not list((run_dir / "checkpoints").glob(".*.tmp"))

    # every (metric, step) once in metrics.jsonl and once in MLflow
    local = [(r["key"], r["step"]) for r in store.read_metrics(run_dir)]
    assert len(local) == len(set(local)), [k for k, n in collections.Counter(local).items() if n > 1]
    client = mlflow.MlflowClient(uri)
    run_id = RunDir(run_dir).mlflow_run_id.read_text().strip()
    assert client.get_run(run_id).info.status == "FINISHED"
    for key in {k for k, _ in local}:
        mirrored = sorted(m.step for m in client.get_metric_history(run_id, key))
        assert mirrored == sorted(s for k, s in local if k == key), (key, "MLflow vs metrics.jsonl")
    assert not RunDir(run_dir).mlflow_pending.exists()
    listed = {a.path for folder in ("samples", "eval") for a in client.list_artifacts(run_id, folder)}
    assert {"samples/grid.png", "samples/fixed_prompts.png", "eval/metrics.json"} <= listed

    # and the same numbers as the run that was never interrupted (tolerance: a fresh process may
    # pick other CPU kernels, which sum in another order; measured differences are ~1e-7)
    straight, resumed = curves(uninterrupted), curves(run_dir)
    assert set(straight) == set(resumed)
    for key in ("train/loss", "val/loss"):
        assert sorted(resumed[key]) == sorted(straight[key]), key
        for step, value in resumed[key].items():
            assert value == pytest.approx(straight[key][step], rel=1e-4), (key, step)
    for seed in SEEDS:
        a = records.read_eval(run_dir, seed, cfg.eval.seed)
        b = records.read_eval(uninterrupted, seed, cfg.eval.seed)
        for k in COMPARED:
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), (seed, k)
