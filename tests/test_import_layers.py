"""The package's import graph runs one way: a module imports only from its own layer or the
layers below it (so the sweep driver, the registry and the config never drag in the training
stack), and package ``__init__`` files import nothing heavy."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# bottom to top: a module may import from its own layer and those before it
LAYERS = ["bootstrap", "errors", "io", "environment", "progress", "faults", "registry", "config", "run_dir", "run_status", "data",
          "models", "text", "tokenizers", "tracking", "train", "sampling", "geneval", "evaluate",
          "sweep", "sync", "bench", "gpu_check"]


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if parts[0] == "harness" and len(parts) > 1 and parts[1] in LAYERS else None


def imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):  # function-level imports count too
        if isinstance(node, ast.ImportFrom) and node.module:
            out.append(node.module)
            if node.module == "harness":
                out += [f"harness.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names]
    return out


def test_every_module_of_the_harness_is_in_a_layer():
    tops = {p.name.removesuffix(".py") for p in (REPO / "harness").iterdir()
            if p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists())}
    assert tops - {"__init__", "__main__"} <= set(LAYERS), tops - set(LAYERS)


def test_no_module_imports_from_a_layer_above_its_own():
    upward = []
    for path in (REPO / "harness").rglob("*.py"):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        own = layer(module)
        upward += [f"{module} -> {t}" for t in imports(path)
                   if own is not None and (layer(t) or 0) > own]
    assert not upward, upward


def test_stage_packages_import_nothing_heavy():
    code = ("import sys, harness.train, harness.evaluate, harness.sweep, harness.registry, "
            "harness.run_dir, harness.run_status; "
            "print(sorted(m for m in ('torch', 'lightning', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
