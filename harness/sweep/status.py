"""Where each run of a sweep stands, read from its run directory and the job queue.

States: ``completed`` (trained and every eval seed evaluated), ``running`` (a job holds the run's
lock, or SLURM says its job runs), ``queued`` (submitted, waiting), ``failed`` (the last attempt
failed; ``--retry-failed`` runs it again), ``pending`` (something left to do and no job on it:
never started, interrupted, or trained with seeds still to evaluate). The same view serves the
live progress line while a sweep runs and ``--status`` afterwards.
"""
from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import asdict, dataclass

from harness.progress import duration
from harness.run_dir import RunDir
from harness.sweep import records
from harness.sweep.plan import Run

STATES = ("completed", "running", "queued", "failed", "pending")
SLURM_ACTIVE = {"PENDING": "queued", "REQUEUED": "queued", "CONFIGURING": "running",
                "RUNNING": "running", "COMPLETING": "running", "SUSPENDED": "queued",
                "REQUEUE_HOLD": "queued", "REQUEUE_FED": "queued", "RESIZING": "running"}


@dataclass
class RunState:
    key: str
    variant: str
    size: str
    state: str
    detail: str = ""


def slurm_queue() -> dict[str, str]:
    """``job id -> squeue state`` for every job in the queue (array tasks one per line);
    empty when SLURM is not installed here."""
    if shutil.which("squeue") is None:
        return {}
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T"], capture_output=True, text=True,
                             timeout=60)
    except subprocess.TimeoutExpired:
        return {}
    if out.returncode != 0:
        return {}
    return dict(line.split()[:2] for line in out.stdout.splitlines() if len(line.split()) >= 2)


def seeds_left(run: Run) -> list[int]:
    return [s for s in run.seeds if not RunDir(run.dir).eval_metrics(s, run.cfg.eval.seed).exists()]


def assess(run: Run, queue: dict[str, str] | None = None) -> RunState:
    """The state of one run (``queue`` from :func:`slurm_queue`, read once per poll)."""
    from harness.run_status import read_status

    def state(name: str, detail: str = "") -> RunState:
        return RunState(run.key, run.variant, run.size, name, detail)

    status = read_status(run.dir)
    left = seeds_left(run)
    if status["status"] in ("trained", "completed") and not left and records.is_closed(run.dir):
        return state("completed")
    if records.is_locked(run.dir):
        return state("running", status["status"])
    job = records.read_job(run.dir)
    if job and job["launcher"] == "slurm" and queue and job["job_id"] in queue:
        return state(SLURM_ACTIVE.get(queue[job["job_id"]], "queued"), f"slurm {job['job_id']}")
    if status["status"] == "failed":
        return state("failed", str(status.get("reason", ""))[:200])
    if status["status"] in ("trained", "completed") and not left:
        return state("pending", "evaluated; its job stopped before closing it (MLflow, table)")
    if status["status"] in ("trained", "completed"):
        return state("pending", f"trained; {len(left)} of {len(run.seeds)} eval seeds left")
    if status["status"] == "running":
        return state("pending", "interrupted; resumes from its last checkpoint")
    return state("pending", "not started")


def assess_all(runs: list[Run]) -> list[RunState]:
    """Every run's state; SLURM's queue is read only when some run has been submitted there
    (``squeue`` takes ~9 s to fail where no controller answers: once per progress line)."""
    on_slurm = False
    for r in runs:
        job = records.read_job(r.dir)
        on_slurm = on_slurm or bool(job and job["launcher"] == "slurm")
    queue = slurm_queue() if on_slurm else {}
    return [assess(r, queue) for r in runs]


def counts(states: list[RunState]) -> dict[str, int]:
    return {s: sum(x.state == s for x in states) for s in STATES}


class Progress:
    """The live line: counts, elapsed time and an ETA from the completion rate of this session."""

    def __init__(self, name: str, total: int, done_at_start: int,
                 costs: dict[str, float] | None = None, done_cost: float = 0.0):
        """``costs``: run key -> relative cost (``Run.cost``; default 1 each), so that a sweep that
        starts its largest runs first is not predicted to take as long per run to the end;
        ``done_cost``: the cost of the runs done before this session."""
        self.name, self.total = name, total
        self.costs = costs
        self.done_cost = done_cost if costs else float(done_at_start)
        self.clock = time.time  # replaced by a fixed clock in tests
        self.start = self.clock()
        self.runs_start: float | None = None  # when the first run was seen running (after stage 0)

    def rate_eta(self, states: list[RunState]) -> float | None:
        """Seconds left at this session's rate of finished cost (0 when no run is left; None before
        the first finishes)."""
        cost = lambda wanted: sum((self.costs or {}).get(s.key, 1.0) for s in states if s.state in wanted)
        left = cost(("running", "queued", "pending"))
        finished = cost(("completed", "failed")) - self.done_cost
        if not left:
            return 0.0
        return (self.clock() - (self.runs_start or self.start)) / finished * left if finished > 0 else None

    def line(self, states: list[RunState], eta_s: float | None = None) -> str:
        """The counts; the ETA is ``eta_s`` when given, else from this session's completion rate."""
        c = counts(states)
        elapsed = self.clock() - self.start
        left = c["running"] + c["queued"] + c["pending"]
        eta_s = self.rate_eta(states) if eta_s is None else eta_s
        eta = "0m00s" if not left else duration(eta_s)
        return (f"[sweep {self.name}] {c['completed']}/{self.total} done, {c['running']} running, "
                f"{c['failed']} failed, {c['queued'] + c['pending']} queued; "
                f"elapsed {duration(elapsed)}, ETA {eta}")


def report(states: list[RunState]) -> str:
    """A fixed-width table of every run's state, then the totals."""
    lines = [f"{'run':<40} {'variant':<19} {'size':<6} {'state':<10} detail"]
    for s in states:
        lines.append(f"{s.key:<40} {s.variant:<19} {s.size:<6} {s.state:<10} {s.detail}")
    c = counts(states)
    lines.append(", ".join(f"{n} {k}" for k, n in c.items()))
    return "\n".join(lines)


def as_dicts(states: list[RunState]) -> list[dict]:
    return [asdict(s) for s in states]
