"""``--dry-run``: the plan of a sweep, without running anything.

One row per run: key, variant, size, counted parameters, training FLOPs, steps and its state
(what is already done). For the paper ladder also the estimated per-GPU memory and GPU-hours
(formulas in ``harness.sweep.estimate``). ``--json`` prints the same as one JSON object.
"""
from __future__ import annotations

from harness.sweep import estimate
from harness.sweep.plan import Run, Stage0Task
from harness.sweep.status import RunState, counts


def plan_rows(runs: list[Run], states: list[RunState], gpu: bool) -> list[dict]:
    rows = []
    for run, state in zip(runs, states):
        params, flops = estimate.size_of(run.cfg)
        row = {"run_key": run.key, "variant": run.variant, "size": run.size, "params": params,
               "train_flops": flops, "steps": run.cfg.train.steps, "batch_size": run.cfg.train.batch_size,
               "seeds": run.seeds, "state": state.state, "detail": state.detail,
               "run_dir": str(run.dir)}
        if gpu and params is not None:
            row["gpu_memory_gb"] = estimate.gpu_memory_bytes(run.cfg, params) / 1e9
            row["gpus"] = run.cfg.train.devices * run.cfg.train.num_nodes
            row["strategy"] = run.cfg.train.strategy
            row["accumulate_grad_batches"] = run.cfg.train.accumulate_grad_batches
            row["gpu_hours"] = estimate.gpu_hours(flops)
        rows.append(row)
    return rows


def plan(name: str, launcher: str, runs: list[Run], states: list[RunState],
         stage0: list[Stage0Task], gpu: bool) -> dict:
    rows = plan_rows(runs, states, gpu)
    out = {"sweep": name, "launcher": launcher, "runs": rows, "counts": counts(states),
           "stage0": [{"kind": t.kind, "part": t.part, "path": str(t.path), "done": t.done}
                      for t in stage0],
           "total_train_flops": sum(r["train_flops"] or 0 for r in rows)}
    if gpu:
        out["total_gpu_hours"] = sum(r.get("gpu_hours", 0) for r in rows)
        out["assumptions"] = {"mfu": estimate.ASSUMED_MFU,
                              "peak_flops": estimate.H100_BF16_PEAK_FLOPS,
                              "state_bytes_per_param": estimate.STATE_BYTES_PER_PARAM}
    return out


def _num(x: float | None, unit: str = "") -> str:
    if x is None:
        return "?"
    for div, suffix in ((1e21, "Z"), (1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}{unit}"
    return f"{x:.3g}{unit}"


def render(p: dict) -> str:
    gpu = "total_gpu_hours" in p
    head = f"{'run':<40} {'variant':<19} {'size':<6} {'params':>8} {'train FLOPs':>11} {'steps':>7}"
    if gpu:
        head += f" {'GPUs':>4} {'mem/GPU':>9} {'GPU-h':>9}"
    lines = [f"sweep {p['sweep']} ({p['launcher']}): {len(p['runs'])} runs", head + "  state"]
    for r in p["runs"]:
        line = (f"{r['run_key']:<40} {r['variant']:<19} {r['size']:<6} {_num(r['params']):>8} "
                f"{_num(r['train_flops']):>11} {r['steps']:>7}")
        if gpu:
            line += (f" {r.get('gpus', '?'):>4} {_num(r.get('gpu_memory_gb', 0) * 1e9, 'B'):>9} "
                     f"{r.get('gpu_hours', 0):>9.1f}")
        lines.append(f"{line}  {r['state']}{' (' + r['detail'] + ')' if r['detail'] else ''}")
    todo = [t for t in p["stage0"] if not t["done"]]
    lines.append(f"stage 0: {len(p['stage0']) - len(todo)} ready, {len(todo)} to build"
                 + "".join(f"\n  {t['kind']} {t['part']}: {t['path']}" for t in todo))
    lines.append(", ".join(f"{n} {k}" for k, n in p["counts"].items())
                 + f"; total train FLOPs {_num(p['total_train_flops'])}")
    if gpu:
        a = p["assumptions"]
        lines.append(f"total {p['total_gpu_hours']:.0f} GPU-hours at MFU {a['mfu']} of "
                     f"{a['peak_flops'] / 1e12:.0f} TFLOP/s (H100 bf16); memory = "
                     f"{a['state_bytes_per_param']} B/param + activations (harness.sweep.estimate)")
    return "\n".join(lines)
