"""``make test`` relies on ``xdist_group`` marks (SLURM tests together, expensive module fixtures
built once): tests of one group run on one worker under ``-n 2 --dist loadgroup``."""
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


def test_a_group_runs_on_one_worker(tmp_path):
    (tmp_path / "conftest.py").write_text(  # the suite's hook, loaded from its file
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('suite_conftest', {str(REPO / 'tests' / 'xdist_groups.py')!r})\n"
        "suite = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(suite)\n"
        "pytest_collection_modifyitems = suite.pytest_collection_modifyitems\n")
    (tmp_path / "test_grouped.py").write_text(GROUPED)
    out = tmp_path / "workers.txt"
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadgroup",
                          "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path)],
                         cwd=tmp_path, env={**os.environ, "OUT": str(out)},
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    workers = out.read_text().split()
    assert len(workers) == 6 and len(set(workers)) == 1, workers
