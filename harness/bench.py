"""``make bench``: what this machine does with the harness, measured in one run.

Writes ``results/bench/<date>.json`` and refreshes ``docs/benchmarks.md``. Every ratio (MFU,
speed-ups, shares) is measured within the same run, because a shared machine is noisy.

Training FLOPs per step are the *executed* FLOPs (MFU counts what the hardware does):
3 x forward of the text encoder (learned), aligner and transformer for every image, plus
3 x the token head for every token that carries loss — for the continuous head times the
diffusion batch multiplier (each loss token is noised ``diffusion_batch_mul`` times).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import resource
import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from harness import config as C
from harness.io import write_json, write_text
from harness.models.flops import forward_flops, head_flops_per_token
from harness.train.module import GeneratorModule, counted_parameters

VARIANTS = [("continuous", "random"), ("continuous", "raster"), ("discrete", "random"),
            ("discrete", "raster")]


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


def step_flops(cfg: DictConfig, module: GeneratorModule, token_dim: int, codebook: int) -> float:
    """Executed FLOPs of one training step (see the module docstring)."""
    m, L, B = cfg.model, C.num_tokens(cfg), cfg.train.batch_size
    fwd_head = L * head_flops_per_token(cfg, token_dim, codebook)
    fwd_rest = forward_flops(cfg, token_dim, codebook) - fwd_head
    text = 0.0
    if "text" in module.nets:
        t = cfg.text
        text = t.encoder_layers * 2 * t.max_len * (12 * t.width ** 2) + 4 * t.max_len ** 2 * t.width
    loss_tokens = L if m.order == "raster" else L * 0.867  # mean of the truncated-normal mask ratio
    mul = m.diffusion_batch_mul if m.token == "continuous" else 1
    per_token_head = head_flops_per_token(cfg, token_dim, codebook)
    return B * (3 * (fwd_rest + text) + 3 * per_token_head * loss_tokens * mul)


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
    module.log = lambda *a, **k: None
    module.optimizers = lambda: opt_cfg
    times = []
    for i in range(steps + warmup):
        t = time.perf_counter()
        loss = module.training_step(batch, i)
        opt_cfg.zero_grad(set_to_none=True)
        loss.backward()
        opt_cfg.step()
        module.update_ema()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    sec = sorted(times)[len(times) // 2]
    flops = step_flops(cfg, module, token_dim, codebook)
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
    feats, mask = nets["text"].encode(captions)
    ctx, cmask = nets["aligner"](feats, mask)
    null, nmask = nets["aligner"](*nets["aligner"].null_features(batch))
    gen = nets["generator"]
    s = cfg.sample

    def run(**kw) -> float:
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            gen.sample(ctx, cmask, null, nmask, cfg=s.cfg, temperature=s.temperature,
                       diffusion_steps=s.diffusion_steps, generator=torch.Generator().manual_seed(0), **kw)
            best = min(best, time.perf_counter() - t)
        return batch / best

    out: dict = {}
    if cfg.model.order == "raster":
        out["images_per_second"] = run(kv_cache=True)
        out["images_per_second_uncached"] = run(kv_cache=False)
        out["kv_cache_speedup"] = out["images_per_second"] / out["images_per_second_uncached"]
    else:
        out["images_per_second"] = run(steps=s.steps)
        out["images_per_second_by_steps"] = {k: run(steps=k) for k in (4, 8, 16, 32)}
    if cfg.model.token == "continuous":
        head_time = [0.0]
        net = gen.diffloss.net
        original = net.forward

        def timed(*a):
            t = time.perf_counter()
            r = original(*a)
            head_time[0] += time.perf_counter() - t
            return r

        net.forward = timed
        t = time.perf_counter()
        gen.sample(ctx, cmask, null, nmask, cfg=s.cfg, temperature=s.temperature,
                   steps=s.steps, diffusion_steps=s.diffusion_steps,
                   generator=torch.Generator().manual_seed(0))
        out["diffusion_head_share"] = head_time[0] / (time.perf_counter() - t)
        net.forward = original
    return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(sizes: list[str], threads: int, out_dir: Path, docs: Path, quick: bool = False) -> dict:
    torch.set_num_threads(threads)
    result: dict = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": torch.get_num_threads(), "torch": torch.__version__},
        "threads": threads,
        "matmul_gflops": matmul_ceiling(threads),
        "training": {}, "sampling": {},
    }
    for size in sizes:
        for token, order in VARIANTS:
            cfg = C.load([f"model.token={token}", f"model.order={order}", f"model.size={size}"])
            key = f"{token}-{order}-{size}"
            tr = time_training(cfg, steps=4 if quick else 12)
            tr["mfu"] = tr["achieved_gflops"] / result["matmul_gflops"]
            result["training"][key] = tr
            if size == sizes[-1]:
                result["sampling"][key] = time_sampling(cfg, repeats=1 if quick else 2)
            print(key, json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in tr.items()}),
                  flush=True)
    result["matmul_gflops_after"] = matmul_ceiling(threads)
    result["peak_rss_mb"] = peak_rss_mb()
    stamp = dt.date.today().isoformat()
    write_json(out_dir / f"{stamp}.json", result)
    write_text(docs, render_markdown(result))
    return result


def render_markdown(r: dict) -> str:
    lines = ["# Benchmarks", "",
             f"Measured by `make bench` on {r['date']}: {r['machine']['platform']}, "
             f"torch {r['machine']['torch']}, {r['threads']} thread(s). Raw numbers: "
             "`results/bench/<date>.json`.", "",
             f"- fp32 matmul ceiling: {r['matmul_gflops']:.1f} GFLOP/s at the start of the run, "
             f"{r.get('matmul_gflops_after', float('nan')):.1f} at the end.",
             f"- Peak RSS of the benchmark process: {r['peak_rss_mb']:.0f} MB.", "",
             "## Training (one step: forward, backward, AdamW, EMA; batch 64 x 64 tokens)", "",
             "| run | params | step (s) | tokens/s | GFLOP/s | MFU |", "|---|---|---|---|---|---|"]
    for k, t in r["training"].items():
        lines.append(f"| {k} | {t['params'] / 1e6:.2f}M | {t['step_seconds']:.3f} | "
                     f"{t['tokens_per_second']:.0f} | {t['achieved_gflops']:.1f} | {t['mfu']:.0%} |")
    lines += ["", "## Sampling (batch 16, the paper's per-variant CFG/temperature)", "",
              "| run | images/s | uncached images/s | KV speed-up | head share |",
              "|---|---|---|---|---|"]
    for k, s in r["sampling"].items():
        lines.append(f"| {k} | {s['images_per_second']:.2f} | "
                     f"{s.get('images_per_second_uncached', float('nan')):.2f} | "
                     f"{s.get('kv_cache_speedup', float('nan')):.1f} | "
                     f"{s.get('diffusion_head_share', float('nan')):.0%} |")
    for k, s in r["sampling"].items():
        if "images_per_second_by_steps" in s:
            steps = ", ".join(f"{n} steps: {v:.2f}" for n, v in s["images_per_second_by_steps"].items())
            lines.append(f"\n{k} images/s by number of steps — {steps}")
    lines += ["", "Training FLOPs counted: " + __doc__.split("Training FLOPs per step are")[1].strip()]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m harness.bench")
    p.add_argument("--sizes", default="m,xl", help="cpu ladder sizes (the last also gets sampling)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="results/bench")
    p.add_argument("--docs", default="docs/benchmarks.md")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    run(a.sizes.split(","), a.threads, Path(a.out), Path(a.docs), a.quick)


if __name__ == "__main__":
    main()
