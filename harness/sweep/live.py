"""What the sweep driver shows while it waits, from the first second to the last.

Stage 0: each artefact being built (tokenizer, text features, FID feature net) with its
step/total, loss and ETA. Then each running run with its phase (``train``, ``FID samples``,
``GenEval samples``), step/total, loss and ETA, and the sweep's done/running/queued/failed counts
with an overall ETA. Everything is read from files (:mod:`harness.progress`, the run
directories), so a SLURM sweep, or one whose jobs another driver started, shows the same.

On a terminal it is a ``rich`` live display refreshed every second; in a log or CI, plain lines
every ``launcher.progress_every_s`` seconds (``[stage 0] ...``, ``[run <key>] ...``,
``[sweep <name>] ...``).
"""
from __future__ import annotations

import math
import sys
import time
from typing import Sequence

from harness import progress
from harness.run_dir import RunDir
from harness.sweep import status
from harness.sweep.plan import Run, Stage0Task


def stage0_line(task: Stage0Task) -> str:
    if task.done:
        return f"[stage 0] {task.name}: done"
    p = progress.read(progress.beside(task.path))
    return f"[stage 0] {task.name}: {progress.describe(p) if p else 'starting'}"


def run_progress(run: Run) -> dict | None:
    return progress.read(RunDir(run.dir).progress)


def overall_eta(tracker: status.Progress, states: list[status.RunState],
                running: dict[str, dict | None], slots: int | None = None) -> float | None:
    """Seconds left for the sweep: from the rate of runs finished in this session when there
    are some; before that, from the running runs' own progress: their time per unit of cost
    (``tracker.costs``, the plan's relative cost of each run) times the queued runs' cost, shared
    by ``slots`` runs at once (the launcher's cap; at least as many as are running now) but never
    shorter than the costliest queued run, after the longest running run."""
    by_rate = tracker.rate_eta(states)
    if by_rate is not None:
        return by_rate
    known = {k: p for k, p in running.items()
             if p and p["what"] == "train" and progress.eta_seconds(p) is not None}
    if not known:
        return None
    costs = tracker.costs or {}
    remaining = max(progress.eta_seconds(p) for p in known.values())
    per_cost = sum((p["updated"] - p["started"]) / max(1, p["done"] - p.get("start", 0)) * p["total"]
                   / costs.get(k, 1.0) for k, p in known.items()) / len(known)
    queued = [costs.get(s.key, 1.0) for s in states if s.state in ("queued", "pending")]
    shared = sum(queued) / max(1, status.counts(states)["running"], slots or 0)
    return remaining + max([shared, *queued]) * per_cost  # one run is not shared between slots


class View:
    """The sweep's live view; ``refresh(waiting)`` redraws it (the launchers call it often, it
    throttles itself), ``close()`` leaves the last state on screen."""

    def __init__(self, name: str, runs: list[Run], todo: list[Run], stage0: list[Stage0Task],
                 every_s: float, console=None, slots: int | None = None):
        """``console``: a ``rich`` console to draw on (default: a live display when stdout is a
        terminal, plain lines otherwise); ``slots``: how many runs the launcher runs at once
        (None: as many as are running), for the ETA."""
        self.name, self.runs, self.stage0, self.slots = name, runs, list(stage0), slots
        todo_keys = {r.key for r in todo}
        self.tracker = status.Progress(name, len(runs), len(runs) - len(todo),
                                       costs={r.key: r.cost for r in runs},
                                       done_cost=sum(r.cost for r in runs if r.key not in todo_keys))
        self.tty = console is not None or sys.stdout.isatty()
        self.interval = min(every_s, 1.0) if self.tty else every_s
        self.last = -math.inf
        self._live = None
        if self.tty:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._live = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("{task.fields[info]}"), console=console,
                                  refresh_per_second=2)
            self._tasks: dict[str, int] = {}
            self._live.start()

    def log(self, text: str) -> None:
        """A message above the live display (or a plain line)."""
        if self._live is not None:
            self._live.console.print(text)
        else:
            print(text, flush=True)

    def refresh(self, waiting: Sequence[Run] = (), force: bool = False) -> None:
        if not force and time.monotonic() - self.last < self.interval:
            return
        self.last = time.monotonic()
        states = status.assess_all(self.runs)
        keys = {r.key for r in waiting}
        for s in states:
            if s.state == "pending" and s.key in keys:
                s.state = "queued"
        by_key = {r.key: r for r in self.runs}
        running = {s.key: run_progress(by_key[s.key]) for s in states if s.state == "running"}
        if running and self.tracker.runs_start is None:
            self.tracker.runs_start = self.tracker.clock()  # the rate of finished runs counts from here
        eta = overall_eta(self.tracker, states, running, self.slots)
        summary = self.tracker.line(states, eta)
        if self._live is None:
            lines = [stage0_line(t) for t in self.stage0]  # once more when it is done
            lines += [f"[run {k}] {progress.describe(p) if p else 'starting'}" for k, p in running.items()]
            for line in lines + [summary]:
                print(line, flush=True)
        else:
            self._draw(states, running, summary)
        self.stage0 = [t for t in self.stage0 if not t.done]

    def _draw(self, states, running: dict[str, dict | None], summary: str) -> None:
        rows: dict[str, tuple[str, int, int, str]] = {}
        for t in self.stage0:
            p = None if t.done else progress.read(progress.beside(t.path))
            name = f"stage 0 {t.name}"
            rows[name] = (name, p["done"] if p else 0, p["total"] if p else 1,
                          "done" if t.done else (_info(p) if p else "starting"))
        for key, p in running.items():
            rows[key] = (f"{key} {p['what']}" if p else key, p["done"] if p else 0,
                         p["total"] if p else 1, _info(p) if p else "starting")
        c = status.counts(states)
        rows["__sweep__"] = (f"sweep {self.name}", c["completed"], len(self.runs),
                             summary.split(" done, ", 1)[-1])
        for key in [k for k in self._tasks if k not in rows]:
            self._live.remove_task(self._tasks.pop(key))
        for key, (desc, done, total, info) in rows.items():
            if key not in self._tasks:
                self._tasks[key] = self._live.add_task(desc, total=total, info=info)
            self._live.update(self._tasks[key], description=desc, completed=done, total=total, info=info)

    def close(self) -> None:
        self.refresh(force=True)
        if self._live is not None:
            self._live.stop()


def _info(p: dict) -> str:
    """``loss 0.0812 · ETA 1m05s`` for the live display."""
    return " · ".join(progress.details(p))
