"""Reading sweeps' results tables (``runs.csv``) for the analysis, one or several as one table.

A study's runs can live in more than one results folder: a second training seed trained later
into its own folder (``results_dir=...``), or one size added by a probe. The analysis scripts take
several ``runs.csv`` files and read them as one table, so seeds from two folders are averaged and
their spread counted like seeds from one. A run listed twice (the same run key and evaluation
seed in two tables) would be counted twice, so it is refused rather than silently kept once.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from harness.errors import UserError, one_line


def read_runs_csv(path: Path, flag: str = "--runs") -> pd.DataFrame:
    """One ``runs.csv``; bad input is a one-line error naming ``flag``."""
    if not path.is_file():
        raise UserError(flag, f"no such file: {path}")
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(flag, f"cannot read {path} as CSV: {one_line(e)}")


def read_runs_tables(paths: Sequence[Path], flag: str = "--runs") -> pd.DataFrame:
    """Several ``runs.csv`` files as one table (columns are the union; a column one table lacks
    is empty in its rows). A (run key, seed) pair in two tables is an error naming both files."""
    tables = [read_runs_csv(Path(p), flag) for p in paths]
    if len(tables) == 1:
        return tables[0]
    seen: dict[tuple, Path] = {}
    for path, table in zip(paths, tables):
        keys = [c for c in ("run_key", "seed") if c in table.columns]
        for row in table[keys].itertuples(index=False) if keys else ():
            if tuple(row) in seen:
                what = str(row[0]) + (f" (evaluation seed {row[1]})" if len(row) > 1 else "")
                raise UserError(flag, f"run {what} is in both {seen[tuple(row)]} and {path}; "
                                "list each run once")
            seen[tuple(row)] = Path(path)
    return pd.concat(tables, ignore_index=True, sort=False)
