"""Run a sweep's jobs: ``debug`` (in this process, through submitit), ``local`` (processes forked
from a server that imported the harness once, at most ``max_parallel`` at once) or ``slurm``
(submitit job arrays); stage 0 always first, and a run only once the stage-0 artefacts it needs
are built.

The local launcher keeps its own queue and starts a job only when a slot frees (submitit's local
executor would start every job at once, each paying ~11 s of imports). On SLURM, stage 0 is a job (an array when
several artefacts are missing) that every run array depends on (``afterok``); runs are grouped
into one array per size, since resources are per size. The cluster is always named explicitly:
``cluster=None`` would pick SLURM whenever ``srun`` is on the PATH.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import submitit
from omegaconf import DictConfig, OmegaConf

from harness.errors import one_line
from harness.run_dir import RunDir
from harness.sweep import forkserver, plan, records
from harness.sweep.forkserver import ForkedJob
from harness.sweep.jobs import RunJob, Stage0Job
from harness.sweep.live import View
from harness.sweep.plan import Run, Stage0Task


class Stage0Failed(RuntimeError):
    """A stage-0 job failed; the runs that need it cannot start."""


@dataclass
class Sweep:
    """What a launcher needs: the sweep's settings, its runs, those left to do, stage 0."""

    name: str
    spec: DictConfig
    runs: list[Run]
    todo: list[Run]
    stage0: list[Stage0Task]
    table_path: Path
    sweep_dir: Path
    view: View

    def job(self, run: Run) -> RunJob:
        return RunJob(run.cfg, run.seeds, self.name, self.table_path)

    def log(self, text: str) -> None:
        self.view.log(text)

    def show(self, waiting: Sequence[Run] = ()) -> None:
        """Refresh the live view; runs still in the driver's queue count as queued."""
        self.view.refresh(waiting)


def _stage0_job(task: Stage0Task) -> Stage0Job:
    return Stage0Job(task.kind, task.cfg, task.part)


def _check_stage0(jobs: list, tasks: list[Stage0Task],
                  result: Callable = lambda job: job.result()) -> None:
    for job, task in zip(jobs, tasks):
        try:
            result(job)
        except Exception as e:
            lines = str(e).strip().splitlines()  # a remote traceback: its last line is the error
            last = lines[-1] if lines else type(e).__name__
            folder = job.folder if isinstance(job, ForkedJob) else Path(job.paths.folder)
            raise Stage0Failed(f"stage 0 ({task.name}) failed: {last}; "
                               f"logs in {folder}") from None


# ---- debug ----------------------------------------------------------------------------------

class _Returned:
    """Return a job's exception instead of raising it: submitit's debug executor would open pdb
    on it, which a test or a script without a terminal cannot answer."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self):
        try:
            return self.fn()
        except Exception as e:
            return e


def _raise_returned(job):
    result = job.result()
    if isinstance(result, Exception):
        raise result
    return result


def run_debug(sweep: Sweep) -> None:
    """Everything in this process, one job after the other (tests, quick checks)."""
    ex = submitit.AutoExecutor(folder=sweep.sweep_dir / "debug", cluster="debug")
    _check_stage0([ex.submit(_Returned(_stage0_job(t))) for t in sweep.stage0], sweep.stage0,
                  _raise_returned)
    for run in sweep.todo:
        result = ex.submit(_Returned(sweep.job(run))).result()
        if isinstance(result, Exception):
            sweep.log(f"run {run.key} failed: {one_line(result, typed=True)}")
        sweep.show()


# ---- local ----------------------------------------------------------------------------------

def run_capped(items: list, submit: Callable, cap: int, tick: Callable[[list], None] | None = None,
               every: float = 30.0, poll: float = 0.1,
               ready: Callable[[object], bool] = lambda item: True) -> list:
    """Submit ``items`` in order so that at most ``cap`` jobs are alive, each once ``ready(item)``
    (an item that is not ready yet lets later ones pass); call ``tick(queued_items)`` every
    ``every`` seconds. Ctrl-C, or an error from ``ready``, cancels the live jobs (their runs
    resume on the next launch)."""
    queue, active, jobs = list(items), [], []
    last = time.monotonic()
    try:
        while queue or active:
            active = [j for j in active if not j.done()]
            free = cap - len(active)
            for item in [i for i in queue if ready(i)][:free] if free > 0 else []:
                queue.remove(item)
                job = submit(item)
                active.append(job)
                jobs.append(job)
            if tick is not None and time.monotonic() - last >= every:
                tick(queue)
                last = time.monotonic()
            time.sleep(poll)
    except BaseException:
        for j in active:
            j.cancel(check=False)
        raise
    return jobs


def largest_first(runs: list[Run]) -> list[Run]:
    """Runs by descending cost (``Run.cost``): with a cap on parallel jobs, starting the longest
    first keeps the last slot from running alone."""
    return sorted(runs, key=lambda run: run.cost, reverse=True)


class Stage0Builds:
    """A local sweep's stage-0 jobs, by artefact. A run may start once every artefact it needs
    (``plan.stage0_needs``) is built, so one token type's runs train while the other's tokenizer
    is still being built; a failed build stops the sweep with :class:`Stage0Failed`."""

    def __init__(self, tasks: list[Stage0Task]):
        self.tasks = {t.path: t for t in tasks}  # to build in this sweep; others exist already
        self.jobs: dict[Path, object] = {}
        self.built: set[Path] = set()
        self._needs: dict[str, list[Path]] = {}  # run key -> its artefacts (hashing configs is slow)

    def add(self, task: Stage0Task, job) -> None:
        self.jobs[task.path] = job

    def ready(self, item: Stage0Task | Run) -> bool:
        """Stage-0 tasks at once; a run when every artefact it needs is built."""
        if isinstance(item, Stage0Task):
            return True
        if item.key not in self._needs:
            self._needs[item.key] = [t.path for t in plan.stage0_needs(item)]
        for path in self._needs[item.key]:
            if path not in self.tasks or path in self.built:
                continue
            job = self.jobs.get(path)
            if job is None or not job.done():
                return False
            _check_stage0([job], [self.tasks[path]])
            self.built.add(path)
        return True


def run_local(sweep: Sweep) -> None:
    """Processes on this machine, ``launcher.local.max_parallel`` at a time: stage 0 first, then
    the runs, longest first, each as soon as its own stage-0 artefacts are built."""
    spec = sweep.spec.launcher.local
    forkserver.context()  # started already by the CLI (harness.sweep.__main__), or now
    builds = Stage0Builds(sweep.stage0)

    def submit(item: Stage0Task | Run):
        if isinstance(item, Stage0Task):
            job = ForkedJob(_stage0_job(item), item.path.parent / "jobs", spec.timeout_min)
            builds.add(item, job)
            return job
        job = ForkedJob(sweep.job(item), RunDir(item.dir).jobs, spec.timeout_min)
        records.write_job(item.dir, "local", job.job_id, sweep.name)
        return job

    run_capped([*sweep.stage0, *largest_first(sweep.todo)], submit, spec.max_parallel,
               lambda queued: sweep.show([q for q in queued if isinstance(q, Run)]),
               sweep.view.interval, ready=builds.ready)


# ---- slurm ----------------------------------------------------------------------------------

def resources(slurm: DictConfig, override: DictConfig | None) -> dict:
    """The sweep's default SLURM resources with the non-null fields of ``override`` on top."""
    out = {k: slurm[k] for k in ("time_min", "cpus_per_task", "gpus_per_node", "mem_gb")}
    if override is not None:
        out.update({k: v for k, v in OmegaConf.to_container(override).items() if v is not None})
    return out


def slurm_executor(folder: Path, slurm: DictConfig, res: dict, name: str, nodes: int = 1,
                   tasks_per_node: int = 1, dependency: str | None = None) -> submitit.AutoExecutor:
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=slurm.max_requeues)
    params = {"name": name, "timeout_min": res["time_min"], "cpus_per_task": res["cpus_per_task"],
              "mem_gb": res["mem_gb"], "nodes": nodes, "tasks_per_node": tasks_per_node,
              "slurm_array_parallelism": slurm.array_parallelism,
              "slurm_signal_delay_s": slurm.signal_delay_s}
    if res["gpus_per_node"]:
        params["gpus_per_node"] = res["gpus_per_node"]
    if slurm.partition:
        params["slurm_partition"] = slurm.partition
    if slurm.account:
        params["slurm_account"] = slurm.account
    if dependency:
        params["slurm_additional_parameters"] = {"dependency": dependency, "kill-on-invalid-dep": "yes"}
    ex.update_parameters(**params)
    return ex


def submit_slurm(sweep: Sweep) -> list:
    """Submit stage 0 and one array per size; returns the run jobs (ids also in each run dir)."""
    slurm = sweep.spec.launcher.slurm
    folder = sweep.sweep_dir / "slurm" / time.strftime("%Y%m%d-%H%M%S")
    dependency = None
    if sweep.stage0:
        ex = slurm_executor(folder, slurm, resources(slurm, slurm.stage0), f"{sweep.name}-stage0")
        with ex.batch():
            stage0 = [ex.submit(_stage0_job(t)) for t in sweep.stage0]
        dependency = "afterok:" + ":".join(sorted({j.job_id.split("_")[0] for j in stage0}))
        sweep.log(f"stage 0: {len(stage0)} job(s) {', '.join(j.job_id for j in stage0)}")
    groups: dict[tuple, list[Run]] = {}
    for run in sweep.todo:
        t = run.cfg.train
        groups.setdefault((run.size, t.num_nodes, t.devices), []).append(run)
    jobs = []
    for (size, nodes, tasks), runs in groups.items():
        ex = slurm_executor(folder, slurm, resources(slurm, slurm.per_size.get(size)),
                            f"{sweep.name}-{size}", nodes, tasks, dependency)
        with ex.batch():
            batch = [ex.submit(sweep.job(r)) for r in runs]
        for run, job in zip(runs, batch):
            records.write_job(run.dir, "slurm", job.job_id, sweep.name)
        sweep.log(f"size {size}: {len(batch)} run(s) as job(s) {', '.join(j.job_id for j in batch)}")
        jobs += batch
    return jobs


def wait_slurm(sweep: Sweep, jobs: list, poll: float = 5.0) -> None:
    """Show the live view until every job has left the queue."""
    while not all(j.done() for j in jobs):
        sweep.show()
        time.sleep(min(poll, sweep.view.interval))
