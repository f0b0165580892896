"""The sweep's live view, read from progress files: stage 0's artefacts, each running run's
step/total, loss and ETA, the sweep's counts; as plain lines (a log, CI) and as a rich display."""
from __future__ import annotations

import io
import time

import pytest
from rich.console import Console

from harness import config as C, progress
from harness.io import write_json
from harness.run_dir import RunDir
from harness.run_status import write_status
from harness.sweep import records
from harness.sweep.live import View, overall_eta
from harness.sweep.plan import Run, Stage0Task, net_part
from harness.sweep.status import Progress, RunState, duration


def two_runs(tmp_path) -> list[Run]:
    runs = []
    for size in ("xs", "s"):
        run = Run(C.load([f"model.size={size}", f"results_dir={tmp_path}"]), [0])
        run.dir.mkdir(parents=True)
        runs.append(run)
    return runs


def report(path, what: str, done: int, total: int, seconds: float, **values) -> None:
    """A progress file as a process ``seconds`` into the work would have left it."""
    now = time.time()
    write_json(path, {"what": what, "done": done, "total": total, "start": 0, "started": now - seconds,
                      "updated": now, **values})


def test_reporter_writes_throttled_and_the_eta_follows_the_rate(tmp_path):
    r = progress.Reporter(tmp_path / "p.json", "train", 100, every_s=3600)
    r.update(10, loss=0.5)
    r.update(20, loss=0.4)  # within every_s: not written
    p = progress.read(tmp_path / "p.json")
    assert (p["done"], p["loss"]) == (10, 0.5)
    r.update(100, loss=0.1)  # the last step always is
    assert progress.read(tmp_path / "p.json")["done"] == 100
    p = {"what": "train", "done": 30, "total": 120, "start": 10, "started": 0.0, "updated": 40.0}
    assert progress.eta_seconds(p) == 180.0  # 20 steps in 40 s (steps before a resume don't count)
    assert progress.describe({**p, "loss": 0.08123}) == "train 30/120, loss 0.08123, ETA 3m00s"
    assert progress.read(tmp_path / "absent.json") is None


def test_plain_lines_show_stage0_each_running_run_and_the_sweep(tmp_path, capsys):
    runs = two_runs(tmp_path)
    tok = Stage0Task("tokenizer", "continuous", tmp_path / "stage0" / "tok-abc", runs[0].cfg)
    feats = Stage0Task("features", net_part(None), tmp_path / "stage0" / "features-x", runs[0].cfg)
    report(progress.beside(tok.path), "train", 500, 2000, 50.0, loss=0.0123)
    view = View("demo", runs, runs, [tok, feats], every_s=3600)
    view.refresh(force=True)
    out = capsys.readouterr().out.splitlines()
    assert "[stage 0] tokenizer continuous: train 500/2000, loss 0.0123, ETA 2m30s" in out
    assert "[stage 0] features: starting" in out
    assert any(line.startswith("[sweep demo] 0/2 done, 0 running, 0 failed, 2 queued") for line in out)

    # stage 0 done; one run trains (it holds its lock), 30 of 120 steps in 60 s
    (tok.path / "meta.json").parent.mkdir(parents=True)
    (tok.path / "meta.json").write_text("{}")
    write_status(runs[1].dir, "running")
    report(RunDir(runs[1].dir).progress, "train", 30, 120, 60.0, loss=0.25)
    with records.run_lock(runs[1].dir):
        view.refresh(force=True)
    out = capsys.readouterr().out.splitlines()
    assert "[stage 0] tokenizer continuous: done" in out
    assert f"[run {runs[1].key}] train 30/120, loss 0.25, ETA 3m00s" in out
    # the overall ETA before any run finished: this run's 3 min, then the queued one, at this
    # run's 4 min per its cost
    summary = [line for line in out if line.startswith("[sweep demo]")][0]
    queued = 240 * runs[0].cost / runs[1].cost
    assert "1 running" in summary and "1 queued" in summary, summary
    assert summary.endswith(f"ETA {duration(180 + queued)}"), summary

    view.refresh()  # within every_s of the last: nothing printed
    assert capsys.readouterr().out == ""


def test_the_eta_before_any_run_finishes_shares_queued_cost_between_the_slots():
    """One slot trains while the other still builds stage 0: the queued runs' cost is shared by
    the launcher's two slots, not queued behind the one run that happens to be running."""
    costs = {"big": 4.0, "a": 1.0, "b": 1.0, "c": 2.0}
    tracker = Progress("demo", 4, 0, costs=costs)
    now = time.time()
    states = [RunState(k, "v", "s", "running" if k == "big" else "queued", "") for k in costs]
    running = {"big": {"what": "train", "done": 50, "total": 100, "start": 0, "started": now - 400,
                       "updated": now}}  # 800 s in all: 200 s per unit of cost, 400 s left
    assert overall_eta(tracker, states, running) == pytest.approx(400 + 4 * 200)  # one slot: a, b, c one by one
    assert overall_eta(tracker, states, running, slots=2) == pytest.approx(400 + 2 * 200)  # 4 units on 2 slots
    assert overall_eta(tracker, states, running, slots=8) == pytest.approx(400 + 2 * 200)  # c alone takes 2 units
    states[0] = RunState("big", "v", "s", "completed", "")
    assert overall_eta(tracker, states, {}, slots=2) is not None  # from the finished runs' rate


def test_a_terminal_gets_a_rich_live_display(tmp_path):
    runs = two_runs(tmp_path)
    write_status(runs[0].dir, "running")
    report(RunDir(runs[0].dir).progress, "FID samples", 64, 256, 8.0)
    net = Stage0Task("features", net_part(1), tmp_path / "stage0" / "features-y", runs[0].cfg)
    net.path.parent.mkdir()
    report(progress.beside(net.path), "train", 40, 800, 2.0)
    screen = io.StringIO()
    view = View("demo", runs, runs, [net], every_s=30,
                console=Console(file=screen, force_terminal=True, width=160))
    with records.run_lock(runs[0].dir):
        view.refresh(force=True)
        view.close()
    text = screen.getvalue()
    assert f"{runs[0].key} FID samples" in text and "64/256" in text and "ETA 0m24s" in text
    assert "stage 0 features seed 1" in text and "40/800" in text
    assert "sweep demo" in text and "1 running" in text
