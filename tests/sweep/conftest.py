"""Fixtures for the sweep tests: a results dir per test over one stage 0 for the whole session, and
a way to run ``python -m harness.sweep`` as a user would (a subprocess, its own MLflow store)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import link_tiny_feature_nets, session_dir

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def sweep_stage0(tmp_path_factory) -> Path:
    """``stage0/`` shared by the sweep tests, by every xdist worker too: tokenizers are trained by
    the first sweep that needs them (stage 0's file locks make the others wait); the FID feature
    net is the tiny one, at the default spec's path."""
    root = session_dir(tmp_path_factory, "sweep-stage0")
    link_tiny_feature_nets(root)
    return root / "stage0"


@dataclass
class Sweeper:
    """Runs the sweep CLI against one results dir and one MLflow store."""

    results: Path
    uri: str
    extra_env: dict[str, str] = field(default_factory=dict)  # e.g. an injected fault (harness.faults)

    def env(self) -> dict[str, str]:
        return {**os.environ, "MLFLOW_TRACKING_URI": self.uri, "PYTHONUNBUFFERED": "1", **self.extra_env}

    def args(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "harness.sweep", *args, f"results_dir={self.results}"]

    def run(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        start = time.time()
        out = subprocess.run(self.args(*args), cwd=REPO, env=self.env(), capture_output=True,
                             text=True, timeout=timeout)
        out.wall = time.time() - start
        return out

    def start(self, *args: str, log: Path | None = None) -> subprocess.Popen:
        """The sweep in the background; its output to a pipe, or to the file ``log`` (which the
        test can read while the sweep runs)."""
        out = open(log, "w") if log else subprocess.PIPE
        return subprocess.Popen(self.args(*args), cwd=REPO, env=self.env(), stdout=out,
                                stderr=subprocess.STDOUT, text=True)

    def run_dirs(self) -> dict[str, Path]:
        """``<token>-<order>-<size> -> run dir``."""
        runs = self.results / "runs"
        return {"-".join(p.name.split("-")[:3]): p for p in runs.iterdir()} if runs.is_dir() else {}


@pytest.fixture
def new_sweeper(sweep_stage0, tmp_path):
    """``new_sweeper(name)``: another results dir (same stage 0, same MLflow store)."""

    def make(name: str) -> Sweeper:
        results = tmp_path / name
        results.mkdir()
        (results / "stage0").symlink_to(sweep_stage0, target_is_directory=True)
        return Sweeper(results, f"sqlite:///{tmp_path}/mlflow.db")

    return make


@pytest.fixture
def sweeper(new_sweeper) -> Sweeper:
    return new_sweeper("results")


def communicate(proc: subprocess.Popen, timeout: float) -> str:
    """``proc``'s output once it has ended; if it has not within ``timeout`` s, fail with what its
    process tree is and (py-spy) where its threads stand."""
    try:
        return proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        tree = subprocess.run(["ps", "-o", "pid,ppid,stat,etime,args", "--ppid", str(proc.pid), "-p",
                               str(proc.pid)], capture_output=True, text=True).stdout
        spy = Path(sys.executable).with_name("py-spy")
        stacks = subprocess.run([str(spy), "dump", "--pid", str(proc.pid)], capture_output=True, text=True,
                                timeout=60).stdout if spy.exists() else "(no py-spy)"
        proc.kill()
        raise AssertionError(f"still running after {timeout} s:\n{tree}\n{stacks}") from None


def wait_for(predicate, timeout: float, what: str, proc=None, poll: float = 0.05) -> None:
    """Poll ``predicate`` until true; fail after ``timeout`` s, or as soon as ``proc`` has ended."""
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the sweep ended before {what}: {proc.stdout and proc.stdout.read()}")
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")
