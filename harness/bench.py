"""``make bench``: what this machine does with the harness, measured in one run.

Writes ``results/bench/<date>.json`` and refreshes ``docs/benchmarks.md``. Every ratio (MFU,
speed-ups, shares) is measured within the same run, because a shared machine is noisy. Models are
configured as the default study runs them (``sweeps/cpu.yaml``), at the harness's thread count
per job (``launcher.local.threads_per_job``).

Sections: the fp32 matmul ceiling; training per variant at a mid and the largest study size;
sampling (KV cache on/off, also at 64 tokens, random order by step count, the diffusion head's
share); evaluation (FID feature and GenEval scoring throughput); harness overhead of the smoke
sweep run serially with stage 0 pre-built (wall time minus the time inside training steps and
evaluation) and launch-to-first-step; peak RSS of the study's largest run (recorded by each run
job in ``status.json``); the paper ladder's dry-run estimates (``harness.sweep.estimate``);
token shards (#19: ``data_streaming``): the shard encoder's peak RSS for 1 vs 20 shards, the
streaming loader's samples/s per worker on local disk (the shapes shards and paper-shaped synthetic
shards), and whether the paper preset's loaders keep up with its micro-batches at the estimated
step time (``python -m harness.bench --only data`` refreshes that section alone).

Training FLOPs per step are the *executed* FLOPs (MFU counts what the hardware does;
``harness.models.flops.executed_step_flops``): 3 x forward of the transformer for every image, of
the text encoder (learned) and aligner when they train, 1 x forward when frozen
(``text.train_encoder=false``, ``text.lr_scale=0``), plus 3 x the token head for every token that
carries loss — for the continuous head times the diffusion batch multiplier (each loss token is
noised ``diffusion_batch_mul`` times).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from harness import config as C
from harness.environment import environment
from harness.errors import check_choice, cli_main
from harness.io import read_json, write_json, write_text
from harness.registry import LADDERS, VARIANT_PAIRS, VARIANTS
from harness.run_dir import RunDir
from harness.models.flops import executed_step_flops
from harness.train.module import GeneratorModule, counted_parameters
from harness.text.cache import caption_features


def matmul_ceiling(threads: int, n: int = 1024, seconds: float = 2.0) -> float:
    """fp32 GFLOP/s of square matmuls at ``threads`` threads (best of several timed bursts)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = 0.0
    end = time.time() + seconds
    while time.time() < end:
        t = time.perf_counter()
        for _ in range(4):
            a @ b
        best = max(best, 4 * 2 * n ** 3 / (time.perf_counter() - t) / 1e9)
    return best


def time_training(cfg: DictConfig, steps: int = 12, warmup: int = 3) -> dict:
    """Steps/s of the real LightningModule training step (forward, backward, AdamW, EMA)."""
    token_dim, codebook = cfg.tokenizer.channels, cfg.tokenizer.codebook_size
    from harness.data.shapes import vocabulary

    torch.manual_seed(0)
    module = GeneratorModule(cfg, token_dim, codebook, vocabulary())
    opt_cfg = module.configure_optimizers()[0][0]
    B, L = cfg.train.batch_size, C.num_tokens(cfg)
    if cfg.model.token == "discrete":
        tokens = torch.randint(0, codebook, (B, L))
    else:
        tokens = torch.randn(B, L, token_dim)
    captions = ["a photo of two red circles left of a blue square"] * B
    batch = {"tokens": tokens, "caption": captions}
    batch.update(caption_features(cfg.text, captions) or {})  # a frozen encoder's cached features
    module.log = lambda *a, **k: None
    module.optimizers = lambda: opt_cfg
    times = []
    for i in range(steps + warmup):
        # each step its own draw (random order's mask ratio, the diffusion noise), as training's
        # steps have: without a trainer global_step stays 0, and every step drew step 0's ratio,
        # a light one: the study's Fluid runs took 23-31% longer a step (calibration item 97)
        module.step_generator = lambda seed, i=i: torch.Generator().manual_seed(seed + i)
        t = time.perf_counter()
        loss = module.training_step(batch, i)
        opt_cfg.zero_grad(set_to_none=True)
        loss.backward()
        opt_cfg.step()
        module.update_ema()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    sec = sorted(times)[len(times) // 2]
    flops = executed_step_flops(cfg, token_dim, codebook)
    return {"params": counted_parameters(module.nets), "step_seconds": sec,
            "tokens_per_second": B * L / sec, "step_flops": flops, "achieved_gflops": flops / sec / 1e9}


def time_sampling(cfg: DictConfig, batch: int = 16, repeats: int = 2) -> dict:
    """Images (token grids) per second for one variant; raster with and without the KV cache;
    random order at several step counts; the diffusion head's share of sampling time."""
    from harness.data.shapes import vocabulary

    torch.manual_seed(0)
    module = GeneratorModule(cfg, cfg.tokenizer.channels, cfg.tokenizer.codebook_size, vocabulary())
    nets = module.ema.eval()
    captions = ["a red circle"] * batch
    # the module's own text path: a frozen encoder's cached features, or the learned encoder
    text = {"caption": captions, **(caption_features(cfg.text, captions) or {})}
    ctx, cmask = module.context(nets, text)
    null, nmask = nets["aligner"](*nets["aligner"].null_features(batch))
    gen = nets["generator"]
    s = cfg.sample

    head = [0.0]  # seconds inside the diffusion head (continuous) during the current call
    if cfg.model.token == "continuous":
        net = gen.diffloss.net
        original = net.denoise  # every step of a sampling chain (its condition is built once)

        def timed(*a):
            t = time.perf_counter()
            r = original(*a)
            head[0] += time.perf_counter() - t
            return r

        net.denoise = timed

    def run(**kw) -> tuple[float, float]:
        """Images per second and the head's seconds, of the fastest of ``repeats`` calls."""
        best, best_head = float("inf"), 0.0
        for _ in range(repeats):
            head[0] = 0.0
            t = time.perf_counter()
            gen.sample(ctx, cmask, null, nmask, cfg=s.cfg, temperature=s.temperature,
                       diffusion_steps=s.diffusion_steps, generator=torch.Generator().manual_seed(0), **kw)
            if time.perf_counter() - t < best:
                best, best_head = time.perf_counter() - t, head[0]
        return batch / best, best_head / best

    out: dict = {}
    if cfg.model.order == "raster":
        (cached, share), (uncached, share_u) = run(kv_cache=True), run(kv_cache=False)
        out.update(images_per_second=cached, images_per_second_uncached=uncached,
                   kv_cache_speedup=cached / uncached)
        if cfg.model.token == "continuous":
            # the transformer's own speed-up: time outside the head, uncached over cached
            out["kv_cache_speedup_transformer"] = (1 - share_u) / uncached / ((1 - share) / cached)
    else:
        out["images_per_second"], share = run(steps=s.steps)
        out["images_per_second_by_steps"] = {k: run(steps=k)[0] for k in (4, 8, 16, 32)}
    if cfg.model.token == "continuous":
        out["diffusion_head_share"] = share
        net.denoise = original
    return out


def study_config(token: str, order: str, size: str, extra: tuple[str, ...] = (),
                 preset: str = "cpu") -> DictConfig:
    """A run's config exactly as the sweep preset builds it."""
    from harness.sweep import grid, plan

    spec = grid.load_sweep(grid.preset_path(preset))
    return plan.build_runs(spec, [size], [f"{token}-{order}"], list(extra))[0].cfg


def kv_cache_at_64_tokens(token: str) -> dict:
    """Raster sampling with and without the KV cache at 64 tokens (4x4-pixel patches)."""
    cfg = study_config(token, "raster", "xl", ("tokenizer.downsample=4", "tokenizer.channels=4"))
    r = time_sampling(cfg, repeats=1)
    keys = ("images_per_second", "images_per_second_uncached", "kv_cache_speedup",
            "kv_cache_speedup_transformer", "diffusion_head_share")
    return {k: r[k] for k in keys if k in r}


def time_evaluation(resolution: int = 32, n: int = 512) -> dict:
    """FID feature extraction images/s (the shapes feature net, untrained weights: same FLOPs) and
    GenEval scoring images/s (detector + rules, reading the exported PNGs)."""
    import tempfile

    import numpy as np

    from harness.data.shapes import render, scene_from_metadata
    from harness.evaluate.features import FeatureNet
    from harness.geneval.export import export, score
    from harness.geneval.prompts import make_prompts, write_jsonl

    prompts = make_prompts(max(1, n // 24), 0)
    by_text = {p["prompt"]: p for p in prompts}

    class Renderer:
        def generate(self, texts, seed):
            rng = np.random.default_rng(seed)
            return np.stack([render(scene_from_metadata(by_text[t], rng, "grid", 4), resolution)
                             for t in texts])

    with tempfile.TemporaryDirectory() as d:
        out = export(write_jsonl(prompts, Path(d) / "p.jsonl"), Renderer(), Path(d) / "out", 4)
        images = len(prompts) * 4
        t = time.perf_counter()
        score(out)
        geneval = images / (time.perf_counter() - t)
    net = FeatureNet().eval()
    x = torch.rand(256, 3, resolution, resolution) * 2 - 1
    with torch.no_grad():
        net.features(x[:32])
        t = time.perf_counter()
        for _ in range(max(1, n // 256)):
            net.features(x)
        fid = max(1, n // 256) * 256 / (time.perf_counter() - t)
    return {"fid_features_images_per_second": fid, "geneval_scoring_images_per_second": geneval,
            "geneval_images": images}


def smoke_overhead(threads: int) -> dict:
    """The smoke sweep run serially (one job at a time) with stage 0 built beforehand: wall time,
    the time inside training steps and evaluation, the rest (process start, imports, MLflow,
    checkpoints, the launcher's polling), the time from launch to the first training step, and
    for each later run the time from its submission (a fork from the driver's forkserver) to its
    first training step."""
    import subprocess
    import sys
    import tempfile

    from omegaconf import OmegaConf

    from harness.sweep import grid, jobs, plan

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        spec = OmegaConf.to_container(grid.load_sweep(grid.preset_path("smoke")))
        spec["launcher"]["local"].update(max_parallel=1, threads_per_job=threads)
        spec["name"] = "smoke-bench"
        spec_file = d / "smoke-bench.yaml"
        spec_file.write_text(OmegaConf.to_yaml(OmegaConf.create(spec)))
        overrides = [f"results_dir={d / 'results'}", f"tracking.uri=sqlite:///{d / 'mlflow.db'}"]
        runs = plan.build_runs(grid.load_sweep(spec_file), list(spec["grid"]["size"]),
                               VARIANTS, overrides)
        for task in plan.stage0_tasks(runs):
            jobs.build_stage0(task.kind, task.cfg, task.part)
        launch = time.time()
        subprocess.run([sys.executable, "-m", "harness.sweep", "--file", str(spec_file),
                        "--size", "all", *overrides], check=True, capture_output=True)
        wall = time.time() - launch
        train_s = eval_s = 0.0
        first, started = [], []
        for run in runs:
            status = read_json(RunDir(run.dir).status)
            train_s += status.get("train_compute_seconds", 0.0)
            first.append(status.get("first_step", float("nan")))
            started.append(first[-1] - read_json(RunDir(run.dir).job_record)["submitted"])
            for seed in run.seeds:
                eval_s += read_json(RunDir(run.dir).eval_metrics(seed, run.cfg.eval.seed))["eval_seconds"]
    return {"runs": len(runs), "wall_seconds": wall, "train_step_seconds": train_s,
            "eval_seconds": eval_s, "overhead_seconds": wall - train_s - eval_s,
            "overhead_share": (wall - train_s - eval_s) / wall,
            "launch_to_first_step_seconds": min(first) - launch,
            "submit_to_first_step_later_runs_seconds": sorted(s for f, s in sorted(zip(first, started))[1:])}


def largest_run_memory(results: Path = Path("results")) -> dict | None:
    """Peak RSS recorded by the default study's largest run (None before ``make study``)."""
    best = None
    for run in RunDir.all_in(results):
        if "-xl-" not in run.name or not run.status.exists():
            continue
        status = read_json(run.status)
        if "peak_rss_mb" in status and (best is None or status["peak_rss_mb"] > best["peak_rss_mb"]):
            best = {"run": run.name, "peak_rss_mb": status["peak_rss_mb"]}
    return best


def paper_ladder() -> list[dict]:
    """The paper preset's dry-run estimates per size (continuous/random)."""
    from harness.sweep import estimate

    rows = []
    for size in LADDERS["paper"]:
        cfg = study_config("continuous", "random", size, preset="paper")
        params, flops = estimate.size_of(cfg)
        t = cfg.train
        rows.append({"size": size, "params": params, "train_flops": flops,
                     "gpus": t.devices * t.num_nodes, "strategy": t.strategy,
                     "accumulate_grad_batches": t.accumulate_grad_batches,
                     "gpu_memory_gb": estimate.gpu_memory_bytes(cfg, params) / 1e9,
                     "gpu_hours": estimate.gpu_hours(flops)})
    return rows


def _write_shapes_shards(root: Path, shards: int, per_shard: int, resolution: int = 32) -> None:
    """``root/{train,val}/NNNNNN.tar``: shapes scenes as image-caption WebDataset shards (val: one)."""
    import io as _io

    from PIL import Image
    from webdataset import TarWriter

    from harness.data.shapes import ShapesWorld

    for split, n in (("train", shards), ("val", 1)):
        world = ShapesWorld(split, n * per_shard, resolution=resolution)
        (root / split).mkdir(parents=True, exist_ok=True)
        for s in range(n):
            with open(root / split / f"{s:06d}.tar", "wb") as f, TarWriter(f, encoder=False) as w:
                for i in range(s * per_shard, (s + 1) * per_shard):
                    png = _io.BytesIO()
                    Image.fromarray(world.image(i)).save(png, format="PNG")
                    w.write({"__key__": f"{split}{i:06d}", "png": png.getvalue(),
                             "txt": world.caption(i).encode()})


def _write_paper_shaped_shards(root: Path, shards: int, per_shard: int) -> int:
    """Token shards shaped like the paper preset's samples (256 tokens x 16 channels, mean and std
    in float32, 64 x 4096 float16 T5-XXL features): random values. Returns bytes per sample."""
    import io as _io

    import numpy as np
    from webdataset import TarWriter

    from harness.data import token_shards as TS

    def npy(x) -> bytes:
        buf = _io.BytesIO()
        np.save(buf, x, allow_pickle=False)
        return buf.getvalue()

    rng = np.random.default_rng(0)
    size = 0
    for s in range(shards):
        path = root / "train" / f"{s:06d}.tar"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f, TarWriter(f, encoder=False) as w:
            for i in range(per_shard):
                sample = {TS.TOKENS: npy(rng.standard_normal((256, 16), dtype=np.float32)),
                          TS.STD: npy(np.full((256, 16), 0.1, np.float32)),
                          TS.TEXT: npy(rng.standard_normal((64, 4096)).astype(np.float16)),
                          TS.MASK: npy(np.ones(64, bool)), TS.CAPTION: b"a photo of a cat"}
                size = sum(len(v) for v in sample.values())
                w.write({"__key__": f"{s:06d}{i:06d}", **sample})
    return size


def _loader_rate(shards: list[tuple[str, int]], batch: int, batches: int, posterior: bool) -> float:
    """Samples/s of one streaming reader (one dataloader worker's work, in this process): the best
    of three bursts of ``batches`` batches, as the machine is shared."""
    from harness.data.token_shards import ShardStream

    it = iter(ShardStream(shards, batch, seed=0, posterior=posterior))
    next(it)  # open the first shard, fill the buffer
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(batches):
            next(it)
        best = max(best, batches * batch / (time.perf_counter() - t))
    return best


def data_streaming(work: Path, threads: int = 1, shards: int = 20, per_shard: int = 64) -> dict:
    """Token shards (#19): the encoder's peak RSS on 1 and on ``shards`` shards of ``per_shard``
    images (a fresh process each, the tokenizer built beforehand, so the RSS is encoding alone), the
    streaming loader's samples/s per worker, and the paper preset's loader margin: samples/s a GPU
    needs (its micro-batch over the step time at the paper's train FLOPs, ``ASSUMED_MFU`` of the
    H100's bf16 peak; executed FLOPs are 1.15-1.38x more, so the real need is lower) against
    ``data.num_workers`` workers at the paper-shaped rate."""
    import shutil
    import subprocess
    import sys

    from harness.data.token_shards import finished_shards
    from harness.sweep import estimate
    from harness.tokenizers.shards import prepare

    shutil.rmtree(work, ignore_errors=True)
    _write_shapes_shards(work / "src20", shards, per_shard)
    for split in ("train", "val"):
        (work / "src1" / split).mkdir(parents=True)
        os.link(work / "src20" / split / "000000.tar", work / "src1" / split / "000000.tar")
    out: dict = {"shards": shards, "images_per_shard": per_shard, "resolution": 32}
    measure = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
               "stdout=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    for n, src in ((1, "src1"), (shards, "src20")):
        overrides = ["data.name=webdataset", f"data.path={work / src}", f"results_dir={work / 'results'}",
                     "data.train_size=64", "data.val_size=64", "tokenizer.steps=30", "tokenizer.hidden=32",
                     "tokenizer.heads=2", "model.token=continuous", "tokenizer.posterior_sample=true",
                     "train.accelerator=cpu", f"train.threads={threads}"]
        prepare(C.load(overrides), work / f"tokens{n}")  # the tokenizer, outside the measurement
        t = time.perf_counter()
        rss = subprocess.run([sys.executable, "-c", measure, sys.executable, "-m", "harness.tokenizers.shards",
                              "--out", str(work / f"tokens{n}"), *overrides],
                             capture_output=True, text=True, check=True).stdout.split()[-1]
        out[f"encode_{n}_shards"] = {"peak_rss_mb": int(rss) / 1024, "seconds": time.perf_counter() - t,
                                     "images": n * per_shard * 1.0}
    tokens = finished_shards(work / f"tokens{shards}", "train")
    out["shapes_samples_per_second_per_worker"] = _loader_rate(tokens, 64, 40, posterior=True)
    out["shapes_bytes_per_sample"] = os.path.getsize(tokens[0][0]) / tokens[0][1]
    paper_bytes = _write_paper_shaped_shards(work / "paper", 2, 128)
    paper = [(str(p), 128) for p in sorted((work / "paper" / "train").glob("*.tar"))]
    rate = _loader_rate(paper, 32, 12, posterior=True)
    out["paper_shaped"] = {"bytes_per_sample": paper_bytes, "samples_per_second_per_worker": rate,
                           "mb_per_second_per_worker": rate * paper_bytes / 1e6}
    margin = []
    for p in paper_ladder():
        cfg = study_config("continuous", "random", p["size"], preset="paper")
        t = cfg.train
        micro = t.batch_size // (p["gpus"] * t.accumulate_grad_batches)
        per_image = p["train_flops"] / (t.steps * t.batch_size)
        step = micro * per_image / (estimate.ASSUMED_MFU * estimate.H100_BF16_PEAK_FLOPS)
        need = micro / step
        supply = cfg.data.num_workers * rate
        margin.append({"size": p["size"], "micro_batch": micro, "step_seconds": step,
                       "samples_per_second_needed": need, "workers": cfg.data.num_workers,
                       "samples_per_second_supplied": supply, "margin": supply / need})
    out["paper_margin"] = margin
    shutil.rmtree(work, ignore_errors=True)
    return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(sizes: list[str], threads: int, out_dir: Path, docs: Path, quick: bool = False) -> dict:
    torch.set_num_threads(threads)
    env = environment()
    result: dict = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": {**{k: env[k] for k in ("platform", "cpu", "cpu_capability", "torch")},
                    "cpus": os.cpu_count()},
        "threads": threads,
        "matmul_gflops": matmul_ceiling(threads),
        "training": {}, "sampling": {},
    }
    for size in sizes:
        for token, order in VARIANT_PAIRS:
            cfg = study_config(token, order, size)
            key = f"{token}-{order}-{size}"
            tr = time_training(cfg, steps=4 if quick else 12)
            tr["mfu"] = tr["achieved_gflops"] / result["matmul_gflops"]
            tr["tokens"], tr["batch"] = C.num_tokens(cfg), cfg.train.batch_size
            result["training"][key] = tr
            if size == sizes[-1]:
                result["sampling"][key] = time_sampling(cfg, repeats=1 if quick else 2)
            print(key, json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in tr.items()}),
                  flush=True)
    result["kv_cache_64_tokens"] = {t: kv_cache_at_64_tokens(t) for t in ("continuous", "discrete")}
    result["evaluation"] = time_evaluation()
    print("evaluation", result["evaluation"], flush=True)
    result["matmul_gflops_after"] = matmul_ceiling(threads)
    result["peak_rss_mb"] = peak_rss_mb()
    result["overhead"] = smoke_overhead(threads)
    print("overhead", result["overhead"], flush=True)
    result["largest_run_memory"] = largest_run_memory()
    result["paper_ladder"] = paper_ladder()
    result["data_streaming"] = data_streaming(out_dir / "data-streaming", threads)
    print("data streaming", json.dumps(result["data_streaming"], default=str), flush=True)
    stamp = dt.date.today().isoformat()
    write_json(out_dir / f"{stamp}.json", result)
    write_text(docs, render_markdown(result, _notes(docs)))
    return result


def _notes(docs: Path) -> str:
    """The hand-written part of the benchmarks doc (below NOTES_MARK), kept across refreshes."""
    if docs.exists() and NOTES_MARK in docs.read_text():
        return docs.read_text().split(NOTES_MARK, 1)[1]
    return "\n"


NOTES_MARK = "<!-- notes: written by hand, kept by make bench -->"


def machine_line(m: dict) -> str:
    """The machine a benchmark ran on, in words: the CPU and the instruction set torch's kernels
    use (``harness.environment``; one CPU model rounds differently with another set), then the
    platform."""
    return f"{m['cpu']} ({m['cpu_capability']} kernels), {m['cpus']} CPUs, {m['platform']}, torch {m['torch']}"


def _cell(d: dict, key: str, fmt: str) -> str:
    """A table cell: the measurement, or "–" where this variant has none (no KV cache for
    random order, no diffusion head for discrete tokens)."""
    v = d.get(key)
    return "–" if v is None or v != v else format(v, fmt)


def render_markdown(r: dict, notes: str = "\n") -> str:
    tokens = next(iter(r["training"].values()))["tokens"] if r["training"] else 0
    batch = next(iter(r["training"].values())).get("batch", "") if r["training"] else ""
    lines = ["# Benchmarks", "",
             f"Measured by `make bench` on {r['date']}: {machine_line(r['machine'])}, {r['threads']} "
             "thread(s) per job as the harness runs them. Raw numbers: "
             "`results/bench/<date>.json`. Models as the default study configures them "
             "(`sweeps/cpu.yaml`).", "",
             f"- fp32 matmul ceiling: {r['matmul_gflops']:.1f} GFLOP/s at the start of the run, "
             f"{r.get('matmul_gflops_after', float('nan')):.1f} at the end.",
             f"- Peak RSS of the benchmark process: {r['peak_rss_mb']:.0f} MB.", "",
             f"## Training (one step: forward, backward, AdamW, EMA; the study's batch of {batch} x {tokens} tokens)", "",
             "| run | params | step (s) | tokens/s | GFLOP/s | MFU |", "|---|---|---|---|---|---|"]
    for k, t in r["training"].items():
        lines.append(f"| {k} | {t['params'] / 1e6:.2f}M | {t['step_seconds']:.3f} | "
                     f"{t['tokens_per_second']:.0f} | {t['achieved_gflops']:.1f} | {t['mfu']:.0%} |")
    lines += ["", "## Sampling (batch 16, each variant's default CFG/temperature)", "",
              "| run | images/s | uncached images/s | KV speed-up | head share |",
              "|---|---|---|---|---|"]
    for k, s in r["sampling"].items():
        lines.append(f"| {k} | {s['images_per_second']:.2f} | {_cell(s, 'images_per_second_uncached', '.2f')} | "
                     f"{_cell(s, 'kv_cache_speedup', '.1f')} | {_cell(s, 'diffusion_head_share', '.0%')} |")
    for k, s in r["sampling"].items():
        if "images_per_second_by_steps" in s:
            steps = ", ".join(f"{n} steps: {v:.2f}" for n, v in s["images_per_second_by_steps"].items())
            lines.append(f"\n{k} images/s by number of steps — {steps}")
    for token, s in r.get("kv_cache_64_tokens", {}).items():
        lines.append(f"\nRaster {token} at 64 tokens (xl): {s['images_per_second']:.2f} images/s "
                     f"cached, {s['images_per_second_uncached']:.2f} uncached, "
                     f"**{s['kv_cache_speedup']:.1f}x**"
                     + (f"; the transformer alone {s['kv_cache_speedup_transformer']:.1f}x, the "
                        f"diffusion head {s['diffusion_head_share']:.0%} of cached sampling"
                        if "kv_cache_speedup_transformer" in s else "") + ".")
    e = r.get("evaluation")
    if e:
        lines += ["", "## Evaluation", "",
                  f"- FID features (shapes feature net, batch 256): "
                  f"{e['fid_features_images_per_second']:.0f} images/s.",
                  f"- GenEval scoring (detector + rules, reading PNGs, {e['geneval_images']} images): "
                  f"{e['geneval_scoring_images_per_second']:.0f} images/s."]
    if r.get("overhead"):
        lines += ["", render_overhead(r["overhead"])]
    m = r.get("largest_run_memory")
    lines += ["", "## Memory", "",
              f"- Largest study run: {m['run']}, peak RSS {m['peak_rss_mb']:.0f} MB (train + evaluate)."
              if m else "- Largest study run: not measured (run `make study` first)."]
    if r.get("paper_ladder"):
        lines += ["", "## Paper ladder (dry-run estimates, continuous/random; formula in "
                  "`harness/sweep/estimate.py`)", "",
                  "| size | params | train FLOPs | GPUs | strategy | accumulation | GPU memory (GB) | GPU-hours |",
                  "|---|---|---|---|---|---|---|---|"]
        for p in r["paper_ladder"]:
            lines.append(f"| {p['size']} | {p['params'] / 1e6:.0f}M | {p['train_flops']:.2e} | {p['gpus']} | "
                         f"{p['strategy']} | {p['accumulate_grad_batches']} | {p['gpu_memory_gb']:.1f} | "
                         f"{p['gpu_hours']:.0f} |")
    if r.get("data_streaming"):
        lines += [render_data_streaming(r["data_streaming"])]
    lines += ["", "Training FLOPs counted: " + __doc__.split("Training FLOPs per step are")[1].strip(),
              "", NOTES_MARK]
    return "\n".join(lines) + notes


DATA_BEGIN, DATA_END = "<!-- data-streaming: begin -->", "<!-- data-streaming: end -->"


def render_data_streaming(d: dict) -> str:
    """The token-shard section of ``docs/benchmarks.md``, between its markers."""
    one, many = d["encode_1_shards"], d[f"encode_{d['shards']}_shards"]
    ps = d["paper_shaped"]
    lines = [DATA_BEGIN, "", "## Token shards: encoding memory and streaming throughput (#19)", "",
             f"Measured on {d.get('date', 'the date above')}, local disk (shards just written, so read "
             "from the page cache: the rates are the loader's CPU cost, not the disk's), one thread per "
             "process (a DataLoader worker's own setting).", "",
             f"- Encoder peak RSS (`python -m harness.tokenizers.shards`, continuous tokens with "
             f"posterior std, shards of {d['images_per_shard']} shapes images at {d['resolution']}x"
             f"{d['resolution']}): **{one['peak_rss_mb']:.0f} MB for 1 shard, {many['peak_rss_mb']:.0f} MB "
             f"for {d['shards']} shards** ({one['seconds']:.1f} s and {many['seconds']:.1f} s wall, process "
             "start included): memory is bounded by one batch, not by the dataset.",
             f"- Streaming loader, one worker (shapes token shards, {d['shapes_bytes_per_sample']:.0f} "
             f"bytes a sample, posterior draws): **{d['shapes_samples_per_second_per_worker']:.0f} samples/s**.",
             f"- Paper-shaped token shards (256 x 16 mean + std float32, 64 x 4096 float16 T5-XXL "
             f"features: {ps['bytes_per_sample'] / 1e6:.2f} MB a sample), one worker: "
             f"**{ps['samples_per_second_per_worker']:.0f} samples/s** ({ps['mb_per_second_per_worker']:.0f} MB/s).",
             "", "Paper preset: samples/s one GPU needs (its micro-batch over the step time estimated "
             "from the paper's train FLOPs at 40% of an H100's bf16 peak) against its `data.num_workers` "
             "workers at the paper-shaped rate measured here:", "",
             "| size | micro-batch | est. step (s) | needed samples/s | needed MB/s | workers | "
             "supplied samples/s | margin |",
             "|---|---|---|---|---|---|---|---|"]
    for m in d["paper_margin"]:
        lines.append(f"| {m['size']} | {m['micro_batch']} | {m['step_seconds']:.3f} | "
                     f"{m['samples_per_second_needed']:.0f} | "
                     f"{m['samples_per_second_needed'] * ps['bytes_per_sample'] / 1e6:.0f} | {m['workers']} | "
                     f"{m['samples_per_second_supplied']:.0f} | {m['margin']:.1f}x |")
    behind = [m["size"] for m in d["paper_margin"] if m["margin"] < 1]
    first = d["paper_margin"][0]
    need_mb = first["samples_per_second_needed"] * ps["bytes_per_sample"] / 1e6
    lines += ["", ("The loader's CPU keeps up at every size" if not behind else
                   f"The loader's CPU falls behind at {', '.join(behind)} (add workers)")
              + f"; what a GPU needs in bytes is the other limit: at {first['size']} with stored T5-XXL "
              f"features, {need_mb:.0f} MB/s per GPU ({8 * need_mb / 1e3:.1f} GB/s per 8-GPU node) from "
              "local NVMe or the page cache, so stage shards on local disk or store shorter text features."]
    return "\n".join(lines + ["", DATA_END])


OVERHEAD_HEADER = "## Harness overhead (smoke sweep, serial, stage 0 pre-built)"


def render_overhead(o: dict) -> str:
    lines = [OVERHEAD_HEADER, "",
             f"- {o['runs']} runs in {o['wall_seconds']:.1f} s wall: {o['train_step_seconds']:.1f} s "
             f"inside training steps, {o['eval_seconds']:.1f} s evaluating, "
             f"**{o['overhead_seconds']:.1f} s ({o['overhead_share']:.0%}) overhead**.",
             f"- Launch to first training step: **{o['launch_to_first_step_seconds']:.1f} s** "
             "(the forkserver's imports included)."]
    later = o.get("submit_to_first_step_later_runs_seconds")
    if later:
        lines.append(f"- Each later run, submission to first training step: median "
                     f"**{later[len(later) // 2]:.1f} s**, max {later[-1]:.1f} s ({len(later)} runs).")
    return "\n".join(lines)


def replace_section(docs: Path, header: str, section: str) -> None:
    """Replace the doc's section that starts with ``header`` (up to the next ``## ``) by
    ``section``; append it when the doc has none."""
    text = docs.read_text() if docs.exists() else "# Benchmarks\n"
    if header in text:
        head, rest = text.split(header, 1)
        tail = rest[rest.find("\n## "):] if "\n## " in rest else "\n"
        text = head + section + "\n" + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    write_text(docs, text)


def refresh_data_streaming(docs: Path, d: dict) -> None:
    """Replace (or add, before the notes) the token-shard section of the benchmarks doc."""
    text = docs.read_text() if docs.exists() else "# Benchmarks\n\n" + NOTES_MARK + "\n"
    section = render_data_streaming(d)
    if DATA_BEGIN in text and DATA_END in text:
        head, rest = text.split(DATA_BEGIN, 1)
        text = head + section + rest.split(DATA_END, 1)[1]
    elif NOTES_MARK in text:
        head, rest = text.split(NOTES_MARK, 1)
        text = head + section + "\n\n" + NOTES_MARK + rest
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    write_text(docs, text)


@cli_main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m harness.bench")
    p.add_argument("--sizes", default="m,xl", help="cpu ladder sizes (the last also gets sampling)")
    p.add_argument("--threads", type=int, default=1, help="threads per job (the harness's default)")
    p.add_argument("--out", default="results/bench")
    p.add_argument("--docs", default="docs/benchmarks.md")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", choices=["data", "overhead"],
                   help="one section alone: data (token shards), overhead (the smoke sweep's)")
    a = p.parse_args(argv)
    if a.only == "data":
        torch.set_num_threads(a.threads)
        d = data_streaming(Path(a.out) / "data-streaming", a.threads)
        d["date"] = dt.datetime.now().isoformat(timespec="seconds")
        write_json(Path(a.out) / f"data-streaming-{dt.date.today().isoformat()}.json", d)
        refresh_data_streaming(Path(a.docs), d)
        print(json.dumps(d, indent=1))
        return
    if a.only == "overhead":
        o = smoke_overhead(a.threads)
        o["date"] = dt.datetime.now().isoformat(timespec="seconds")
        write_json(Path(a.out) / f"overhead-{dt.date.today().isoformat()}.json", o)
        replace_section(Path(a.docs), OVERHEAD_HEADER, render_overhead(o))
        print(json.dumps(o, indent=1))
        return
    sizes = a.sizes.split(",")
    for size in sizes:
        check_choice("--sizes", size, LADDERS["cpu"])
    run(sizes, a.threads, Path(a.out), Path(a.docs), a.quick)


if __name__ == "__main__":
    main()
