"""FID across classifier-free guidance scales (and sampling temperatures) of one trained run.

    python -m harness.evaluate.guidance RUN_DIR --cfg 1 1.5 2 3 5 [--temperature 0.5 0.75] [--seed S]

Evaluation samples at one guidance scale per variant (``sample.cfg``, the paper's), and FID depends
on that scale more than on model size in the default study (calibration item 32 in
``docs/results/cpu-study``); MAR reports FID with and without guidance and picks the scale per
model. This measures the run's FID, precision and recall at each given scale on evaluation's own
protocol (the reference set's captions, the eval seed's FID sampling stream), so the value at the
run's ``sample.cfg`` equals ``metrics.json``'s ``fid``. Every scale is written as soon as it is
measured to ``guidance/fid[-seed<s>].json`` (scale -> metrics, merged with earlier calls, written
atomically, mirrored to MLflow under ``eval/``); images stay in ``guidance/cfg<scale>[-seed<s>]/``
and a rerun generates only what is missing (evaluation's resume rule).

``--temperature`` scans the sampling temperature too (the noise scale of each diffusion step for
continuous tokens, the softmax temperature for discrete ones): each temperature other than the
run's writes ``guidance/fid-t<T>[-seed<s>].json`` and ``guidance/cfg<scale>-t<T>[-seed<s>]/``, so
the run's own table, the one the analysis reads, keeps one temperature. Calibration item 77 in
``docs/results/cpu-study`` scans the default study's models with it.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from omegaconf import OmegaConf

from harness import config as C
from harness.errors import UserError, cli_main
from harness.evaluate import fid
from harness.evaluate.run import check_run, fid_samples
from harness.io import read_json, write_json
from harness.run_dir import RunDir
from harness.sampling import Sampler
from harness.tracking import store

METRICS = ("fid", "fid_cleanfid", "precision", "recall")


def check_scales(scales: list[float]) -> list[float]:
    bad = [s for s in scales if not s >= 1.0]
    if not scales or bad:
        raise UserError("--cfg", f"guidance scales must be >= 1 (1 = no guidance), got {scales}")
    return sorted(set(scales))


def check_temperatures(temperatures: list[float]) -> list[float]:
    bad = [t for t in temperatures if not t > 0]
    if not temperatures or bad:
        raise UserError("--temperature", f"sampling temperatures must be > 0, got {temperatures}")
    return sorted(set(temperatures))


def guidance_fid(run_dir: str | Path, scales: list[float], seed: int | None = None,
                 temperature: float | None = None) -> dict[str, dict]:
    """``{scale: {fid, fid_cleanfid, precision, recall}}`` of the run at each of ``scales`` (and
    whatever earlier calls measured for this seed and temperature), at the run's sampling
    temperature unless ``temperature`` is given; see the module docstring."""
    scales = check_scales(scales)
    run = RunDir(run_dir)
    status = check_run(run.path)
    cfg = C.load_saved(run.config)
    seed = cfg.eval.seed if seed is None else int(seed)
    space = fid.feature_space(cfg)
    reference = fid.ensure_reference(cfg, space)
    sampler = Sampler.from_run(run.path)
    step = int(status.get("step", cfg.train.steps))
    if temperature is not None:
        temperature = check_temperatures([temperature])[0]
        if temperature == cfg.sample.temperature:
            temperature = None  # the run's own: its table and images
        else:
            sampler.cfg.sample.temperature = temperature
    out = run.guidance_fid(seed, cfg.eval.seed, temperature)
    table = read_json(out) if out.exists() else {}
    store.log_artifacts(run.path, {out: "eval"}, cfg.tracking.uri)
    for scale in scales:
        sampler.cfg.sample.cfg = scale
        folder = run.guidance_images(scale, seed, cfg.eval.seed, temperature)
        fid_samples(sampler, cfg, reference, folder, seed,
                    {"seed": seed, "step": step, "sample": OmegaConf.to_container(sampler.cfg.sample)})
        measured = fid.fid_metrics(folder, reference, space, cfg.eval.batch_size, seed)
        table[f"{scale:g}"] = {k: measured[k] for k in METRICS}
        write_json(out, {k: table[k] for k in sorted(table, key=float)})
    store.catch_up(run.path, cfg.tracking.uri)
    return table


@cli_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m harness.evaluate.guidance", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a run directory whose status is trained or completed")
    parser.add_argument("--cfg", type=float, nargs="+", required=True, help="guidance scales (>= 1)")
    parser.add_argument("--temperature", type=float, nargs="+", default=None,
                        help="sampling temperatures (> 0; default: the run's); prints {T: {scale: ...}}")
    parser.add_argument("--seed", type=int, default=None, help="eval seed (default: the run's eval.seed)")
    args = parser.parse_args(argv)
    if args.temperature is None:
        print(json.dumps(guidance_fid(args.run_dir, args.cfg, args.seed), indent=2))
        return
    tables = {f"{t:g}": guidance_fid(args.run_dir, args.cfg, args.seed, t)
              for t in check_temperatures(args.temperature)}
    print(json.dumps(tables, indent=2))


if __name__ == "__main__":
    main()
