"""Injected faults: named points in a run where a test stops the process as a real interrupt would.

Reliability tests do not race a signal against a running job (on a busy machine the signal lands
anywhere, or after the job ended). They name the moment instead, through the environment:

    HARNESS_FAULT="<point>:<action>[@<hit>]"   (several: comma-separated)
    HARNESS_FAULT_DIR=<folder>                 (optional)

At the ``hit``-th time (default 1) that this process reaches ``point``, ``action`` happens:
``SIGINT``, ``SIGTERM`` or ``SIGKILL`` sent to this process (what Ctrl-C, a scheduler's
cancellation and ``kill -9`` send), or ``pause``: wait until the file ``<point>.release`` appears
in ``HARNESS_FAULT_DIR`` (the test then signals the paused process, or its driver, from outside).
With ``HARNESS_FAULT_DIR`` set a fault fires once per folder: ``<point>.fired`` is created
(exclusively) before it fires, and a point whose file exists is passed, so a resumed, requeued or
parallel job does not hit it again, and the test waits on that file rather than on a clock (it
holds the ``where`` of the point that fired, e.g. the run directory).

Points (each placed where a stop would hurt most):
    metrics.appended     a metric is in ``metrics.jsonl`` but not yet sent to MLflow
    checkpoint.rotating  ``last.ckpt`` moved to ``prev.ckpt``, the new one not yet in place
    evaluate.generated   FID images generated, GenEval not yet run, no metric written
    run.closing          a sweep job's run evaluated, its MLflow run not yet caught up and closed
    table.writing        the results table's new contents in a temp file, not yet renamed
Unset (every real run), ``fault`` is one dictionary lookup.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

ENV, DIR_ENV = "HARNESS_FAULT", "HARNESS_FAULT_DIR"
POINTS = ("metrics.appended", "checkpoint.rotating", "evaluate.generated", "run.closing", "table.writing")
ACTIONS = ("SIGINT", "SIGTERM", "SIGKILL", "pause")
PAUSE_LIMIT_S = 1800.0  # a paused process nobody releases goes on after this

_hits: dict[str, int] = {}


def parse(spec: str) -> dict[str, tuple[str, int]]:
    """``"point:action@hit,..."`` -> ``{point: (action, hit)}``; ValueError on a bad entry."""
    out = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        point, _, rest = item.partition(":")
        action, _, hit = rest.partition("@")
        if point not in POINTS or action not in ACTIONS or (hit and not hit.isdigit()):
            raise ValueError(f"{ENV}: bad entry {item!r} (points: {', '.join(POINTS)}; "
                             f"actions: {', '.join(ACTIONS)}; then optionally @<hit>)")
        out[point] = (action, int(hit or 1))
    return out


def fault(point: str, where: str | Path = "") -> None:
    """Mark ``point``; fire the fault planned there for this hit, if any. ``where`` (e.g. the run
    directory) is written into the ``.fired`` file, for the test to know which job stopped."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    planned = parse(spec).get(point)
    _hits[point] = _hits.get(point, 0) + 1
    if planned is None or planned[1] != _hits[point]:
        return
    folder = os.environ.get(DIR_ENV)
    if folder:
        try:  # exclusive: of several processes at this point, one fires
            fd = os.open(Path(folder) / f"{point}.fired", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, str(where).encode())
        os.close(fd)
    action = planned[0]
    if action == "pause":
        release = Path(folder or ".") / f"{point}.release"
        end = time.monotonic() + PAUSE_LIMIT_S
        while not release.exists() and time.monotonic() < end:
            time.sleep(0.05)  # a signal's handler runs here (KeyboardInterrupt, submitit's USR2)
        return
    os.kill(os.getpid(), getattr(signal, action))
    time.sleep(1.0)  # SIGINT/SIGTERM handlers run at the next bytecode; don't race past the point
