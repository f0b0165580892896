"""A run's ``status.json``: where it stands (queued, running, trained, completed, failed) and
when. Kept free of torch and Lightning so that the sweep's driver, its progress line and the
results table read it without importing the training stack."""
from __future__ import annotations

import time
from pathlib import Path

from harness.io import read_json, write_json
from harness.run_dir import RunDir


def read_status(path: str | Path) -> dict:
    f = RunDir(path).status
    return read_json(f) if f.exists() else {"status": "queued"}


def write_status(path: str | Path, status: str, **extra) -> None:
    old = read_status(path)
    old.update(extra, status=status, updated=time.time())
    write_json(RunDir(path).status, old)
