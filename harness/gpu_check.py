"""``make gpu-check``: does the harness train and sample as it should on one H100/H200-class GPU?

Meant to fit 8 minutes on one GPU: a size starts only while the time the previous size took still
fits ``--budget-s`` (480 s). On a machine without a GPU it stops at once with a one-line error
(exit 2). For each variant at the paper preset's 166M (then 369M), with the preset's per-GPU
micro-batch (``train.batch_size`` / (devices x nodes x accumulation)) and the networks the preset
builds, every run starting from the same weights at the preset's peak lr without warm-up (so that
a few steps move the weights: at initialisation the heads output zeros, and the loss does not
depend on the network's numerics):

- precision: bf16-mixed (autocast, as Lightning's ``bf16-mixed``) against fp32 (no TF32) from the
  same weights, batch and randomness, on the micro-batch's first ``PRECISION_IMAGES`` images (fp32
  activations of the whole micro-batch would not fit 80 GB): losses and gradients finite, every
  step's loss within ``LOSS_RTOL``, the first step's gradients at cosine >= ``GRAD_COSINE_MIN``;
- attention: a training step under ``sdpa_kernel`` restricted to the flash and memory-efficient
  backends, so a math fallback raises; each of the two alone is tried to report which can run;
- speed: training steps (forward, backward, clip, fused AdamW, EMA) eager and with
  ``train.compile``; tokens/s, and MFU = executed FLOPs (``harness.models.flops``) / step time / the
  GPU's dense bf16 peak (``BF16_PEAKS``; an unknown GPU gets no MFU, and says so); the compiled
  run's last loss must match the eager run's (``LOSS_RTOL``);
- memory: the eager step's peak allocated memory against ``harness.sweep.estimate.gpu_memory_bytes``
  (at most ``MEMORY_SLACK`` x the estimate);
- sampling: images/s of token generation from the EMA networks as ``harness.sampling`` runs them
  (fp32, the preset's CFG, temperature and step counts): raster with the KV cache, random order
  in ``sample.steps`` steps; images are not decoded.

Writes ``results/bench/gpu-<date>.json`` and the section of ``docs/benchmarks.md`` between
``BEGIN`` and ``END`` (appended the first time; the rest of the file is left alone). Exit 1 when a
check fails.
"""
from __future__ import annotations

import argparse
import datetime as dt
import math
import time
import warnings
from pathlib import Path

import torch
from omegaconf import DictConfig

from harness.config import num_tokens
from harness.errors import UserError, check_choice, cli_main, one_line
from harness.io import write_json, write_text
from harness.registry import LADDERS, VARIANTS

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's datasheets, by a substring of
# torch.cuda.get_device_name() ("NVIDIA H100 80GB HBM3" is the SXM part); specific names first.
BF16_PEAKS = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H200 NVL", 835e12),
              ("GH200", 989e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12))
PRECISION_IMAGES = 32
PRECISION_STEPS = 4
LOSS_RTOL = 0.03
GRAD_COSINE_MIN = 0.99
MEMORY_SLACK = 1.10
WARMUP_STEPS, TIMED_STEPS = 3, 5  # warm-up: compilation, and the recompile for varying masked counts
SAMPLE_IMAGES = 32
BEGIN = "<!-- gpu-check: begin (written by make gpu-check) -->"
END = "<!-- gpu-check: end -->"
CAPTION = "a photo of two red circles left of a blue square"
DEVICE = "cuda"  # every tensor and module of the checks


# ---- arithmetic and lookups (tested on CPU) -------------------------------------------------

def bf16_peak(device_name: str) -> tuple[str, float] | None:
    """(matched name, dense bf16 FLOP/s) of a GPU by its torch device name; None if unknown."""
    for key, flops in BF16_PEAKS:
        if key.lower() in device_name.lower():
            return key, flops
    return None


def mfu(flops_per_step: float, step_seconds: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over the peak (None without a peak)."""
    return None if peak is None else flops_per_step / step_seconds / peak


def check(name: str, ok: bool, detail: str) -> dict:
    return {"name": name, "ok": bool(ok), "detail": detail}


# ---- one variant on the GPU -----------------------------------------------------------------

def micro_batch(cfg: DictConfig) -> int:
    t = cfg.train
    return t.batch_size // (t.devices * t.num_nodes * t.accumulate_grad_batches)


def build(cfg: DictConfig, state: dict | None = None):
    """A GeneratorModule on the GPU (seeded, or loaded from ``state``) and its fused AdamW."""
    from harness.data.datasets import caption_vocabulary
    from harness.train.module import GeneratorModule

    torch.manual_seed(0)
    with torch.device(DEVICE):
        module = GeneratorModule(cfg, cfg.tokenizer.channels, cfg.tokenizer.codebook_size,
                                 caption_vocabulary(cfg.data))
    module.to(DEVICE)  # records the device (fused AdamW, step generators)
    if state is not None:
        module.load_state_dict(state)
    return module, module.configure_optimizers()[0][0]


def make_batch(cfg: DictConfig, n: int) -> dict:
    g = torch.Generator(device=DEVICE).manual_seed(0)
    L, td = num_tokens(cfg), cfg.tokenizer.channels
    if cfg.model.token == "discrete":
        tokens = torch.randint(0, cfg.tokenizer.codebook_size, (n, L), generator=g, device=DEVICE)
    else:
        tokens = torch.randn(n, L, td, generator=g, device=DEVICE)
    return {"tokens": tokens, "caption": [CAPTION] * n}


def step_loss(module, batch: dict, seed: int) -> torch.Tensor:
    """The training loss of ``batch`` as a training step draws it (caption dropout, masks,
    diffusion noise from one seeded generator)."""
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    drop = torch.rand(len(batch["caption"]), generator=g, device=DEVICE) < module.cfg.text.dropout_prob
    context, cmask = module.context(module.nets, batch, drop)
    return module.nets["generator"].loss(batch["tokens"], context, cmask, generator=g)


def trainable(module) -> list[torch.nn.Parameter]:
    return [p for p in module.nets.parameters() if p.requires_grad]


def forward_backward(module, batch: dict, seed: int, bf16: bool) -> torch.Tensor:
    with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=bf16):
        loss = step_loss(module, batch, seed)
    loss.backward()
    return loss.detach()


def optimizer_step(module, opt) -> None:
    clip = module.cfg.train.grad_clip
    if clip:
        torch.nn.utils.clip_grad_norm_(trainable(module), clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    module.update_ema()


def train_steps(module, opt, batch: dict, seeds: range, bf16: bool = True,
                warmup: int = 0) -> tuple[list[float], float]:
    """Losses of training steps on ``batch``, one per seed, and the mean seconds of a step after
    the first ``warmup``."""
    losses = []
    for i, seed in enumerate(seeds):
        if i == warmup:
            torch.cuda.synchronize()
            start = time.perf_counter()
        losses.append(forward_backward(module, batch, seed, bf16))
        optimizer_step(module, opt)
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / max(1, len(seeds) - warmup)
    return [x.item() for x in losses], seconds


def precision(cfg: DictConfig, state: dict) -> dict:
    """bf16-mixed against fp32 (no TF32) from the same weights, batch and randomness."""
    batch = make_batch(cfg, PRECISION_IMAGES)
    runs = {}
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        for name, bf16 in (("fp32", False), ("bf16", True)):
            module, opt = build(cfg, state)
            first = forward_backward(module, batch, 0, bf16)
            # parameters a step leaves unused (the null caption, the other order's tokens) have none
            grads = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten().float()
                               for p in trainable(module)])
            optimizer_step(module, opt)
            losses, _ = train_steps(module, opt, batch, range(1, PRECISION_STEPS), bf16)
            runs[name] = ([first.item()] + losses, grads)
            del module, opt
    finally:
        torch.set_float32_matmul_precision(previous)
    (l32, g32), (l16, g16) = runs["fp32"], runs["bf16"]
    finite = all(map(math.isfinite, l16 + l32)) and bool(torch.isfinite(g16).all() and torch.isfinite(g32).all())
    return {"loss_fp32": l32, "loss_bf16": l16, "finite": finite,
            "loss_rel_diff": max(abs(a - b) / abs(b) for a, b in zip(l16, l32)),
            "grad_cosine": torch.nn.functional.cosine_similarity(g16, g32, dim=0).item()}


def attention_backends(module, batch: dict) -> dict:
    """Which SDPA backends a bf16 training step of ``module`` can run on: flash and
    memory-efficient together (the math fallback excluded, so it raises), then each alone."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    sets = {"fast": [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION],
            "flash": [SDPBackend.FLASH_ATTENTION], "efficient": [SDPBackend.EFFICIENT_ATTENTION]}
    out = {}
    for name, backends in sets.items():
        try:  # a refused backend warns why before it raises: the one-line error says enough
            with sdpa_kernel(backends), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                forward_backward(module, batch, 0, bf16=True)
            out[name] = "ok"
        except RuntimeError as e:
            out[name] = one_line(e, limit=160)
        module.zero_grad(set_to_none=True)
    return out


@torch.no_grad()
def sampling(module, cfg: DictConfig, n: int = SAMPLE_IMAGES) -> dict:
    """Images (token grids) per second from the EMA networks, as ``harness.sampling`` runs them."""
    nets = module.ema.eval()
    feats, mask = nets["text"].encode([CAPTION] * n)
    ctx, cmask = nets["aligner"](feats, mask)
    null, nmask = nets["aligner"](*nets["aligner"].null_features(n))
    s, gen = cfg.sample, nets["generator"]

    def images_per_second(**kw) -> float:
        torch.cuda.synchronize()
        start = time.perf_counter()
        gen.sample(ctx, cmask, null, nmask, cfg=s.cfg, temperature=s.temperature,
                   diffusion_steps=s.diffusion_steps, top_k=s.top_k,
                   generator=torch.Generator(device=DEVICE).manual_seed(0), **kw)
        torch.cuda.synchronize()
        return n / (time.perf_counter() - start)

    if cfg.model.order == "raster":
        return {"images": n, "images_per_second_kv_cache": images_per_second(kv_cache=True)}
    return {"images": n, "steps": s.steps, "images_per_second": images_per_second(steps=s.steps)}


def check_variant(cfg: DictConfig, peak: float | None) -> tuple[dict, list[dict]]:
    """Every measurement of one run's config; returns (numbers, checks)."""
    from omegaconf import OmegaConf

    from harness.models.flops import executed_step_flops
    from harness.sweep import estimate

    cfg = OmegaConf.merge(cfg, {"train": {"warmup_steps": 0}})  # the peak lr from step 0
    m = cfg.model
    name, micro, L = f"{m.token}-{m.order}-{m.size}", micro_batch(cfg), num_tokens(cfg)
    flops = executed_step_flops(cfg, cfg.tokenizer.channels, cfg.tokenizer.codebook_size) \
        / cfg.train.batch_size * micro
    params = estimate.size_of(cfg)[0]
    r = {"run": name, "micro_batch": micro, "tokens": L, "params": params, "executed_flops_per_step": flops}

    module, opt = build(cfg)
    state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    r["sdpa"] = attention_backends(module, make_batch(cfg, 8))
    batch = make_batch(cfg, micro)
    torch.cuda.reset_peak_memory_stats()
    losses, step = train_steps(module, opt, batch, range(WARMUP_STEPS + TIMED_STEPS), warmup=WARMUP_STEPS)
    r["memory"] = {"peak_bytes": torch.cuda.max_memory_allocated(),
                   "estimate_bytes": estimate.gpu_memory_bytes(cfg, params)}
    r["eager"] = {"step_seconds": step, "tokens_per_second": micro * L / step,
                  "mfu": mfu(flops, step, peak), "losses": losses}
    r["sampling"] = sampling(module, cfg)
    del module, opt
    torch.cuda.empty_cache()

    r["precision"] = precision(cfg, state)
    torch.cuda.empty_cache()

    module, opt = build(OmegaConf.merge(cfg, {"train": {"compile": True}}), state)
    compiled = getattr(module.nets["generator"].blocks[0], "_compiled_call_impl", None) is not None
    c_losses, c_step = train_steps(module, opt, batch, range(WARMUP_STEPS + TIMED_STEPS), warmup=WARMUP_STEPS)
    r["compiled"] = {"applied": compiled, "step_seconds": c_step, "tokens_per_second": micro * L / c_step,
                     "mfu": mfu(flops, c_step, peak), "losses": c_losses, "speedup": step / c_step}
    del module, opt
    torch._dynamo.reset()
    torch.cuda.empty_cache()
    return r, variant_checks(r)


def variant_checks(r: dict) -> list[dict]:
    """The pass/fail verdicts on one variant's numbers."""
    p, m, c, name = r["precision"], r["memory"], r["compiled"], r["run"]
    finite = p["finite"] and all(map(math.isfinite, r["eager"]["losses"] + c["losses"]))
    ratio = m["peak_bytes"] / m["estimate_bytes"]
    compile_diff = abs(c["losses"][-1] - r["eager"]["losses"][-1]) / abs(r["eager"]["losses"][-1])
    return [
        check(f"{name}: losses and gradients finite (bf16-mixed, fp32, compiled)", finite, ""),
        check(f"{name}: bf16-mixed matches fp32",
              p["loss_rel_diff"] <= LOSS_RTOL and p["grad_cosine"] >= GRAD_COSINE_MIN,
              f"loss rel. diff at most {p['loss_rel_diff']:.2%} over {PRECISION_STEPS} steps "
              f"(<= {LOSS_RTOL:.0%}), gradient cosine {p['grad_cosine']:.4f} (>= {GRAD_COSINE_MIN})"),
        check(f"{name}: attention runs on flash or memory-efficient SDPA", r["sdpa"]["fast"] == "ok",
              ", ".join(f"{k}: {v}" for k, v in r["sdpa"].items())),
        check(f"{name}: train.compile compiles and matches eager", c["applied"] and compile_diff <= LOSS_RTOL,
              f"compiled: {c['applied']}, last loss rel. diff {compile_diff:.2%} (<= {LOSS_RTOL:.0%})"),
        check(f"{name}: peak memory within {MEMORY_SLACK:.2f}x the estimate", ratio <= MEMORY_SLACK,
              f"{m['peak_bytes'] / 1e9:.1f} GB measured, {m['estimate_bytes'] / 1e9:.1f} GB estimated ({ratio:.2f}x)"),
    ]


# ---- report -----------------------------------------------------------------------------------

def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0%}"


def render_section(report: dict) -> str:
    """The GPU section of docs/benchmarks.md, markers included."""
    peak = report["peak"]
    peak_text = (f"dense bf16 peak {peak['flops'] / 1e12:.0f} TFLOP/s ({peak['name']})" if peak
                 else "bf16 peak unknown for this GPU: no MFU")
    lines = [BEGIN, "## GPU check (`make gpu-check`)", "",
             f"Measured on {report['date']}: {report['device']} ({peak_text}), torch "
             f"{report['torch']}, CUDA {report['cuda']}, in {report['seconds']:.0f} s. The paper "
             "preset (`sweeps/paper.yaml`) on one GPU at its per-GPU micro-batch; what each check "
             "does: `harness/gpu_check.py`. Raw numbers: `results/bench/gpu-<date>.json`.", "",
             "| run | micro-batch | step s (eager / compiled) | compile speed-up | tokens/s (eager / compiled) "
             "| MFU (eager / compiled) | peak memory GB (estimate) | bf16 vs fp32 loss (max rel. diff) "
             "| gradient cosine | sampling images/s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        e, c, m, p, s = r["eager"], r["compiled"], r["memory"], r["precision"], r["sampling"]
        speed = s.get("images_per_second_kv_cache", s.get("images_per_second"))
        how = "KV cache" if "images_per_second_kv_cache" in s else f"{s.get('steps')} steps"
        lines.append(
            f"| {r['run']} | {r['micro_batch']} | {e['step_seconds']:.3f} / {c['step_seconds']:.3f} | "
            f"{c['speedup']:.2f}x | {e['tokens_per_second']:,.0f} / {c['tokens_per_second']:,.0f} | "
            f"{_pct(e['mfu'])} / {_pct(c['mfu'])} | {m['peak_bytes'] / 1e9:.1f} ({m['estimate_bytes'] / 1e9:.1f}) | "
            f"{p['loss_rel_diff']:.2%} | {p['grad_cosine']:.4f} | "
            f"{speed:.2f} ({how}) |")
    failed = [c for c in report["checks"] if not c["ok"]]
    lines += ["", f"Checks: {len(report['checks']) - len(failed)} passed, {len(failed)} failed.", ""]
    lines += [f"- {'pass' if c['ok'] else '**FAIL**'}: {c['name']}" + (f" — {c['detail']}" if c["detail"] else "")
              for c in report["checks"]]
    lines += [f"- skipped: {s}" for s in report.get("skipped", [])]
    return "\n".join(lines + [END]) + "\n"


def write_section(docs: Path, section: str) -> None:
    """Replace the text between the markers (inclusive) with ``section``, or append it."""
    text = docs.read_text() if docs.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section.rstrip("\n") + rest.split(END, 1)[1]
    else:
        text = text + ("\n" if text and not text.endswith("\n") else "") + ("\n" if text else "") + section
    write_text(docs, text)


# ---- entry point ------------------------------------------------------------------------------

def require_gpu() -> str:
    """The GPU's name, or a UserError on a machine without CUDA."""
    if not torch.cuda.is_available():
        raise UserError("device", "no CUDA GPU visible: make gpu-check runs on one H100/H200-class GPU")
    return torch.cuda.get_device_name(0)


def run(sizes: list[str], variants: list[str], budget_s: float, out_dir: Path, docs: Path) -> dict:
    from harness.bench import study_config

    device = require_gpu()
    found = bf16_peak(device)
    peak = found[1] if found else None
    report = {"date": dt.datetime.now().isoformat(timespec="seconds"), "device": device,
              "torch": torch.__version__, "cuda": torch.version.cuda,
              "peak": {"name": found[0], "flops": found[1]} if found else None,
              "runs": [], "checks": [], "skipped": []}
    start = time.monotonic()
    last = 0.0
    for size in sizes:
        if report["runs"] and time.monotonic() - start + last > budget_s:
            report["skipped"].append(f"{size}: the {budget_s:.0f} s budget would run out "
                                     f"({last:.0f} s for the previous size)")
            continue
        size_start = time.monotonic()
        for v in variants:
            token, order = v.split("-")
            numbers, checks = check_variant(study_config(token, order, size, preset="paper"), peak)
            report["runs"].append(numbers)
            report["checks"] += checks
            print(numbers["run"], "; ".join(f"{'pass' if c['ok'] else 'FAIL'} {c['name'].split(': ', 1)[1]}"
                                            for c in checks), flush=True)
        last = time.monotonic() - size_start
    report["seconds"] = time.monotonic() - start
    write_json(out_dir / f"gpu-{dt.date.today().isoformat()}.json", report)
    write_section(docs, render_section(report))
    return report


@cli_main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m harness.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="166M,369M", help="paper ladder sizes, in order (later ones "
                   "while the budget allows)")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--budget-s", type=float, default=480.0, help="start no size the budget cannot fit")
    p.add_argument("--out", default="results/bench")
    p.add_argument("--docs", default="docs/benchmarks.md")
    a = p.parse_args(argv)
    sizes, variants = a.sizes.split(","), a.variants.split(",")
    for size in sizes:
        check_choice("--sizes", size, LADDERS["paper"])
    for v in variants:
        check_choice("--variants", v, VARIANTS)
    report = run(sizes, variants, a.budget_s, Path(a.out), Path(a.docs))
    failed = [c["name"] for c in report["checks"] if not c["ok"]]
    if failed:
        raise SystemExit(f"gpu-check: {len(failed)} check(s) failed: {'; '.join(failed)}")


if __name__ == "__main__":
    main()
