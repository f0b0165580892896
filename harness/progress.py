"""Live progress of a long piece of work (a tokenizer's or a run's training, the FID samples), as
a small JSON file that the working process rewrites every few seconds and the sweep driver reads.

Files rather than pipes: the driver shows the same view whether the work runs in a forked local
job, in a SLURM job on another node, or in a job started by another driver. A run's file is
``<run_dir>/progress.json``; a stage-0 artefact's sits beside its directory
(:func:`beside`). Torch-free, so the driver reads it without importing the training stack.
"""
from __future__ import annotations

import time
from pathlib import Path

from harness.io import read_json, write_json


def beside(artefact_dir: str | Path) -> Path:
    """Where the progress of building a stage-0 artefact directory is reported."""
    d = Path(artefact_dir)
    return d.with_name(d.name + ".progress.json")


class Reporter:
    """``update(done, loss=...)`` rewrites ``path`` (atomically) at most every ``every_s`` seconds;
    ``what`` names the work (``train``, ``FID samples``) and ``total`` its size in steps/items."""

    def __init__(self, path: str | Path, what: str, total: int, every_s: float = 2.0,
                 start: int = 0):
        self.path, self.what, self.total, self.every_s = Path(path), what, int(total), every_s
        self.started, self.start, self.last = time.time(), int(start), 0.0

    def due(self, done: int) -> bool:
        """Whether an update now would be written (callers skip computing values otherwise)."""
        return time.time() - self.last >= self.every_s or done >= self.total

    def update(self, done: int, force: bool = False, **values: float) -> None:
        if not (force or self.due(done)):
            return
        now = self.last = time.time()
        try:
            write_json(self.path, {"what": self.what, "done": int(done), "total": self.total,
                                   "start": self.start, "started": self.started, "updated": now,
                                   **{k: float(v) for k, v in values.items()}})
        except OSError:
            pass  # progress is a courtesy: a full disk must not stop the work (it stops elsewhere)


def read(path: str | Path) -> dict | None:
    """The last report at ``path``, or None when there is none (or it is being replaced)."""
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def eta_seconds(p: dict) -> float | None:
    """Time left at the rate since this process started (steps before a resume not counted)."""
    done = p["done"] - p.get("start", 0)
    if done <= 0:
        return None
    return (p["updated"] - p["started"]) / done * max(0, p["total"] - p["done"])


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


def details(p: dict) -> list[str]:
    """``["loss 0.0812", "ETA 1m05s"]``: the reported values, then the time left."""
    return [f"{k} {v:.4g}" for k, v in p.items()
            if k not in ("what", "done", "total", "start", "started", "updated")] + [
        f"ETA {duration(eta_seconds(p))}"]


def describe(p: dict) -> str:
    """``train 120/400, loss 0.0812, ETA 1m05s``."""
    return ", ".join([f"{p['what']} {p['done']}/{p['total']}", *details(p)])


def lightning_callback(reporter: Reporter):
    """A Lightning callback that reports ``trainer.global_step`` and the step's loss (the
    training step's returned loss) to ``reporter`` from global rank 0 (the loss is read, a
    device sync, only when a report is due)."""
    from lightning.pytorch.callbacks import Callback

    class _Report(Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            reporter.start = trainer.global_step
            reporter.started = time.time()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if not trainer.is_global_zero or not reporter.due(trainer.global_step):
                return
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
            values = {"loss": float(loss)} if loss is not None else {}
            reporter.update(trainer.global_step, **values)

    return _Report()
