"""Two drivers of one sweep started together over one results dir and one (new) MLflow store, as
two people typing ``make sweep`` at once: every run is trained exactly once (the other driver's
job waits on the run's lock, then finds it done), ``runs.csv`` is whole with one row per run and
seed, and MLflow holds one parent and one finished child per config. The SLURM variant is in
test_sweep_slurm.py."""
from __future__ import annotations

import collections

import mlflow
import pytest

from harness.sweep import records, table
from harness.tracking import store

ARGS = ["--preset", "smoke", "--size", "xs", "--variants", "continuous-random,discrete-raster",
        "--progress-every", "5"]


def check_two_drivers(sweeper, outs: list[str], sweep: str = "smoke") -> None:
    """What must hold after two drivers of the same sweep ran at once."""
    runs = sweeper.run_dirs()
    assert len(runs) == 2, outs
    for d in runs.values():
        events = [a["event"] for a in records.read_attempts(d)]
        assert events.count("trained") == 1, (d.name, events)
        local = [(r["key"], r["step"]) for r in store.read_metrics(d)]
        assert len(local) == len(set(local)), collections.Counter(local).most_common(3)
    rows = table.read(sweeper.results / sweep / "runs.csv")
    assert sorted(r["run_key"] for r in rows) == sorted(d.name for d in runs.values())
    assert {r["status"] for r in rows} == {"completed"} and all(r["fid"] for r in rows)

    client = mlflow.MlflowClient(sweeper.uri)
    exp = client.get_experiment_by_name(sweep)
    found = client.search_runs([exp.experiment_id])
    parents = [r for r in found if r.data.tags.get("role") == "sweep-parent"]
    assert len(parents) == 1, [r.info.run_id for r in parents]
    children = [r for r in found if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(r.info.run_name for r in children) == sorted(d.name for d in runs.values())
    assert len(found) == 3 and {r.info.status for r in children} == {"FINISHED"}
    for child in children:
        run_dir = runs["-".join(child.info.run_name.split("-")[:3])]
        local = [r for r in store.read_metrics(run_dir) if r["key"] == "train/loss"]
        history = client.get_metric_history(child.info.run_id, "train/loss")
        assert sorted(m.step for m in history) == sorted(r["step"] for r in local)


@pytest.mark.slow
def test_two_local_drivers_at_once_train_each_run_once(sweeper):
    procs = [sweeper.start(*ARGS, "--launcher", "local") for _ in range(2)]
    outs = [p.communicate(timeout=1200)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    check_two_drivers(sweeper, outs)
