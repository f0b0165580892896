"""The analysis command end to end on a synthetic sweep: files, report, MLflow, bad input."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from analysis import plot_scaling
from harness.registry import GENEVAL_TAGS, VARIANT_PAIRS as VARIANTS

REPO = Path(__file__).resolve().parents[2]

SIZES = {"xs": 3e6, "s": 8e6, "m": 2e7, "l": 5e7}
# per variant: val_loss (E, A, alpha), FID (A, alpha), GenEval (value at 1e7, slope per decade)
TRUTH = {
    ("discrete", "raster"): ((2.2, 40.0, 0.22), (900.0, 0.25), (0.30, 0.04)),
    ("discrete", "random"): ((2.1, 40.0, 0.24), (800.0, 0.25), (0.40, 0.06)),
    ("continuous", "raster"): ((0.9, 25.0, 0.26), (300.0, 0.22), (0.33, 0.05)),
    ("continuous", "random"): ((0.8, 25.0, 0.28), (250.0, 0.22), (0.45, 0.08)),
}
FIGURES = ("scaling", "geneval_tags", "loss_vs_flops", "samples")
FILES = (["fits.csv", "extrapolation.csv", "correlations.csv", "winners.csv", "report.md"]
         + [f"{f}.{e}" for f in FIGURES for e in ("png", "pdf")])


def synthetic_runs(root: Path, seeds: int = 2, rng_seed: int = 0) -> pd.DataFrame:
    """4 variants × 4 sizes × ``seeds`` completed rows, two failed/running rows, sample strips.

    One configuration (continuous/raster, size s) has no fixed_prompts.png.
    """
    rng = np.random.default_rng(rng_seed)
    rows = []
    for (token, order), ((E, A, alpha), (fa, falpha), (g0, g1)) in TRUTH.items():
        for size, n in SIZES.items():
            params = int(n * (1.05 if token == "continuous" else 1.0))
            key = f"{token}-{order}-{size}"
            run_dir = root / "runs" / key
            if (token, order, size) != ("continuous", "raster", "s"):
                strip = np.concatenate([np.full((16, 16, 3), 40 * i + 30 * VARIANTS.index(
                    (token, order)), np.uint8) for i in range(4)], axis=1)
                (run_dir / "samples").mkdir(parents=True, exist_ok=True)
                Image.fromarray(strip).save(run_dir / "samples" / "fixed_prompts.png")
            loss = E + A * params ** -alpha
            for seed in range(seeds):
                tags = {f"geneval_{t}": float(np.clip(
                    g0 + 0.1 * k - 0.2 + g1 * np.log10(params / 1e7) + rng.normal(0, 0.01), 0, 1))
                    for k, t in enumerate(GENEVAL_TAGS)}
                rows.append({"run_key": key, "sweep": "synthetic", "token": token, "order": order,
                             "size": size, "params": params, "train_flops": 6.0 * params * 1e9,
                             "steps": 1000, "val_loss": loss * np.exp(rng.normal(0, 0.002)),
                             "fid": fa * params ** -falpha * np.exp(rng.normal(0, 0.02)),
                             "geneval_overall": float(np.mean(list(tags.values()))), **tags,
                             "status": "completed", "run_dir": str(run_dir), "seed": seed})
    rows.append({"run_key": "discrete-raster-xl", "token": "discrete", "order": "raster",
                 "size": "xl", "params": int(1.2e8), "status": "failed", "seed": 0,
                 "run_dir": str(root / "runs" / "missing")})
    rows.append({"run_key": "continuous-random-xl", "token": "continuous", "order": "random",
                 "size": "xl", "params": int(1.26e8), "status": "running", "seed": 0})
    return pd.DataFrame(rows)


def write_sweep(root: Path, runs: pd.DataFrame, name: str = "synthetic") -> Path:
    csv = root / "results" / name / "runs.csv"
    csv.parent.mkdir(parents=True, exist_ok=True)
    runs.to_csv(csv, index=False)
    return csv


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), MPLBACKEND="Agg",
               MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    return env


def test_command_end_to_end_writes_every_file(tmp_path):
    """No arguments: the latest results/*/runs.csv, outputs beside it, as a script."""
    older = write_sweep(tmp_path, synthetic_runs(tmp_path).head(6), "older")
    csv = write_sweep(tmp_path, synthetic_runs(tmp_path))
    os.utime(older, (1, 1))
    proc = subprocess.run([sys.executable, str(REPO / "analysis" / "plot_scaling.py"),
                           "--n-boot", "40"], cwd=tmp_path, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = csv.parent / "analysis"
    for name in FILES:
        assert (out / name).stat().st_size > 0, name
    assert not list(out.glob(".*.tmp")) and not list(out.glob(".*.png"))
    assert "no fixed_prompts.png for continuous/raster s" in proc.stdout
    assert "mlflow: no parent run id" in proc.stdout

    fits = pd.read_csv(out / "fits.csv")
    loss = fits[(fits.metric == "val_loss") & (fits.x == "params") & (fits.form == "offset")]
    assert len(loss) == 4
    for r in loss.itertuples():
        alpha = TRUTH[(r.token, r.order)][0][2]
        assert r.alpha == pytest.approx(alpha, rel=0.25)
        assert r.alpha_ci_low <= r.alpha <= r.alpha_ci_high
    assert set(fits.x) == {"params", "train_flops"}
    assert set(fits[fits.metric == "geneval_counting"].form) == {"loglinear"}
    assert fits.converged.all()

    extrap = pd.read_csv(out / "extrapolation.csv")
    assert set(extrap["size"]) == {"166M", "369M", "665M", "1.1B", "3.1B", "10.5B"}
    assert (extrap.ci_low <= extrap.prediction + 1e-12).all()
    corr = pd.read_csv(out / "correlations.csv")
    assert set(corr.token) == {"discrete", "continuous", "all"}
    assert corr[(corr.metric == "fid") & (corr.token == "all")].r.iloc[0] > 0.5

    report = (out / "report.md").read_text()
    for png in ("scaling.png", "geneval_tags.png", "loss_vs_flops.png", "samples.png"):
        assert f"]({png})" in report
    assert "continuous/random wins val_loss at l" in report
    assert "discrete-raster-xl" in report and "continuous-random-xl" in report
    assert "0.917" in report


def few_metrics(runs: pd.DataFrame) -> pd.DataFrame:
    """The table without GenEval's tags: fewer fits, for the tests that need no tags."""
    return runs.drop(columns=[f"geneval_{t}" for t in GENEVAL_TAGS])


@pytest.mark.parametrize("argv, field", [
    (["--x", "steps"], "--x: unknown value 'steps' (valid: params, trainable_params, train_flops, executed_flops)"),
    (["--runs", "nowhere/runs.csv"], "--runs: no such file"),
    (["--bogus"], "arguments: unrecognized arguments: --bogus"),
    (["--n-boot", "3"], "--n-boot"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, monkeypatch, argv, field):
    monkeypatch.chdir(tmp_path)
    write_sweep(tmp_path, synthetic_runs(tmp_path, seeds=1))
    with pytest.raises(SystemExit) as exit_info:
        plot_scaling.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {field}")


def test_bad_input_as_a_module_process(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "analysis.plot_scaling", "--x", "steps"],
                          cwd=REPO, env=_env(tmp_path), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: --x: unknown value 'steps' (valid: params, trainable_params, train_flops, executed_flops)"]


@pytest.mark.parametrize("x", ["trainable_params", "executed_flops"])
def test_x_takes_the_columns_of_what_runs(tmp_path, capsys, x):
    """--x fits and plots against trainable_params or executed_flops; params stays the axis of the
    hypotheses. Discrete: trainable = params, executed = 1.1 x train FLOPs, so its exponents equal
    the params fit's; continuous: 1M frozen parameters, and a head share that shrinks with size."""
    runs = few_metrics(synthetic_runs(tmp_path, seeds=1))
    cont = runs.token == "continuous"
    runs["trainable_params"] = runs["params"] - np.where(cont, 1e6, 0)
    runs["executed_flops"] = runs["train_flops"] * np.where(
        cont, 1 + 0.3 * (1e7 / runs["params"]) ** 0.2, 1.1)
    csv = write_sweep(tmp_path, runs)
    out = plot_scaling.main(["--runs", str(csv), "--x", x, "--n-boot", "20", "--no-mlflow"])
    assert "Main x axis: " + x in (out / "report.md").read_text()
    assert (out / "scaling.png").stat().st_size > 0
    fits = pd.read_csv(out / "fits.csv")
    assert set(fits.x) == {"params", "train_flops", x}
    loss = fits[(fits.metric == "val_loss") & (fits.form == "offset")].set_index(["token", "order", "x"])
    for (token, order), _ in TRUTH.items():
        moved, base = loss.loc[(token, order, x)], loss.loc[(token, order, "params")]
        same = token == "discrete"  # x a constant multiple of params: the same exponent
        assert (moved.alpha == pytest.approx(base.alpha, rel=1e-6)) == same, (token, order)
        assert moved.x_min == pytest.approx(runs.loc[(runs.token == token) & (runs.order == order)
                                                     & (runs.status == "completed"), x].min())


def test_x_without_values_is_a_user_error(tmp_path, capsys):
    csv = write_sweep(tmp_path, few_metrics(synthetic_runs(tmp_path, seeds=1)))  # an older table
    with pytest.raises(SystemExit) as exit_info:
        plot_scaling.main(["--runs", str(csv), "--x", "executed_flops", "--no-mlflow"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        "error: --x: the runs table has no executed_flops values (a table written before that "
        "column existed?) (valid: params, train_flops)\n")


def test_no_sweep_found(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        plot_scaling.main([])
    assert capsys.readouterr().err == (
        "error: --runs: no results/*/runs.csv found; pass --runs or --experiment\n")


def test_missing_identity_columns_is_a_user_error(tmp_path, capsys):
    csv = write_sweep(tmp_path, synthetic_runs(tmp_path, seeds=1).drop(columns=["order"]))
    with pytest.raises(SystemExit):
        plot_scaling.main(["--runs", str(csv)])
    assert "missing columns order" in capsys.readouterr().err


def test_all_runs_failed_still_writes_a_report(tmp_path, capsys):
    runs = synthetic_runs(tmp_path, seeds=1)
    runs["status"] = "failed"
    csv = write_sweep(tmp_path, runs)
    out = plot_scaling.main(["--runs", str(csv), "--n-boot", "20", "--no-mlflow"])
    for name in FILES:
        assert (out / name).is_file(), name
    assert pd.read_csv(out / "fits.csv").empty
    report = (out / "report.md").read_text()
    assert "nothing to fit" in report and "18 runs excluded" in report


def test_degenerate_table_gives_messages(tmp_path, capsys):
    """Two sizes for one variant, a constant metric, NaNs, absent metric columns."""
    runs = synthetic_runs(tmp_path, seeds=1).drop(columns=["fid", "geneval_position"])
    dropped = (runs.token == "discrete") & (runs.order == "raster") & runs["size"].isin(["m", "l"])
    runs = runs[~dropped]
    runs.loc[runs.token == "continuous", "geneval_colors"] = 0.5
    runs.loc[(runs.token != "discrete") | (runs.order != "raster"), "val_loss"] = \
        runs["val_loss"].where(runs["size"] != "l")
    csv = write_sweep(tmp_path, runs)
    out = plot_scaling.main(["--runs", str(csv), "--n-boot", "20", "--no-mlflow",
                             "--x", "train_flops", "--out", str(tmp_path / "custom")])
    assert out == tmp_path / "custom"
    text = capsys.readouterr().out + (out / "report.md").read_text()
    assert "Main x axis: train_flops" in text
    assert "metric columns absent from the runs table: fid, geneval_position" in text
    assert "val_loss discrete/raster vs params [power]: 2 sizes, needs 3; fit skipped" in text
    assert "geneval_colors continuous/random vs params [loglinear]: metric is constant" in text
    assert "val_loss: 3 of 14 values missing" in text
    fits = pd.read_csv(out / "fits.csv")
    assert not ((fits.token == "discrete") & (fits.order == "raster")
                & (fits.metric == "val_loss")).any()
    assert ((fits.token == "continuous") & (fits.metric == "val_loss")).any()


@pytest.mark.slow
def test_seed_columns_and_mlflow_round_trip(tmp_path, monkeypatch, capsys):
    """Per-seed metric columns become seeds; --experiment reads child runs; artifacts logged."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    exp = client.create_experiment("synthetic", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(exp).info.run_id
    runs = synthetic_runs(tmp_path, seeds=1)
    for r in runs.itertuples():
        child = client.create_run(exp, tags={"mlflow.parentRunId": parent, "token": r.token,
                                             "order": r.order, "size": r.size,
                                             "status": r.status}).info.run_id
        client.log_param(child, "params", r.params)
        client.log_param(child, "train_flops", r.train_flops)
        for metric in ("val_loss", "fid", "geneval_overall"):
            if np.isfinite(getattr(r, metric)):
                client.log_metric(child, metric, getattr(r, metric))
        client.set_terminated(child)
    out = plot_scaling.main(["--experiment", "synthetic", "--n-boot", "20"])
    assert out == Path("results") / "synthetic" / "analysis"
    printed = capsys.readouterr().out
    assert f"mlflow: logged {out} to run {parent}" in printed
    logged = {a.path for a in client.list_artifacts(parent, "analysis")}
    assert {"analysis/fits.csv", "analysis/report.md", "analysis/scaling.png"} <= logged
    fits = pd.read_csv(out / "fits.csv")
    assert set(fits.metric) == {"val_loss", "fid", "geneval_overall"}

    wide = few_metrics(runs[runs.status == "completed"])
    wide["fid_seed1"] = wide["fid"] * 1.01
    wide = wide.rename(columns={"fid": "fid_seed0"})
    csv = write_sweep(tmp_path, wide, "wide")
    (csv.parent / "parent_run_id").write_text("no-such-run\n")
    out = plot_scaling.main(["--runs", str(csv), "--n-boot", "20"])
    assert "mlflow: could not log to run no-such-run" in capsys.readouterr().out
    fid = pd.read_csv(out / "fits.csv").query("metric == 'fid' and x == 'params'")
    assert (fid.n_points == 8).all() and (fid.n_sizes == 4).all()
