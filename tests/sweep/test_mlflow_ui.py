"""``make mlflow-ui`` after a smoke sweep of two sizes and its analysis: what a researcher sees.

The server lists the sweep through the REST API the UI calls (the parent, a child per config with
its size and cost as params and ``model/*`` metrics, its final ``eval/*`` metrics once each; the
parent's artifacts: the results table and the analysis, figures as PNG), and headless Chromium
renders three pages, each kept as a screenshot that must not be blank:

  mlflow-runs.png           the experiment's runs table
  mlflow-scaling-chart.png  its chart view with scatter charts of eval/val_loss, eval/fid and
                            eval/geneval_overall against model/params (the chart state a user
                            makes with "Add chart > Scatter", set in the page's localStorage),
                            whose plotted points are checked against the runs' metrics
  mlflow-parent-figure.png  the parent run's artifact view showing analysis/scaling.png

The analysis runs with ``--no-mlflow`` (as if MLflow were down then) and ``python -m harness.sync``
sends its outputs to the parent: the figures reach MLflow from the sweep folder, replayably.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.sync import main as sync_main
from tests.sweep.chromium import Browser

REPO = Path(__file__).resolve().parents[2]
SIZES = ("xs", "s")
SCALING = ("eval/val_loss", "eval/fid", "eval/geneval_overall")  # plotted against model/params
SIZE_PARAMS = ("params", "train_flops", "model.size", "model.token", "model.order")
SIZE_METRICS = ("model/params", "model/train_flops", "model/depth", "model/width")
FIGURES = ("scaling.png", "geneval_tags.png", "loss_vs_flops.png", "samples.png")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def chromium() -> str:
    out = subprocess.run([str(REPO / "scripts" / "install_chromium.sh")], capture_output=True, text=True,
                         timeout=900)
    if out.returncode != 0:
        pytest.skip(f"no chromium for the screenshot: {(out.stderr or out.stdout).strip().splitlines()[-1]}")
    return out.stdout.strip().splitlines()[-1]


def assert_not_blank(shot: Path) -> None:
    """A rendered page, not a blank one: many grey levels, spread out (not just a big file)."""
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    print(f"screenshot: {shot} ({pixels.shape[1]}x{pixels.shape[0]}, pixel std {pixels.std():.1f})")
    assert pixels.std() > 10 and len(np.unique(pixels)) > 50, f"{shot.name}: the page rendered blank"


def scatter_state(state: dict, parent_id: str) -> dict:
    """The experiment page's saved UI state with the parent run expanded (its children are then
    plotted) and a "scaling" section of scatter charts first: what "Add chart > Scatter" saves."""
    section = {"uuid": "scaling", "name": "scaling", "display": True, "isReordered": False,
               "deleted": False, "isGenerated": False}
    charts = [{"uuid": f"scaling-{y}", "type": "SCATTER", "runsCountToCompare": 100,
               "metricSectionId": "scaling", "deleted": False, "isGenerated": False,
               "xaxis": {"key": "model/params", "type": "METRIC"}, "yaxis": {"key": y, "type": "METRIC"}}
              for y in SCALING]
    return {**state, "runsExpanded": {parent_id: True}, "compareRunCharts": charts,
            "compareRunSections": [section], "isAccordionReordered": True}


# every scatter card of the chart view: its title and what plotly drew ([[run id, run name], ...] x, y)
SCATTER_CARDS = """Array.from(document.querySelectorAll('[data-testid=experiment-view-compare-runs-card]'))
  .map(card => [card.innerText.split('\\n')[0], card.querySelector('.js-plotly-plot')])
  .filter(([title, plot]) => title.startsWith('model/params vs.') && plot && plot.data && plot.data.length)
  .map(([title, plot]) => ({title, runs: plot.data[0].customdata, x: plot.data[0].x, y: plot.data[0].y}))"""


@pytest.mark.slow
def test_mlflow_ui_lists_the_sweep_and_charts_its_scaling(sweeper, tmp_path):
    done = sweeper.run("--preset", "smoke", "--size", ",".join(SIZES), "--variants", "discrete-raster",
                       "--launcher", "debug")
    assert done.returncode == 0, done.stdout + done.stderr
    run_keys = {d.name for d in sweeper.run_dirs().values()}
    sweep_dir = sweeper.results / "smoke"
    from analysis import plot_scaling

    plot_scaling.main(["--runs", str(sweep_dir / "runs.csv"), "--n-boot", "20", "--no-mlflow"])
    assert sync_main([str(sweeper.results)]) == 0  # the parent's store: its children's tracking.uri
    parent_id = (sweep_dir / "parent_run_id").read_text().strip()

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "harness.tracking.ui", "--port", str(port)],
                              cwd=REPO, env=sweeper.env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    api = f"{base}/api/2.0/mlflow"
    try:
        end = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=5)
                break
            except OSError:
                assert server.poll() is None, server.stdout.read()
                assert time.time() < end, "the MLflow server did not come up"
                time.sleep(1)

        # what the UI's pages are built from, through the endpoints they call
        exp = get(f"{api}/experiments/get-by-name?experiment_name=smoke")["experiment"]
        exp_id = exp["experiment_id"]
        runs = get(f"{api}/runs/search", {"experiment_ids": [exp_id]})["runs"]
        names = {r["info"]["run_name"]: r for r in runs}
        assert set(names) == {"smoke", *run_keys} and names["smoke"]["info"]["run_id"] == parent_id
        metrics: dict[str, dict[str, float]] = {}  # run id -> latest value per key (what charts plot)
        for key in run_keys:
            child, run_id = names[key], names[key]["info"]["run_id"]
            tags = {t["key"]: t["value"] for t in child["data"]["tags"]}
            params = {p["key"]: p["value"] for p in child["data"]["params"]}
            metrics[run_id] = {m["key"]: m["value"] for m in child["data"]["metrics"]}
            assert tags["mlflow.parentRunId"] == parent_id
            assert (tags["token"], tags["order"]) == ("discrete", "raster") and tags["size"] in SIZES
            assert set(SIZE_PARAMS) <= set(params), sorted(params)
            assert (params["model.size"], params["model.token"]) == (tags["size"], "discrete")
            assert set(SIZE_METRICS) | set(SCALING) <= set(metrics[run_id]), sorted(metrics[run_id])
            assert metrics[run_id]["model/params"] == float(params["params"])
            for name in (*SIZE_METRICS, *SCALING):  # each logged once: one point per run
                history = get(f"{api}/metrics/get-history?run_id={run_id}&metric_key="
                              + urllib.parse.quote(name))["metrics"]
                assert len(history) == 1, (name, history)
        assert len({m["model/params"] for m in metrics.values()}) == len(SIZES), "one x per size"
        listed = get(f"{api}/artifacts/list?run_id={parent_id}&path=analysis")["files"]
        assert {f"analysis/{f}" for f in (*FIGURES, "fits.csv")} <= {f["path"] for f in listed}
        assert "runs.csv" in {f["path"] for f in get(f"{api}/artifacts/list?run_id={parent_id}")["files"]}

        with Browser(chromium(), tmp_path / "chromium") as b:
            # 1. the runs table (the app saves its page state to localStorage as it loads)
            b.goto(f"{base}/#/experiments/{exp_id}/runs")
            key = b.wait_for(f"""Object.keys(localStorage).find(k => k.includes('ExperimentPage-["{exp_id}"]'))""",
                             "the experiment page's saved state")
            b.wait_for(f"!!document.querySelector('.ag-row[row-id=\"{parent_id}\"]')", "the parent run's row")
            assert_not_blank(b.screenshot(tmp_path / "mlflow-runs.png"))

            # 2. the chart view with the scatter charts; the state is written while no app runs
            b.goto(f"{base}/health")
            b.wait_for("document.readyState === 'complete' && !document.querySelector('#root')", "/health")
            state = scatter_state(json.loads(b.evaluate(f"localStorage.getItem({json.dumps(key)})")), parent_id)
            b.evaluate(f"localStorage.setItem({json.dumps(key)}, {json.dumps(json.dumps(state))}), "
                       "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false')")
            b.goto(f"{base}/#/experiments/{exp_id}/runs?compareRunsMode=CHART")
            cards = b.wait_for(f"(() => {{ const c = {SCATTER_CARDS}; "
                               f"return c.length === {len(SCALING)} && c.every(s => s.x.length === {len(SIZES)}) && c; }})()",
                               f"{len(SCALING)} scatter charts with a point per size")
            for card in cards:
                y_key = card["title"].split(" vs. ")[1]
                drawn = {run_id: (x, y) for (run_id, _), x, y in zip(card["runs"], card["x"], card["y"])}
                assert drawn == {r: (m["model/params"], m[y_key]) for r, m in metrics.items()}, card
            assert_not_blank(b.screenshot(tmp_path / "mlflow-scaling-chart.png"))

            # 3. the parent's artifact view shows the scaling figure (a PNG the browser decoded)
            width = Image.open(sweep_dir / "analysis" / "scaling.png").size[0]
            b.goto(f"{base}/#/experiments/{exp_id}/runs/{parent_id}/artifacts/analysis/scaling.png")
            b.wait_for(f"Array.from(document.images).some(i => i.complete && i.naturalWidth === {width})",
                       "analysis/scaling.png shown in the parent's artifacts")
            assert_not_blank(b.screenshot(tmp_path / "mlflow-parent-figure.png"))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
