"""Expanding a sweep into runs, and ``--dry-run``: parameters, FLOPs, GPU estimates, nothing run."""
from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from harness import config as C
from harness.data.datasets import caption_vocabulary
from harness.models.flops import train_flops
from harness.registry import FID_NET_SEEDS
from harness.sweep import estimate, grid, plan
from harness.sweep.__main__ import main
from harness.train.module import build_networks, counted_parameters


def smoke_spec(**overrides):
    spec = grid.load_sweep(grid.preset_path("smoke"))
    return OmegaConf.merge(spec, overrides)


def test_override_priority_and_stable_keys(tmp_path):
    spec = smoke_spec(size_overrides={"s": {"train": {"steps": 7}}},
                      variant_overrides={"discrete-raster": {"train": {"steps": 5},
                                                             "sample": {"temperature": 0.5}}})
    runs = plan.build_runs(spec, ["xs", "s"], ["continuous-random", "discrete-raster"],
                           [f"results_dir={tmp_path}", "train.lr=0.01"], threads=3)
    by = {(r.size, r.variant): r for r in runs}
    assert [(r.size, r.variant) for r in runs] == [("xs", "continuous-random"), ("xs", "discrete-raster"),
                                                   ("s", "continuous-random"), ("s", "discrete-raster")]
    xs, s = by["xs", "continuous-random"].cfg, by["s", "continuous-random"].cfg
    assert xs.train.steps == 20 and s.train.steps == 7          # sweep overrides < size overrides
    raster = by["s", "discrete-raster"].cfg                      # size overrides < variant overrides
    assert raster.train.steps == 5 and raster.sample.temperature == 0.5 and s.sample.temperature == 0.975
    assert xs.train.lr == 0.01 and xs.train.threads == 3         # command line; launcher threads
    assert xs.data.train_size == 256 and xs.model.width == 64    # sweep overrides; ladder
    assert xs.tracking.experiment == "smoke" and xs.tracking.uri.startswith("sqlite:////")
    assert len({r.key for r in runs}) == 4
    assert all(r.dir == tmp_path / "runs" / r.key for r in runs)
    # threads, tracking and the results dir do not change what a run computes: same keys
    again = plan.build_runs(spec, ["xs"], ["continuous-random"], ["results_dir=elsewhere", "train.lr=0.01"], threads=1,
                            parent_run_id="abc")
    assert again[0].key == by["xs", "continuous-random"].key
    # a command-line value beats the sweep's threads only if given
    assert plan.build_runs(spec, ["xs"], ["continuous-random"], ["train.threads=1"], threads=3)[0].cfg.train.threads == 1


def test_stage0_needs_one_tokenizer_per_token_type_and_each_feature_net(tmp_path):
    runs = plan.build_runs(smoke_spec(), ["xs", "s"], grid.VARIANTS, [f"results_dir={tmp_path}"])
    tasks = plan.stage0_tasks(runs)
    assert sorted((t.kind, t.part) for t in tasks) == [
        ("features", plan.net_part(None)), *(("features", plan.net_part(s)) for s in FID_NET_SEEDS), ("tokenizer", "continuous"),
        ("tokenizer", "discrete")]
    assert not any(t.done for t in tasks) and len({t.path for t in tasks}) == len(tasks)
    # Inception's FID needs no shapes net at all
    inception = plan.build_runs(smoke_spec(), ["xs"], grid.VARIANTS, [f"results_dir={tmp_path}",
                                                                      "eval.inception_path=/x.pth"])
    assert {t.kind for t in plan.stage0_tasks(inception)} == {"tokenizer"}


def test_each_feature_net_task_builds_its_own_net_and_reference(tmp_path, monkeypatch):
    """A "features" task's part names the net's seed: its job trains that net (at the path the
    planned task points to) and the FID reference set in its space, and nothing for another seed."""
    from harness.evaluate import features
    from harness.sweep.jobs import build_stage0
    from tests.conftest import TINY_FEATURES

    monkeypatch.setattr(features, "DEFAULT_SPEC", features.FeatureSpec(**TINY_FEATURES))
    runs = plan.build_runs(smoke_spec(), ["xs"], ["continuous-random"],
                           [f"results_dir={tmp_path}", "eval.fid_samples=8", "data.val_size=16"])
    net2 = next(t for t in plan.stage0_tasks(runs) if (t.kind, t.part) == ("features", plan.net_part(FID_NET_SEEDS[-1])))
    assert build_stage0(net2.kind, net2.cfg, net2.part) == net2.path and net2.done
    assert json.loads((net2.path / "meta.json").read_text())["spec"]["seed"] == FID_NET_SEEDS[-1]
    assert len(list(net2.path.glob("reference-*/cleanfid_stats.npz"))) == 1
    assert sorted(p.name for p in (tmp_path / "stage0").glob("features-*") if p.is_dir()) == [net2.path.name]


def test_dry_run_counts_what_training_would_build_and_writes_nothing(tmp_path, capsys):
    results = tmp_path / "results"
    assert main(["--preset", "smoke", "--dry-run", "--json", "--size", "xs",
                 f"results_dir={results}"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert not results.exists()
    assert len(out["runs"]) == 4 and out["counts"]["pending"] == 4
    for row in out["runs"]:
        cfg = C.load(["model.size=xs", f"model.token={row['variant'].split('-')[0]}",
                      f"model.order={row['variant'].split('-')[1]}"],
                     base=OmegaConf.to_container(smoke_spec().overrides))
        nets = build_networks(cfg, cfg.tokenizer.channels, cfg.tokenizer.codebook_size,
                              caption_vocabulary(cfg.data))
        assert row["params"] == counted_parameters(nets)
        assert row["train_flops"] == train_flops(cfg, cfg.tokenizer.channels, cfg.tokenizer.codebook_size)
        assert row["state"] == "pending" and "gpu_hours" not in row
    assert {t["kind"] for t in out["stage0"]} == {"tokenizer", "features"}


def test_paper_dry_run_estimates_memory_and_gpu_hours(tmp_path, capsys):
    assert main(["--preset", "paper", "--dry-run", "--json", "--size", "166M,10.5B",
                 "--variants", "continuous-random", f"results_dir={tmp_path / 'r'}"]) == 0
    out = json.loads(capsys.readouterr().out)
    small, big = out["runs"]
    for row in out["runs"]:
        assert row["gpu_hours"] == row["train_flops"] / (0.4 * 989e12) / 3600
        assert row["gpu_memory_gb"] * 1e9 > 20 * row["params"] / (16 if row["size"] == "10.5B" else 1)
    assert 150e6 < small["params"] < 200e6 and 10e9 < big["params"] < 11.5e9
    assert small["gpus"] == 8 and big["gpus"] == 16                 # fsdp over 2 nodes for 10.5B
    assert big["gpu_hours"] > 50 * small["gpu_hours"]
    assert out["total_gpu_hours"] == small["gpu_hours"] + big["gpu_hours"]
    text_main = main(["--preset", "paper", "--dry-run", "--size", "166M", "--variants",
                      "discrete-raster", f"results_dir={tmp_path / 'r'}"])
    text = capsys.readouterr().out
    assert text_main == 0 and "GPU-h" in text and "MFU 0.4" in text


def test_memory_formula_by_hand():
    cfg = C.load(["model.ladder=paper", "model.size=166M", "model.token=discrete", "train.batch_size=64",
                  "data.resolution=256", "tokenizer.downsample=16"])
    params = 1_000_000
    L, W, D, H = 256, 768, 12, 12
    expected = 20 * params + D * 64 * L * W * (34 + 5 * H * L / W)
    assert estimate.gpu_memory_bytes(cfg, params) == expected
    cfg.model.token = "continuous"   # + the diffusion head's copies of every token
    head = cfg.model.head_depth * 64 * L * cfg.model.diffusion_batch_mul * cfg.model.head_width * 20
    assert estimate.gpu_memory_bytes(cfg, params) == expected + head
    cfg.train.strategy, cfg.train.devices = "fsdp", 8     # sharded state, per-device batch
    sharded = 20 * params / 8 + D * 8 * L * W * (34 + 5 * H * L / W) + head / 8
    assert estimate.gpu_memory_bytes(cfg, params) == pytest.approx(sharded)


def test_local_launcher_starts_the_longest_runs_first(tmp_path):
    from harness.sweep.launch import largest_first

    runs = plan.build_runs(smoke_spec(), ["xs", "s"], grid.VARIANTS, [f"results_dir={tmp_path}"])
    ordered = largest_first(runs)
    position = {(r.size, r.variant): i for i, r in enumerate(ordered)}
    for variant in grid.VARIANTS:  # a variant's larger size first
        assert position["s", variant] < position["xs", variant]
    for size in ("xs", "s"):  # the diffusion batch multiplier makes a continuous run costlier
        at = {t: [i for i, r in enumerate(ordered) if (r.size, r.token) == (size, t)] for t in ("continuous", "discrete")}
        assert max(at["continuous"]) < min(at["discrete"])
    assert (ordered[0].size, ordered[0].token) == ("s", "continuous")
    assert sorted(r.key for r in ordered) == sorted(r.key for r in runs)


def test_paper_preset_fits_80gb_per_gpu_and_shards_the_largest_sizes(tmp_path, capsys):
    """Every size of the paper ladder under 80 GB per GPU (72 GB budget); 3.1B and 10.5B use FSDP,
    their sharded state (20 B/param / GPUs) counted; the global batch stays 2048 for every size."""
    assert main(["--preset", "paper", "--dry-run", "--json", "--variants",
                 "continuous-random,discrete-raster", f"results_dir={tmp_path / 'r'}"]) == 0
    rows = json.loads(capsys.readouterr().out)["runs"]
    assert [r["size"] for r in rows[::2]] == ["166M", "369M", "665M", "1.1B", "3.1B", "10.5B"]
    for row in rows:
        assert row["gpu_memory_gb"] * 1e9 <= estimate.PAPER_BUDGET_BYTES < 80e9, row
        assert row["batch_size"] == 2048
        assert row["strategy"] == ("fsdp" if row["size"] in ("3.1B", "10.5B") else "ddp")
        if row["strategy"] == "fsdp":   # unsharded, the state alone would not fit
            assert 20 * row["params"] > 80e9 or row["size"] == "3.1B"
            assert row["gpu_memory_gb"] * 1e9 > 20 * row["params"] / row["gpus"]
    assert {r["accumulate_grad_batches"] for r in rows if r["size"] == "10.5B"} == {8}


def test_memory_divides_the_batch_by_accumulation():
    cfg = C.load(["model.ladder=paper", "model.size=166M", "model.token=discrete", "train.batch_size=64",
                  "data.resolution=256", "tokenizer.downsample=16", "train.devices=8",
                  "train.accumulate_grad_batches=4"])
    L, W, D, H = 256, 768, 12, 12
    assert estimate.gpu_memory_bytes(cfg, 0) == pytest.approx(D * 2 * L * W * (34 + 5 * H * L / W))
