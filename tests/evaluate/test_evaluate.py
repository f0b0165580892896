"""End to end: ``evaluate`` on a tiny trained run writes every metric, the samples, MLflow entries,
and only then marks the run completed; reruns reuse samples; other seeds go to their own files."""
from __future__ import annotations

import json
import math
import shutil
import time

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from harness import config
from harness.data.shapes import vocabulary
from harness.errors import UserError
from harness.evaluate import features
from harness.evaluate.run import FIXED_PROMPTS, evaluate, metrics_path
from harness.geneval.prompts import is_held_out_prompt, read_jsonl
from harness.registry import EVAL_METRICS, FID_FLOOR, FID_NETS, GENEVAL_IN_DIST, GENEVAL_TAGS, HELD_OUT_TAGS
from harness.evaluate.__main__ import main
from harness.tracking import store
from harness.run_dir import RunDir

TINY_RUN = ["train.steps=20", "data.train_size=256", "data.val_size=32", "tokenizer.steps=30",
            "eval.fid_samples=32", "eval.geneval_prompts_per_tag=2", "eval.images_per_prompt=2",
            "sample.steps=4", "sample.diffusion_steps=5", "model.size=xs", "train.batch_size=16",
            "tokenizer.batch_size=16", "tokenizer.hidden=32", "tokenizer.layers=1"]
TINY_FEATURES = features.FeatureSpec(channels=(16, 32, 64), dim=32, train_images=1024, test_images=256,
                                     steps=60, batch_size=64)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A tiny run, trained and evaluated once; MLflow and results live in a temp folder."""
    from harness.train.run import train

    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("evaluate")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp}/mlflow.db")
        mp.setattr(features, "DEFAULT_SPEC", TINY_FEATURES)
        run_dir = train(config.load([f"results_dir={tmp}/results", *TINY_RUN]))
        status_before = json.loads((run_dir / "status.json").read_text())["status"]
        start = time.time()
        metrics = evaluate(run_dir)
        print(f"evaluate (tiny run, incl. feature net): {time.time() - start:.1f}s")
        yield run_dir, metrics, status_before


def test_metrics_json_has_every_metric_and_the_run_is_completed(evaluated):
    run_dir, metrics, status_before = evaluated
    assert status_before == "trained"
    written = json.loads((run_dir / "metrics.json").read_text())
    assert set(EVAL_METRICS) <= set(written) and written == json.loads(json.dumps(metrics))
    assert {f"geneval_{t}" for t in GENEVAL_TAGS} <= set(written)
    assert all(isinstance(written[k], float) and math.isfinite(written[k]) for k in EVAL_METRICS)
    assert 0 <= written["precision"] <= 1 and 0 <= written["recall"] <= 1 and written["fid"] > 0
    # six tags held out, three of them again in distribution; 2 prompts each, 2 images per prompt
    assert written["fid_samples"] == 32 and written["geneval_images"] == (6 + 3) * 2 * 2 and written["step"] == 20
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    # the floor: what a perfect generator would score, through the run's tokenizer
    assert all(math.isfinite(written[k]) and written[k] >= 0 for k in FID_FLOOR)
    assert written["fid_floor_real"] > 0


def test_geneval_in_distribution_beside_the_held_out_prompts(evaluated, tmp_path):
    """Counting, position and colour attribution are scored again on combinations seen in
    training; the in-distribution overall takes the other three tags from the held-out set (their
    prompts have nothing held out). Off, none of it is made."""
    from harness.evaluate.run import geneval_metrics
    from harness.sampling import Sampler

    run_dir, metrics, _ = evaluated
    assert set(GENEVAL_IN_DIST) <= set(metrics)
    held_out = read_jsonl(run_dir / "geneval" / "prompts.jsonl")
    seen = read_jsonl(run_dir / "geneval-in-dist" / "prompts.jsonl")
    assert [p["tag"] for p in seen] == [t for t in HELD_OUT_TAGS for _ in range(2)]
    assert all(is_held_out_prompt(p) is True for p in held_out if p["tag"] in HELD_OUT_TAGS)
    assert all(is_held_out_prompt(p) is False for p in seen)
    assert json.loads((run_dir / "geneval-in-dist" / "scores.json").read_text())["n_images"] == 12
    parts = [metrics[f"geneval_in_dist_{t}" if t in HELD_OUT_TAGS else f"geneval_{t}"] for t in GENEVAL_TAGS]
    assert metrics["geneval_in_dist_overall"] == pytest.approx(sum(parts) / 6)

    cfg = config.load_saved(RunDir(run_dir).config)
    cfg.eval.geneval_in_distribution = False
    other = RunDir(tmp_path / "run")
    off = geneval_metrics(Sampler.from_run(run_dir), cfg, other, 0, {"seed": 0})
    assert not set(GENEVAL_IN_DIST) & set(off) and off["geneval_overall"] == metrics["geneval_overall"]
    assert not other.geneval_in_dist(0, 0).exists()


def test_val_loss_is_trainings_own_final_validation_loss(evaluated):
    run_dir, metrics, _ = evaluated
    logged = [r for r in store.read_metrics(run_dir) if r["key"] == "val/loss" and r["step"] == 20]
    assert logged and metrics["val_loss"] == pytest.approx(logged[-1]["value"], rel=1e-5)


def test_fid_libraries_agree(evaluated):
    _, metrics, _ = evaluated
    assert metrics["fid_cleanfid"] == pytest.approx(metrics["fid"], rel=1e-6)


def test_fid_under_other_feature_nets_reads_the_same_samples_in_other_spaces(evaluated):
    """FID_NETS: the run's FID samples scored in the spaces of nets trained with other seeds (the
    feature net's own noise). Each is the FID ``fid_metrics`` would report under that net, and the
    default net's FID through the same function is the run's ``fid``."""
    from harness import config as C
    from harness.evaluate import fid

    run_dir, metrics, _ = evaluated
    cfg = C.load_saved(RunDir(run_dir).config)
    generated = RunDir(run_dir).fid_generated(0, 0)
    space = fid.feature_space(cfg)
    assert fid.fid_value(generated, fid.ensure_reference(cfg, space), space, 64) == pytest.approx(metrics["fid"], rel=1e-9)
    spaces = fid.other_net_spaces(cfg)
    assert list(spaces) == list(FID_NETS) and len({s.directory for s in (space, *spaces.values())}) == 1 + len(FID_NETS)
    for name, other in spaces.items():
        reference = fid.ensure_reference(cfg, other)
        assert metrics[name] == fid.fid_metrics(generated, reference, other, 64)["fid"]
        assert metrics[name] > 0 and metrics[name] != metrics["fid"]
    cfg.eval.inception_path = "/x.pth"  # Inception's FID: one net, no others
    assert fid.other_net_spaces(cfg) == {}


def test_samples_and_geneval_outputs(evaluated):
    run_dir, _, _ = evaluated
    with Image.open(run_dir / "samples" / "fixed_prompts.png") as strip:
        assert strip.size == (8 * 32 + 7 * 2, 32)
    with Image.open(run_dir / "samples" / "grid.png") as grid:
        assert grid.size == (8 * 32 + 7 * 2, 4 * 32 + 3 * 2)  # 32 FID samples, 8 per row
    assert len((run_dir / "geneval" / "prompts.jsonl").read_text().splitlines()) == 12
    assert json.loads((run_dir / "geneval" / "scores.json").read_text())["n_images"] == 24
    assert len(list((run_dir / "fid" / "generated").glob("*.png"))) == 32
    assert len(FIXED_PROMPTS) == 8 and all(set(p.split()) <= set(vocabulary()) for p in FIXED_PROMPTS)


def test_metrics_reach_mlflow_at_the_training_step(evaluated):
    run_dir, metrics, _ = evaluated
    c = store.client()
    run_id = RunDir(run_dir).mlflow_run_id.read_text().strip()
    history = c.get_metric_history(run_id, "eval/fid")
    assert [(m.step, m.value) for m in history] == [(20, metrics["fid"])]
    assert {a.path for a in c.list_artifacts(run_id, "samples")} == {"samples/grid.png", "samples/fixed_prompts.png"}
    assert [a.path for a in c.list_artifacts(run_id, "eval")] == ["eval/metrics.json"]


def test_rerun_reuses_samples_and_other_seeds_write_their_own_file(evaluated):
    run_dir, metrics, _ = evaluated
    first = sorted((run_dir / "fid" / "generated").glob("*.png"))[0]
    stamp, main_metrics = first.stat().st_mtime_ns, (run_dir / "metrics.json").read_text()
    again = evaluate(run_dir)
    assert first.stat().st_mtime_ns == stamp  # generated images reused
    assert again["fid"] == metrics["fid"] and again["geneval_overall"] == metrics["geneval_overall"]
    other = evaluate(run_dir, seed=1)
    assert metrics_path(run_dir, 1) == run_dir / "metrics-seed1.json"
    assert metrics_path(run_dir) == metrics_path(run_dir, 0) == run_dir / "metrics.json"
    assert json.loads((run_dir / "metrics-seed1.json").read_text())["seed"] == 1
    assert set(EVAL_METRICS) <= set(other) and other["val_loss"] == metrics["val_loss"]
    assert other["fid"] != metrics["fid"]  # fresh samples
    assert (run_dir / "geneval-seed1" / "scores.json").exists()
    assert (run_dir / "geneval-in-dist-seed1" / "scores.json").exists()
    assert json.loads((run_dir / "metrics.json").read_text())["seed"] == 0
    assert json.loads(main_metrics)["fid"] == metrics["fid"]
    assert any(r["key"] == "eval_seed1/fid" for r in store.read_metrics(run_dir))


def test_fid_by_guidance_scale_matches_evaluation_at_the_runs_own_scale(evaluated, capsys):
    from harness.evaluate.guidance import guidance_fid, main as guidance_main

    run_dir, metrics, _ = evaluated
    own = config.load_saved(RunDir(run_dir).config).sample.cfg
    table = guidance_fid(run_dir, [own, 1.0])
    assert table[f"{own:g}"]["fid"] == pytest.approx(metrics["fid"], rel=1e-9)  # evaluation's protocol
    assert table["1"]["fid"] != metrics["fid"]  # no guidance: other images
    written = run_dir / "guidance" / "fid.json"
    assert json.loads(written.read_text()) == json.loads(json.dumps(table))
    first = sorted((run_dir / "guidance" / "cfg1").glob("*.png"))[0]
    stamp = first.stat().st_mtime_ns
    again = guidance_fid(run_dir, [1.0])
    assert first.stat().st_mtime_ns == stamp and again == table  # reused, merged with the first call
    # another temperature: its own table and images; the run's own temperature is the run's table
    own_t = config.load_saved(RunDir(run_dir).config).sample.temperature
    cooler = guidance_fid(run_dir, [1.0], temperature=own_t / 4)
    assert cooler["1"]["fid"] != table["1"]["fid"]
    cooler_file = run_dir / "guidance" / f"fid-t{own_t / 4:g}.json"
    assert json.loads(cooler_file.read_text()) == json.loads(json.dumps(cooler))
    assert (run_dir / "guidance" / f"cfg1-t{own_t / 4:g}").is_dir()
    assert guidance_fid(run_dir, [1.0], temperature=own_t) == table
    assert json.loads(written.read_text()) == json.loads(json.dumps(table))  # untouched
    capsys.readouterr()
    for bad, field in ((["--cfg", "0.5"], "--cfg"), (["--cfg", "1", "--temperature", "0"], "--temperature")):
        with pytest.raises(SystemExit) as exit_:
            guidance_main([str(run_dir), *bad])
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {field}:") and "\n" not in err


def _fake_run(tmp_path, source, status: str, *overrides: str):
    run = tmp_path / "run"
    run.mkdir()
    cfg = config.load_saved(source / "config.yaml")
    for item in overrides:
        key, value = item.split("=", 1)
        OmegaConf.update(cfg, key, value)
    config.save(cfg, run / "config.yaml")
    (run / "status.json").write_text(json.dumps({"status": status}))
    return run


def test_untrained_runs_are_refused_in_one_line(evaluated, tmp_path, capsys):
    run = _fake_run(tmp_path, evaluated[0], "running")
    with pytest.raises(UserError, match="status 'running'"):
        evaluate(run)
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path / "nowhere")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: run_dir:") and "\n" not in err


def test_missing_inception_file_fails_before_any_work(evaluated, tmp_path, monkeypatch):
    run = _fake_run(tmp_path, evaluated[0], "trained", f"eval.inception_path={tmp_path}/missing.pth")
    shutil.copytree(evaluated[0] / "checkpoints", run / "checkpoints")
    from harness.evaluate import run as evaluate_run

    def work(*args, **kwargs):
        raise AssertionError("evaluation started work before checking the Inception file")

    for name in ("run_validation_loss", "fid_samples", "geneval_metrics"):
        monkeypatch.setattr(evaluate_run, name, work)
    monkeypatch.setattr(evaluate_run.fid, "ensure_reference", work)
    monkeypatch.setattr(evaluate_run.Sampler, "from_run", work)
    with pytest.raises(UserError, match="eval.inception_path: .*missing.pth does not exist"):
        evaluate(run)
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml", "status.json"]
