"""The results table: rows from run directories, and concurrent upserts that lose nothing."""
from __future__ import annotations

import csv
import subprocess
import sys

from harness import config as C
from harness.io import write_json
from harness.registry import GENEVAL_TAGS
from harness.sweep import table
from harness.run_status import write_status


WRITER = """
import sys
from harness.sweep import table
path, worker = sys.argv[1], int(sys.argv[2])
for i in range(15):
    table.upsert(path, [{"run_key": f"run-{worker}", "seed": i, "sweep": "t", "token": "discrete",
                         "order": "raster", "size": "xs", "status": "completed", "fid": worker + i}])
"""


def test_concurrent_upserts_keep_every_row_and_a_whole_file(tmp_path):
    path = tmp_path / "t" / "runs.csv"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(w)]) for w in range(4)]
    assert [p.wait(timeout=300) for p in procs] == [0] * 4
    rows = table.read(path)
    assert len(rows) == 60
    assert {(r["run_key"], r["seed"]) for r in rows} == {(f"run-{w}", str(i)) for w in range(4) for i in range(15)}
    assert list(csv.reader(open(path)))[0] == list(table.COLUMNS)
    table.upsert(path, [{"run_key": "run-0", "seed": 3, "sweep": "t", "size": "xs", "token": "d",
                         "order": "r", "status": "failed"}])
    rows = table.read(path)
    assert len(rows) == 60 and [r["status"] for r in rows if r["run_key"] == "run-0" and r["seed"] == "3"] == ["failed"]


def test_rows_follow_the_run_directory_per_seed(tmp_path):
    cfg = C.load(["model.size=xs", "model.token=discrete", f"results_dir={tmp_path}", "train.steps=20"])
    run_dir = tmp_path / "runs" / C.run_key(cfg)
    rows = table.run_rows(run_dir, "t", [0, 1], cfg)
    assert [r["status"] for r in rows] == ["queued", "queued"] and rows[0]["params"] is None
    run_dir.mkdir(parents=True)
    C.save(cfg, run_dir / "config.yaml")
    write_json(run_dir / "info.json", {"params": 123, "train_flops": 4.5e9})
    write_status(run_dir, "completed", step=20)
    metrics = {"val_loss": 0.5, "fid": 12.0, "geneval_overall": 0.25,
               **{f"geneval_{t}": 0.1 for t in GENEVAL_TAGS}}
    write_json(run_dir / "metrics.json", metrics)                       # eval.seed 0
    rows = table.run_rows(run_dir, "t", [0, 1])
    assert rows[0]["status"] == "completed" and rows[1]["status"] == "trained"   # seed 1 not yet
    assert rows[0]["fid"] == 12.0 and rows[0]["geneval_colors"] == 0.1 and rows[0]["params"] == 123
    assert rows[1]["fid"] is None and rows[1]["steps"] == 20
    write_json(run_dir / "metrics-seed1.json", {**metrics, "fid": 13.0})
    assert [r["fid"] for r in table.run_rows(run_dir, "t", [0, 1])] == [12.0, 13.0]


def test_size_and_cost_columns_in_both_conventions(tmp_path):
    """params/train_flops (the paper's) and trainable_params/executed_flops (what runs) are copied
    from info.json; a run written before the latter existed leaves them empty in the table."""
    cfg = C.load(["model.size=xs", f"results_dir={tmp_path}", "train.steps=20"])
    run_dir = tmp_path / "runs" / C.run_key(cfg)
    run_dir.mkdir(parents=True)
    C.save(cfg, run_dir / "config.yaml")
    write_status(run_dir, "trained", step=20)
    write_json(run_dir / "info.json", {"params": 123, "trainable_params": 100,
                                       "train_flops": 4.5e9, "executed_flops": 6.0e9})
    row = table.run_rows(run_dir, "t", [0])[0]
    assert [row[k] for k in table.SIZE_AND_COST] == [123, 100, 4.5e9, 6.0e9]
    path = tmp_path / "t" / "runs.csv"
    table.upsert(path, [row])
    write_json(run_dir / "info.json", {"params": 123, "train_flops": 4.5e9})  # an older run
    table.upsert(path, [{**table.run_rows(run_dir, "t", [0])[0], "seed": 1}])
    rows = table.read(path)
    assert [(r["trainable_params"], r["executed_flops"]) for r in rows] == [("100", "6000000000.0"), ("", "")]
    assert list(csv.reader(open(path)))[0][5:9] == ["params", "trainable_params", "train_flops",
                                                    "executed_flops"]


def test_text_probes_training_seed_and_geneval_ceiling_columns(tmp_path):
    """The last logged caption gain and context spread, the run's training seed, the tokenizer's
    GenEval ceiling and the in-distribution GenEval are in every row of a run."""
    from harness.tracking.store import append_metrics

    cfg = C.load(["model.size=xs", f"results_dir={tmp_path}", "train.steps=20", "train.seed=3"])
    run_dir = tmp_path / "runs" / C.run_key(cfg)
    run_dir.mkdir(parents=True)
    C.save(cfg, run_dir / "config.yaml")
    write_status(run_dir, "completed", step=20)
    append_metrics(run_dir, {"val/loss": 0.9, "val/caption_gain": 0.0, "text/context_spread": 0.6}, 10)
    append_metrics(run_dir, {"val/loss": 0.5, "val/caption_gain": 0.02, "text/context_spread": 0.7}, 20)
    write_json(run_dir / "metrics.json", {"val_loss": 0.5, "fid": 3.0, "geneval_ceiling_overall": 0.97,
                                          "geneval_in_dist_overall": 0.4})
    row = table.run_rows(run_dir, "t", [0])[0]
    assert (row["train_seed"], row["val_loss"], row["caption_gain"], row["context_spread"],
            row["geneval_ceiling"], row["geneval_in_dist"]) == (3, 0.5, 0.02, 0.7, 0.97, 0.4)


def test_tail_columns_are_filled_for_a_world_with_named_scenes_and_blank_without(tmp_path):
    """What a run learned of the long tail and the world's Zipf exponent (for the analysis's
    quantization check); a world without named scenes leaves them blank."""
    tail = {"val_loss": 0.5, "tail_kinds_learned": 31.0, "tail_loss": 0.04}
    for named, expected in ((0, (None, None, None, None)), (64, (31.0, 0.04, 64, 1.25))):
        cfg = C.load(["model.size=xs", f"results_dir={tmp_path}", "data.layout=grid",
                      f"data.named_scenes={named}", "data.named_scene_zipf=1.25"])
        run_dir = tmp_path / "runs" / C.run_key(cfg)
        run_dir.mkdir(parents=True)
        C.save(cfg, run_dir / "config.yaml")
        write_status(run_dir, "completed", step=20)
        write_json(run_dir / "metrics.json", tail if named else {"val_loss": 0.5})
        row = table.run_rows(run_dir, "t", [0])[0]
        assert tuple(row[c] for c in table.TAIL) == expected


def test_fid_under_other_feature_nets_and_the_cpu_each_install_trained_on(tmp_path):
    """FID under the other feature nets comes from metrics.json (blank for runs evaluated before
    evaluation wrote it); ``cpu`` lists the CPU and torch's instruction set of each install the run
    trained in, once each, in order (blank without environment.json)."""
    from harness.registry import FID_NETS

    cfg = C.load(["model.size=xs", f"results_dir={tmp_path}", "train.steps=20"])
    run_dir = tmp_path / "runs" / C.run_key(cfg)
    run_dir.mkdir(parents=True)
    C.save(cfg, run_dir / "config.yaml")
    write_status(run_dir, "completed", step=20)
    write_json(run_dir / "metrics.json", {"val_loss": 0.5, "fid": 3.0})
    row = table.run_rows(run_dir, "t", [0])[0]
    assert [row[k] for k in FID_NETS] == [None] * len(FID_NETS) and row["cpu"] is None
    write_json(run_dir / "metrics.json", {"val_loss": 0.5, "fid": 3.0, **{k: 4.0 + i for i, k in enumerate(FID_NETS)}})
    intel = {"cpu": "Intel(R) Xeon(R) Processor", "cpu_capability": "AVX512", "torch": "2.14.1"}
    amd = {"cpu": "AMD EPYC", "cpu_capability": "AVX2", "torch": "2.14.1"}
    write_json(run_dir / "environment.json", [intel, {**intel, "numpy": "2.4.6"}, amd])
    row = table.run_rows(run_dir, "t", [0])[0]
    assert [row[k] for k in FID_NETS] == [4.0 + i for i in range(len(FID_NETS))]
    assert row["cpu"] == "Intel(R) Xeon(R) Processor (AVX512) + AMD EPYC (AVX2)"
