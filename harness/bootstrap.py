"""Run a command in the project's environment whatever ``python`` it was started with. Stdlib only.

The README's commands say ``python analysis/plot_scaling.py`` and ``python -m harness.X``, but in a
fresh shell ``python`` is often the system interpreter, which has none of the project's packages:
the command would end in ``ModuleNotFoundError``. ``use_project_python()``, called before any
third-party import, re-executes the same command line with ``<repo>/.venv/bin/python`` (made by
``make setup``) when the project's packages are missing here, or, when that cannot help (no
``.venv/``, or ``.venv/`` lacks them too), prints one line saying what to run and exits 2.

Scripts call it in their ``if __name__ == "__main__":`` header; ``harness/__init__.py`` calls
``for_module_command()``, which acts only while ``python -m harness.X`` is starting (Python sets
``sys.argv[0]`` to ``"-m"`` while it imports the module's packages), so importing the package as a
library never re-executes anything. This module must stay importable by any Python 3.8+: stdlib
only, and it imports nothing from the harness.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".venv"
# Core dependencies (pyproject.toml) whose absence means "not the project's environment".
NEEDS = ("numpy", "pandas", "torch", "omegaconf", "mlflow", "matplotlib")
# Set on the re-executed process: if its packages are missing too, report instead of exec-ing again.
REEXEC = "HARNESS_BOOTSTRAP_REEXEC"


def _command_name() -> str:
    """The command as the user knows it: the script's file name, or the ``-m`` module's name."""
    argv = getattr(sys, "orig_argv", None) or []
    if sys.argv[0] == "-m" and "-m" in argv[:-1]:
        return argv[argv.index("-m") + 1]
    return Path(sys.argv[0]).name or "python"


def use_project_python(needs: tuple[str, ...] = NEEDS, venv: Path = VENV) -> None:
    """Return if ``needs`` are importable here; else re-execute this command line with ``venv``'s
    python, or print one line (what to run) and exit 2. Never returns with a package missing."""
    reexecuted = os.environ.pop(REEXEC, None)  # popped: the command's own children start clean
    missing = [m for m in needs if importlib.util.find_spec(m) is None]
    if not missing:
        return
    python = venv / "bin" / "python"
    argv = getattr(sys, "orig_argv", None)  # Python >= 3.10: the command line as typed
    if argv is None and sys.argv[0] != "-m":
        argv = [sys.executable, *sys.argv]
    in_venv = Path(sys.prefix).resolve() == venv.resolve()
    if python.is_file() and argv and not in_venv and not reexecuted:
        os.environ[REEXEC] = "1"
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(str(python), [str(python), *argv[1:]])
    if not python.is_file():
        problem, fix = "is missing", "make setup"
    else:
        problem, fix = f"lacks {', '.join(missing)}", "rm -f .venv/.installed && make setup"
    print(f"error: {_command_name()}: the project's environment {venv} {problem}; run "
          f"'{fix}' in {venv.parent}, then run this command again", file=sys.stderr)
    raise SystemExit(2)


def for_module_command() -> None:
    """``use_project_python()`` while ``python -m harness.X`` starts; nothing on a plain import."""
    if sys.argv and sys.argv[0] == "-m":
        use_project_python()
