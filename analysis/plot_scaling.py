"""Analyse a sweep: scaling-law fits with confidence intervals, the paper's figures, a report.

    python analysis/plot_scaling.py                      # latest results/*/runs.csv
    python analysis/plot_scaling.py --runs results/cpu/runs.csv --x train_flops
    python -m analysis.plot_scaling --experiment cpu     # read the sweep from MLflow

The main figures' x axis (``--x``) is by default ``params``, the paper's model size (generator +
text aligner); ``train_flops`` is the paper's compute (3 x forward x images). ``trainable_params``
and ``executed_flops`` count what runs instead (what the optimizer updates; the diffusion batch
multiplier and a frozen text path forward only): see ``harness/models/flops.py``. The hypotheses
and the extrapolation to the paper's sizes use ``params`` fits whatever ``--x`` is, and the
loss-vs-FLOPs figure ``train_flops``.

Writes into --out (default: the folder ``analysis/`` beside runs.csv): fits.csv,
extrapolation.csv, correlations.csv, winners.csv, hypotheses.csv, quantization.csv (the long
tail's measured vs predicted exponent), guidance.csv (FID vs size at the guidance scales
``python -m harness.evaluate.guidance`` measured), loss_floor.csv (the reducible loss against the
world's floor, for the variants whose runs carry one: evaluation writes it where the world allows),
report.md and the figures (PNG + PDF), then
logs that folder to the sweep's parent MLflow run when ``parent_run_id`` sits beside runs.csv.
"""
from __future__ import annotations

if __name__ == "__main__":  # run as a file by any python: re-run it with the project's .venv
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo, from any directory
    from harness.bootstrap import use_project_python

    use_project_python()

import argparse
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from analysis import figures, guidance, hypotheses, loss_floor, quantization
from analysis.fitting import (
    FIT_COLUMNS, X_AXES, correlations, extrapolate, fit_table, observations, split_by_status,
    winners)
from analysis.report import ReportInputs, text_use, write_report
from analysis.runs_table import read_runs_tables
from harness.errors import UserError, check_choice, cli_main, one_line
from harness.io import write_text
from harness.tracking import tracking_uri

GENEVAL_FORMS = ("loglinear", "logit")
METHODS = ("residual", "cases")
REQUIRED = ("token", "order", "params")
SAMPLES = Path("samples") / "fixed_prompts.png"
FIGURES = {"Validation loss, FID and GenEval vs size": "scaling.png",
           "GenEval per tag": "geneval_tags.png",
           "Validation loss vs training FLOPs": "loss_vs_flops.png",
           "Samples for fixed prompts (rows: variants, columns: sizes)": "samples.png"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line and exit 2, like every other bad input
        raise UserError("arguments", message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="plot_scaling", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--runs", type=Path, nargs="+", help="runs.csv of a sweep (default: the latest "
                     "one); several are read as one table, e.g. a second training seed's folder")
    src.add_argument("--experiment", help="read the sweep's child runs from this MLflow experiment")
    p.add_argument("--out", type=Path, help="output folder (default: analysis/ beside runs.csv)")
    p.add_argument("--x", default="params", help=f"x axis of the main figures: {X_AXES} (params: "
                   "the paper's model size; trainable_params, executed_flops: what runs)")
    p.add_argument("--geneval-form", default="loglinear", help=f"{GENEVAL_FORMS}")
    p.add_argument("--n-boot", type=int, default=500, help="bootstrap resamples per fit")
    p.add_argument("--ci-method", default="residual", help=f"bootstrap method: {METHODS}")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the outputs to MLflow")
    return p


# ---------------------------------------------------------------------------------------------
# Input


def latest_runs_csv(results: Path = Path("results")) -> Path:
    """The most recently modified ``results/*/runs.csv``."""
    found = sorted(results.glob("*/runs.csv"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise UserError("--runs", f"no {results}/*/runs.csv found; pass --runs or --experiment")
    return found[-1]


def read_runs_mlflow(experiment: str) -> tuple[pd.DataFrame, str | None]:
    """The experiment's child runs as a runs table, and the parent run's id (if one)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        known = MlflowClient(uri).get_experiment_by_name(experiment) is not None
    except Exception as e:  # the store is outside this program: report it in one line
        raise UserError("--experiment", f"cannot read {uri}: {one_line(e, typed=True, limit=200)}")
    if not known:
        raise UserError("--experiment", f"no experiment named {experiment!r} in {uri}")
    try:
        found = mlflow.search_runs(experiment_names=[experiment], output_format="pandas")
    except Exception as e:
        raise UserError("--experiment", f"cannot search {uri}: {one_line(e, typed=True, limit=200)}")
    parent_col = "tags.mlflow.parentRunId"
    parent_id = None
    if parent_col in found.columns and found[parent_col].notna().any():
        parents = found[parent_col].dropna().unique()
        parent_id = str(parents[0]) if len(parents) == 1 else None
        found = found[found[parent_col].notna()]
    table = pd.DataFrame({"run_key": found.get("run_id", pd.Series(dtype=str))})
    for prefix in ("tags.", "params.", "metrics."):  # later prefixes win a shared name
        for col in [c for c in found.columns if c.startswith(prefix)]:
            name = col[len(prefix):]
            if name.startswith("mlflow."):
                continue
            table[name] = found[col].to_numpy()
    if "status" not in table.columns and "status" in found.columns:
        table["status"] = np.where(found["status"] == "FINISHED", "completed",
                                   found["status"].str.lower())
    return table.reset_index(drop=True), parent_id


def check_columns(runs: pd.DataFrame) -> pd.DataFrame:
    """Refuse a table without the columns that name a run; derive ``size`` if absent."""
    missing = [c for c in REQUIRED if c not in runs.columns]
    if missing:
        raise UserError("runs table", f"missing columns {', '.join(missing)}",
                        ["run_key", "token", "order", "size", *X_AXES, "<metrics>", "status",
                         "run_dir", "seed"])
    runs = runs.copy()
    if "size" not in runs.columns:
        runs["size"] = runs["params"].astype(str)
    for col in ("token", "order", "size"):
        runs[col] = runs[col].astype(str).str.strip()
    for col in (*X_AXES, "steps", "seed"):  # MLflow params arrive as text
        if col in runs.columns:
            runs[col] = pd.to_numeric(runs[col], errors="coerce")
    return runs


def run_dirs(completed: pd.DataFrame, bases: Sequence[Path]) -> dict[str, Path]:
    """run key -> its run directory, where the table's ``run_dir`` (absolute, or relative to
    one of ``bases``) exists on this machine."""
    found: dict[str, Path] = {}
    if "run_dir" not in completed.columns:
        return found
    for key, run_dir in zip(completed["run_key"], completed["run_dir"]):
        if pd.isna(run_dir) or key in found:
            continue
        candidates = [Path(run_dir)] if Path(run_dir).is_absolute() else [base / run_dir for base in bases]
        there = next((c for c in candidates if c.is_dir()), None)
        if there is not None:
            found[key] = there
    return found


def sample_cells(completed: pd.DataFrame, dirs: dict[str, Path]) -> dict:
    """(token, order, size) -> each configuration's fixed_prompts.png (None where absent)."""
    cells: dict[tuple[str, str, str], Path | None] = {}
    for key, group in completed.groupby(["token", "order", "size"], sort=False):
        pictures = (dirs[k] / SAMPLES for k in group["run_key"] if k in dirs)
        cells[key] = next((p for p in pictures if p.is_file()), None)
    return cells


# ---------------------------------------------------------------------------------------------
# Output


def log_to_mlflow(out: Path, run_id: str | None) -> str:
    """Log ``out`` under ``analysis/`` of the sweep's parent run; a one-line note either way."""
    if not run_id:
        return "mlflow: no parent run id for this sweep; outputs not logged"
    try:
        from mlflow.tracking import MlflowClient

        MlflowClient(tracking_uri()).log_artifacts(run_id, str(out), artifact_path="analysis")
        return f"mlflow: logged {out} to run {run_id} under analysis/"
    except Exception as e:  # tracking is a convenience; the files on disk are the result
        return f"mlflow: could not log to run {run_id}: {one_line(e, typed=True, limit=200)}"


def _load(args: argparse.Namespace) -> tuple[pd.DataFrame, str, Path, str, str | None]:
    """(runs table, sweep name, the sweep's folder, a description of the source, parent run id)."""
    parent_id = None
    if args.experiment:
        runs, parent_id = read_runs_mlflow(args.experiment)
        sweep, home = args.experiment, Path("results") / args.experiment
        source = f"mlflow:{tracking_uri()}#{args.experiment}"
    else:
        csvs = args.runs if args.runs is not None else [latest_runs_csv()]
        runs = read_runs_tables(csvs)
        home, source = csvs[0].parent, " + ".join(map(str, csvs))
        named = runs["sweep"].dropna() if "sweep" in runs.columns else pd.Series(dtype=str)
        sweep = str(named.iloc[0]) if len(named) else home.name
    if (home / "parent_run_id").is_file():
        parent_id = (home / "parent_run_id").read_text().strip() or parent_id
    return check_columns(runs), sweep, home, source, parent_id


@cli_main
def main(argv: Sequence[str] | None = None) -> Path:
    """Run the analysis; returns the output folder."""
    args = _parser().parse_args(argv)
    check_choice("--x", args.x, X_AXES)
    check_choice("--geneval-form", args.geneval_form, GENEVAL_FORMS)
    check_choice("--ci-method", args.ci_method, METHODS)
    if args.n_boot < 20:
        raise UserError("--n-boot", f"{args.n_boot} is too few resamples for a 95% interval "
                        "(use at least 20; 500-1000 for results)")
    t0 = time.time()
    runs, sweep, home, source, parent_id = _load(args)
    out = args.out if args.out is not None else home / "analysis"
    print(f"analysing {source}: {len(runs)} runs -> {out}")
    messages: list[str] = []

    def note(lines: Sequence[str]) -> None:
        for line in lines:
            print(f"note: {line}")
        messages.extend(lines)

    completed, excluded = split_by_status(runs)
    if "status" not in runs.columns:
        note(["no status column: every run is taken as completed"])
    if len(excluded):
        counts = excluded["status"].astype(str).value_counts()
        note([f"{len(excluded)} runs excluded (status not completed: "
              + ", ".join(f"{n} {status}" for status, n in counts.items()) + ")"])
    obs, notes = observations(completed)
    note(notes)
    xs = ["params"]
    if obs["train_flops"].notna().any():
        xs.append("train_flops")
    elif len(obs):
        note(["no train_flops values: no FLOPs fits, the loss-vs-FLOPs figure is empty"])
    if args.x not in xs:
        if len(obs) and not obs[args.x].notna().any():
            raise UserError("--x", f"the runs table has no {args.x} values (a table written "
                            "before that column existed?)", [x for x in X_AXES if obs[x].notna().any()])
        xs.append(args.x)
    records, notes = fit_table(obs, xs, args.n_boot, args.seed, args.ci_method,
                               args.geneval_form)
    note(notes)
    print(f"fitted {len(records)} curves ({args.n_boot} resamples each) in {time.time() - t0:.1f}s")

    fits = pd.DataFrame([r.row() for r in records], columns=FIT_COLUMNS)
    extrap = extrapolate(records)
    corr, notes = correlations(obs)
    note(notes)
    win = winners(obs, records)
    nets, notes = hypotheses.other_nets(completed, args.n_boot, args.seed, args.ci_method)
    note(notes)
    claims = hypotheses.check(obs, records, hypotheses.fid_floors(completed),
                              hypotheses.fid_floors(completed, "fid_floor_matched"), nets)
    tail, notes = quantization.check(completed, args.n_boot, args.seed, args.ci_method)
    note(notes)
    bases: list[Path] = []  # where a relative run_dir may live: here, or beside any runs.csv read
    for base in [Path.cwd(), home, *(p.parent for p in args.runs or [])]:
        if all(base.resolve() != b.resolve() for b in bases):
            bases.append(base)
    dirs = run_dirs(completed, bases)
    scales, notes = guidance.scan(completed, dirs, args.n_boot, args.seed, args.ci_method)
    note(notes)
    floor, notes = loss_floor.check(completed, dirs, fits, args.n_boot, args.seed, args.ci_method)
    note(notes)
    for name, frame in (("fits", fits), ("extrapolation", extrap), ("correlations", corr),
                        ("winners", win), ("hypotheses", claims), ("quantization", tail),
                        ("guidance", scales), ("loss_floor", floor)):
        write_text(out / f"{name}.csv", frame.to_csv(index=False))

    figures.scaling_figure(obs, records, args.x, out)
    figures.geneval_tags_figure(obs, records, args.x, out)
    figures.loss_vs_flops_figure(obs, records, out)
    sizes = (completed.groupby("size")["params"].median().sort_values().index.tolist()
             if len(completed) else [])
    _, notes = figures.samples_figure(sample_cells(completed, dirs), sizes, out)
    note(notes)

    write_report(out / "report.md", ReportInputs(
        sweep=sweep, source=source, x=args.x, n_runs=len(runs), n_completed=len(completed),
        fits=fits, extrapolation=extrap, correlations=corr, winners=win, excluded=excluded,
        figures=FIGURES, messages=messages, n_boot=args.n_boot, seed=args.seed,
        method=args.ci_method, hypotheses=claims, fid_nets=list(nets), text_use=text_use(completed),
        quantization=tail, guidance=scales, loss_floor=floor))
    if not args.no_mlflow:
        print(log_to_mlflow(out, parent_id))
    print(f"wrote {out} in {time.time() - t0:.1f}s")
    return out


if __name__ == "__main__":
    main()
