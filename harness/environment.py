"""The software a result was computed with: the versions that can change its bits.

``pyproject.toml`` sets lower bounds only, so two installs can differ. On one machine, a `.venv`
rebuilt from the package mirror changed stage 0 in the fourth digit and the runs within training
noise (calibration item 48 in ``docs/results/cpu-study``). Stage-0 artefacts therefore record the
environment that built them (``meta.json``), and runs the environments they trained in
(``environment.json``). The same versions on another machine still differ in the last digits
(calibration item 76): the CPU and the instruction set torch's kernels use are recorded too.
"""
from __future__ import annotations

import importlib.metadata
import os
import platform

from harness.io import read_json, write_json

# what the numbers depend on: the tensor stack, the trainer, the text encoder, the image decoder
PACKAGES = ("torch", "torchvision", "numpy", "lightning", "transformers", "sentence-transformers", "scipy",
            "pillow")


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, str]:
    """Python, the platform, the CPU and the instruction set torch's CPU kernels use (e.g.
    AVX512; different sets round differently), and the installed versions of ``PACKAGES``
    (those present)."""
    import torch

    out = {"python": platform.python_version(), "platform": platform.platform(), "cpu": cpu_model(),
           "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def record_environment(path: str | os.PathLike) -> list[dict[str, str]]:
    """Add this process's environment to the list in ``path`` unless it is already there (a run
    resumed in another install lists both, in the order they trained); returns the list."""
    seen = read_json(path) if os.path.exists(path) else []
    env = environment()
    if env not in seen:
        seen.append(env)
        write_json(path, seen)
    return seen
