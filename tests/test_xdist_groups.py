"""``make test`` relies on ``xdist_group`` marks (SLURM tests together, expensive module fixtures
built once): tests of one group run on one worker under ``-n 2 --dist loadgroup``; and on the
slow tests being handed out first."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

GROUPED = '''
import os, time, pytest
pytestmark = pytest.mark.xdist_group("together")

@pytest.mark.parametrize("i", range(6))
def test_grouped(i):
    time.sleep(0.2)
    with open(os.environ["OUT"], "a") as f:
        f.write(os.environ["PYTEST_XDIST_WORKER"] + "\\n")

@pytest.mark.parametrize("i", range(4))
def test_free(i):
    time.sleep(0.2)
'''


# the suite's hook, loaded from its file (and the slow marker, registered as in pyproject.toml)
HOOK = ("import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('suite_conftest', {str(REPO / 'tests' / 'xdist_groups.py')!r})\n"
        "suite = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(suite)\n"
        "pytest_collection_modifyitems = suite.pytest_collection_modifyitems\n"
        "def pytest_configure(config):\n    config.addinivalue_line('markers', 'slow: minutes')\n")


def run_suite(tmp_path: Path, tests: str) -> str:
    """``tests`` as a test file beside the suite's hook, run as ``make test`` runs (two workers);
    what its tests wrote to the file ``$OUT``."""
    (tmp_path / "conftest.py").write_text(HOOK)
    (tmp_path / "test_suite.py").write_text(tests)
    out = tmp_path / "out.txt"
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadgroup",
                          "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path)],
                         cwd=tmp_path, env={**os.environ, "OUT": str(out)},
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    return out.read_text()


def test_a_group_runs_on_one_worker(tmp_path):
    workers = run_suite(tmp_path, GROUPED).split()
    assert len(workers) == 6 and len(set(workers)) == 1, workers


ORDERED = '''
import os, pytest

def record(name):
    with open(os.environ["OUT"], "a") as f:
        f.write(os.environ["PYTEST_XDIST_WORKER"] + " " + name + "\\n")

@pytest.mark.parametrize("i", range(6))
def test_fast(i):
    record(f"fast{i}")

@pytest.mark.slow
@pytest.mark.parametrize("i", range(2))
def test_slow(i):
    record(f"slow{i}")
'''


def test_slow_tests_are_handed_out_first(tmp_path):
    """Written last in their file, the two slow tests are each worker's first."""
    order = run_suite(tmp_path, ORDERED)
    first: dict[str, str] = {}
    for line in order.splitlines():
        worker, name = line.split()
        first.setdefault(worker, name)
    assert sorted(first.values()) == ["slow0", "slow1"], order
