"""The README's commands work as written, from a fresh shell whose ``python`` is the system one.

The commands are read from README.md itself (every line of its ``bash`` blocks and every inline
`make ...` / `python ...` span), so a README edit to a command that does not work fails here.
``python ...`` commands run with the system interpreter in a clean environment (no venv on PATH,
no VIRTUAL_ENV, no PYTHONPATH), which has none of the project's packages: ``harness/bootstrap.py``
must re-run them with ``.venv/bin/python``, or say in one line what to run (exit 2), never a
traceback. ``make`` commands only need their targets (``make -n``); sweeps are not run.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.bootstrap import NEEDS
from tests.analysis.test_plot_scaling import few_metrics, synthetic_runs, write_sweep

REPO = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = Path("/usr/bin/python3")
VERBATIM = {"analysis/plot_scaling.py", "analysis.plot_scaling"}  # run as written on a small sweep
OUTPUTS = ("fits.csv", "hypotheses.csv", "report.md", "scaling.png", "scaling.pdf")
OTHER = {"sbatch", "source"}  # commands the README shows that are not this project's to run


def readme_commands(readme: Path = REPO / "README.md") -> list[str]:
    """Each command the README shows, once: ``bash`` block lines (continuations joined, comments
    and blank lines dropped) and inline code spans that start with ``make`` or a python."""
    text = readme.read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(shlex.join(words))
    prose = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    for span in re.findall(r"`([^`\n]+)`", prose):
        words = shlex.split(span)
        if len(words) > 1 and words[0] in ("make", "python", "python3", ".venv/bin/python"):
            commands.append(shlex.join(words))
    return list(dict.fromkeys(commands))


def classify(command: str) -> tuple[str, list[str]]:
    """(kind, words): ``make`` (words: its targets), ``python`` (the system-python command's
    arguments), ``venv`` (a ``.venv/bin/python`` command's arguments), ``script`` (a repo script),
    ``other`` (cluster or shell commands: not run), or ``unknown``. An ``sbatch --wrap`` command
    is classified by what it wraps."""
    words = shlex.split(command)
    while words and re.fullmatch(r"[A-Za-z_]+=.*", words[0]):  # VAR=value prefixes, assignments
        words = words[1:]
    if not words:
        return "other", []
    head, rest = words[0], words[1:]
    if head == "sbatch" and "--wrap" in rest[:-1]:
        return classify(rest[rest.index("--wrap") + 1])
    if head == "make":
        return "make", [w for w in rest if "=" not in w and not w.startswith("-")]
    if head in ("python", "python3"):
        return "python", rest
    if head == ".venv/bin/python":
        return "venv", rest
    if (REPO / head).is_file():
        return "script", [head]
    return ("other" if head in OTHER else "unknown"), words


def target(args: list[str]) -> str:
    """What a python command runs: ``-m``'s module, or the script's path."""
    return args[args.index("-m") + 1] if "-m" in args else args[0]


COMMANDS = readme_commands()
KINDS = {c: classify(c) for c in COMMANDS}
PYTHON = sorted({target(a) for kind, a in KINDS.values() if kind == "python"})
MAKE = sorted({t for kind, ts in KINDS.values() if kind == "make" for t in ts})
VENV = sorted({target(a) for kind, a in KINDS.values() if kind == "venv"})
needs_system_python = pytest.mark.skipif(not SYSTEM_PYTHON.is_file(), reason="no /usr/bin/python3")


def fresh_shell(tmp_path: Path) -> dict[str, str]:
    """A fresh shell's environment: ``python`` is the system one; nothing of the venv. MLflow
    points into tmp_path so a test never writes the repo's store."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if not (bin_dir / "python").exists():
        (bin_dir / "python").symlink_to(SYSTEM_PYTHON)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": os.environ.get("HOME", str(tmp_path)),
            "LANG": "C.UTF-8", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}


def run(command: list[str] | str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    shell = isinstance(command, str)
    return subprocess.run(["bash", "-c", command] if shell else command, cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_the_readme_shows_only_commands_this_file_checks():
    unknown = [c for c, (kind, _) in KINDS.items() if kind == "unknown"]
    assert not unknown, f"README commands this test cannot check: {unknown}"
    assert VERBATIM & set(PYTHON), "the README no longer shows `python analysis/plot_scaling.py`"
    assert "sweep" in MAKE and "test" in MAKE


@pytest.mark.parametrize("name", MAKE)
def test_make_targets_exist(name):
    proc = subprocess.run(["make", "-n", name], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("name", VENV)
def test_venv_commands_name_a_module_or_script_that_exists(name):
    """``.venv/bin/python`` is this test's interpreter: what it is told to run must be there."""
    assert (REPO / name).is_file() if name.endswith(".py") else importlib.util.find_spec(name)


@needs_system_python
@pytest.mark.parametrize("name", PYTHON)
def test_system_python_commands_run_in_the_projects_environment(name, tmp_path):
    """``python <script or -m module> --help`` with the system python: usage, exit 0. Scripts run
    from another directory by absolute path; ``-m`` modules from the repo, as written."""
    if name.endswith(".py"):
        command, cwd = ["python", str(REPO / name), "--help"], tmp_path
    else:
        command, cwd = ["python", "-m", name, "--help"], REPO
    proc = run(command, cwd, fresh_shell(tmp_path))
    assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.slow
@needs_system_python
@pytest.mark.parametrize("command", [c for c, (k, a) in KINDS.items()
                                     if k == "python" and target(a) in VERBATIM])
def test_the_analysis_command_runs_as_written(command, tmp_path):
    """The README's analysis command, word for word, in a fresh shell in a project folder whose
    results/ holds a small sweep: it writes the analysis beside the sweep's runs.csv."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "analysis").symlink_to(REPO / "analysis", target_is_directory=True)
    runs = few_metrics(synthetic_runs(project, seeds=1)).drop(columns=["fid", "geneval_overall"])
    csv = write_sweep(project, runs)
    proc = run(command, project, fresh_shell(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    for name in OUTPUTS:
        assert (csv.parent / "analysis" / name).stat().st_size > 0, name


@needs_system_python
@pytest.mark.parametrize("venv", ["absent", "without the packages"])
@pytest.mark.parametrize("command", [["python", "analysis/plot_scaling.py"],
                                     ["python", "-m", "harness.train", "--help"]])
def test_without_the_environment_one_line_says_what_to_run(command, venv, tmp_path):
    """A checkout whose .venv/ is absent, or lacks the packages (its python re-executed once,
    then no further): exit 2 and one line saying what to run, never a traceback."""
    has = f"import importlib.util as u, sys; sys.exit(not all(map(u.find_spec, {NEEDS!r})))"
    if run([str(SYSTEM_PYTHON), "-c", has], tmp_path, {}).returncode == 0:
        pytest.skip("the system python has the project's packages: nothing to bootstrap")
    checkout = tmp_path / "checkout"
    for path in ("harness/__init__.py", "harness/bootstrap.py", "analysis/plot_scaling.py"):
        (checkout / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / path, checkout / path)
    if venv != "absent":
        (checkout / ".venv" / "bin").mkdir(parents=True)
        (checkout / ".venv" / "bin" / "python").symlink_to(SYSTEM_PYTHON)
    proc = run(command, checkout, fresh_shell(tmp_path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    [line] = proc.stderr.splitlines()
    assert line.startswith("error: ") and "the project's environment" in line, line
    fix = "make setup" if venv == "absent" else "rm -f .venv/.installed && make setup"
    assert f"; run '{fix}' in {checkout}" in line, line
