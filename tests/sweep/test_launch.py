"""The local launcher's queue: at most ``cap`` jobs alive, stage 0 first, and each run as soon as
the stage-0 artefacts it needs are built (one token type's runs train while the other token
type's tokenizer is still being built); a failed build stops the sweep and cancels the live jobs."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from harness.registry import FID_NET_SEEDS
from harness.sweep import grid, plan
from harness.sweep.launch import Stage0Builds, Stage0Failed, run_capped


class FakeJob:
    """A job that ends when the test says so, successfully or not."""

    def __init__(self, name: str):
        self.name, self.finished, self.error, self.cancelled = name, False, None, False
        self.paths = SimpleNamespace(folder=f"/jobs/{name}")

    def done(self) -> bool:
        return self.finished or self.cancelled

    def result(self) -> None:
        if self.error:
            raise RuntimeError(f"Traceback ...\n{self.error}")

    def cancel(self, check: bool = False) -> None:
        self.cancelled = True


@pytest.fixture
def sweep(tmp_path):
    runs = plan.build_runs(grid.load_sweep(grid.preset_path("smoke")), ["xs"], grid.VARIANTS,
                           [f"results_dir={tmp_path}"])
    tasks = plan.stage0_tasks(runs)
    jobs = {(t.kind, t.part): FakeJob(f"{t.kind} {t.part}".strip()) for t in tasks}
    builds = Stage0Builds(tasks)
    for t in tasks:
        builds.add(t, jobs[t.kind, t.part])
    return SimpleNamespace(runs={r.variant: r for r in runs}, tasks=tasks, jobs=jobs, builds=builds)


def test_a_run_waits_for_its_own_stage0_artefacts_only(sweep):
    assert all(sweep.builds.ready(t) for t in sweep.tasks)
    assert not any(sweep.builds.ready(r) for r in sweep.runs.values())
    sweep.jobs["tokenizer", "continuous"].finished = True
    assert not any(sweep.builds.ready(r) for r in sweep.runs.values())  # the FID features too
    sweep.jobs["features", plan.net_part(None)].finished = True
    assert not any(sweep.builds.ready(r) for r in sweep.runs.values())  # the other nets too
    for seed in FID_NET_SEEDS:
        sweep.jobs["features", plan.net_part(seed)].finished = True
    ready = {v for v, r in sweep.runs.items() if sweep.builds.ready(r)}
    assert ready == {"continuous-random", "continuous-raster"}  # the VQ is still being built
    sweep.jobs["tokenizer", "discrete"].finished = True
    assert all(sweep.builds.ready(r) for r in sweep.runs.values())


def test_artefacts_built_before_the_sweep_do_not_hold_a_run(sweep):
    builds = Stage0Builds([t for t in sweep.tasks if t.kind != "features"])  # features exist
    for t in builds.tasks.values():
        builds.add(t, sweep.jobs[t.kind, t.part])
    sweep.jobs["tokenizer", "discrete"].finished = True
    assert builds.ready(sweep.runs["discrete-raster"]) and not builds.ready(sweep.runs["continuous-raster"])


def test_a_failed_build_stops_the_runs_that_need_it(sweep):
    for key in (("features", plan.net_part(None)), *(("features", plan.net_part(s)) for s in FID_NET_SEEDS), ("tokenizer", "continuous")):
        sweep.jobs[key].finished = True
    vq = sweep.jobs["tokenizer", "discrete"]
    vq.finished, vq.error = True, "ValueError: codebook_size must be > 0"
    assert sweep.builds.ready(sweep.runs["continuous-random"])
    with pytest.raises(Stage0Failed, match=r"stage 0 \(tokenizer discrete\) failed: ValueError: "
                                           r"codebook_size must be > 0; logs in /jobs/tokenizer discrete"):
        sweep.builds.ready(sweep.runs["discrete-random"])


def test_run_capped_lets_ready_items_pass_and_keeps_the_cap():
    """Items "a" (ready from its third check on), "b", "c", "d"; at most two alive; each job
    ends at its second check. "a" does not hold "b" and "c" back, and starts once ready."""
    checks, started, alive = {"a": 0}, [], []
    jobs: list[FakeJob] = []

    class Ends(FakeJob):
        polls = 0

        def done(self) -> bool:
            self.polls += 1
            self.finished = self.finished or self.polls >= 2
            return self.finished

    def ready(item: str) -> bool:
        checks[item] = checks.get(item, 0) + 1
        return item != "a" or checks["a"] >= 3

    def submit(item: str) -> FakeJob:
        started.append(item)
        jobs.append(Ends(item))
        alive.append(sum(not j.finished for j in jobs))
        return jobs[-1]

    run_capped(["a", "b", "c", "d"], submit, cap=2, poll=0, ready=ready)
    assert started[:2] == ["b", "c"] and sorted(started) == ["a", "b", "c", "d"]
    assert max(alive) == 2 and all(j.finished for j in jobs)


def test_run_capped_cancels_the_live_jobs_when_ready_fails():
    jobs = []

    def ready(item: str) -> bool:
        if item == "boom" and jobs:
            raise Stage0Failed("stage 0 (tokenizer discrete) failed")
        return item != "boom"

    def submit(item: str) -> FakeJob:
        jobs.append(FakeJob(item))
        return jobs[-1]

    with pytest.raises(Stage0Failed):
        run_capped(["run", "boom"], submit, cap=2, poll=0, ready=ready)
    assert [j.cancelled for j in jobs] == [True]
