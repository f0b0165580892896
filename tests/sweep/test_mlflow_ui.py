"""``make mlflow-ui`` after a smoke sweep: the server lists the sweep's runs through the REST API, and
headless Chromium renders the experiment's runs page (a screenshot that is not blank)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--virtual-time-budget=20000", "--window-size=1600,1000"]


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


@pytest.mark.slow
def test_mlflow_ui_lists_the_sweep_and_renders(sweeper, tmp_path):
    done = sweeper.run("--preset", "smoke", "--size", "xs", "--variants", "discrete-raster", "--launcher", "debug")
    assert done.returncode == 0, done.stdout + done.stderr
    run_key = next(iter(sweeper.run_dirs().values())).name
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "harness.tracking.ui", "--port", str(port)],
                              cwd=REPO, env=sweeper.env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
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
        exp = get(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=smoke")["experiment"]
        runs = get(f"{base}/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment_id"]]})["runs"]
        names = {r["info"]["run_name"]: r for r in runs}
        assert set(names) == {"smoke", run_key}
        child_tags = {t["key"]: t["value"] for t in names[run_key]["data"]["tags"]}
        assert child_tags["mlflow.parentRunId"] == names["smoke"]["info"]["run_id"]
        assert (child_tags["token"], child_tags["order"], child_tags["size"]) == ("discrete", "raster", "xs")

        shot = tmp_path / "mlflow-ui.png"
        browser = chromium()
        out = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium'}",
                              f"--screenshot={shot}", f"{base}/#/experiments/{exp['experiment_id']}/runs"],
                             capture_output=True, text=True, timeout=180)
        assert shot.exists(), out.stderr[-2000:]
        pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
        print(f"screenshot: {shot} ({pixels.shape[1]}x{pixels.shape[0]}, pixel std {pixels.std():.1f})")
        assert pixels.std() > 10 and len(np.unique(pixels)) > 50, "the page rendered blank"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
