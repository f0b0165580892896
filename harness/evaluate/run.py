"""Evaluate a trained run: ``evaluate(run_dir)``, or ``python -m harness.evaluate RUN_DIR [--seed S]``.

For a run whose status is "trained" or "completed", computes
  val_loss            deterministic validation loss of the EMA weights over the whole val set (the
                      same batches and noise as training's own ``val/loss``); with
                      ``eval.reference.source=coco``, over the COCO draw (tokenized here)
  fid kid precision recall (torch-fidelity) and fid_cleanfid (clean-fid), on ``eval.fid_samples``
                      images generated for the captions of as many real val images (``fid.py``)
  fid_net1 fid_net2    (shapes world) the same samples' FID under feature nets trained with other
                      seeds (``FID_NET_SEEDS``): the feature net's own noise in FID
  geneval_<tag>, geneval_overall   shapes GenEval: ``make_prompts(eval.geneval_prompts_per_tag,
                      seed)`` exported with ``eval.images_per_prompt`` images each, then scored
                      (held-out combinations for counting, position and colour attribution)
  geneval_in_dist_<tag>, geneval_in_dist_overall   (``eval.geneval_in_distribution``) the same for
                      those three tags on combinations seen in training (``geneval_metrics``)
  geneval_ceiling_<tag>, geneval_ceiling_overall   (shapes world) the same GenEval of the run's
                      tokenizer's reconstructions of true scenes: what a perfect generator would
                      score through this tokenizer (``harness/geneval/ceiling.py``, cached)
  fid_floor fid_floor_sd fid_floor_real   (shapes world, reference from the data) the FID of the
                      tokenizer's reconstructions of fresh true scenes, its spread over draws, and
                      the FID of the fresh scenes themselves: what a perfect generator would score (an
                      unconditional one where captions fix pictures: named scenes)
                      (``floor.py``, cached)
  loss_floor          (shapes world whose tokens a caption fixes up to the layout: grid, no nuisance,
                      patch tokens) the validation loss of a generator that knows the world exactly
                      (``loss_floor.py``, cached once per variant)
  tail_kinds_learned tail_loss tail_gain_<a>_<b>   (shapes world with ``data.named_scenes``) how
                      many named kinds the run has learned, the loss over named scenes and the
                      caption gain by frequency rank (``tail.py``)
and draws ``samples/grid.png`` (the first generated FID images) and ``samples/fixed_prompts.png``
(:data:`FIXED_PROMPTS`, seed :data:`FIXED_SEED`: the same strip for every run, to compare runs).
Metrics are logged to the run's ``metrics.jsonl`` and MLflow run (step = training steps, keys
``eval/<name>``), written atomically to ``metrics.json``, and only then is the run "completed".

Seeds: the run's ``eval.seed`` writes ``metrics.json`` and the folders ``geneval/``,
``geneval-in-dist/``, ``fid/generated/``; any other seed writes ``metrics-seed<s>.json``,
``geneval-seed<s>/``, ``geneval-in-dist-seed<s>/``, ``fid/generated-seed<s>/`` and logs
``eval_seed<s>/<name>``, leaving the status alone.
Resuming: generated images are kept (FID in whole batches, GenEval by its export's chunks) with a
manifest of what produced them; a rerun generates only what is missing and recomputes the metrics.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from harness import config as C, progress
from harness.data.datasets import caption_vocabulary
from harness.data.tokens import TokenDataset
from harness.errors import UserError
from harness.evaluate import fid, loss_floor
from harness.evaluate.floor import ensure_fid_floor
from harness.evaluate.tail import run_tail_metrics
from harness.faults import fault
from harness.geneval.ceiling import ensure_geneval_ceiling
from harness.geneval.export import export, grid, score
from harness.geneval.prompts import make_prompts
from harness.io import read_json, write_bytes, write_json, write_text
from harness.registry import FID_FLOOR, GENEVAL_TAGS, HELD_OUT_TAGS
from harness.sampling import Sampler, pick_device
from harness.tokenizers.stage0 import load_tokenizer, load_tokens
from harness.tracking import store
from harness.run_dir import RunDir
from harness.run_status import read_status, write_status
from harness.train.run import prepare_data, validation_loss
from harness.train.module import GeneratorModule

# One image per prompt, in GenEval's wording, covering the six tags; identical for every run.
FIXED_PROMPTS: tuple[str, ...] = (
    "a photo of a circle",
    "a photo of a red square",
    "a photo of a blue triangle",
    "a photo of a circle and a triangle",
    "a photo of three squares",
    "a photo of a circle left of a square",
    "a photo of a triangle above a circle",
    "a photo of a green circle and a yellow square",
)
FIXED_SEED = 0
GRID_IMAGES, GRID_COLUMNS = 64, 8
EVALUABLE = ("trained", "completed")


def stream_seed(seed: int, stream: str) -> int:
    """The sampling seed of one use ("fid", "geneval") of an eval seed. Uses add a chunk number to
    it, so streams and neighbouring eval seeds never share noise."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{stream}".encode()).digest()[:4], "big")


def check_run(run_dir: Path) -> dict:
    """The run's status, or a UserError when it is not a trained run directory."""
    if not RunDir(run_dir).config.is_file():
        raise UserError("run_dir", f"{run_dir} is not a run directory (no config.yaml)")
    status = read_status(run_dir)
    if status["status"] not in EVALUABLE:
        raise UserError("run_dir", f"{run_dir} has status {status['status']!r}; "
                        f"only a trained run can be evaluated (status {' or '.join(EVALUABLE)})")
    return status


@torch.no_grad()
def reference_val_set(cfg: DictConfig, tok, reference: fid.Reference) -> TokenDataset:
    """The FID reference draw as a validation set (``eval.reference.source=coco``: the paper's val
    loss is on COCO): its images through the run's tokenizer, its captions (through the frozen
    text encoder, when the run has one)."""
    from PIL import Image

    from harness.data.datasets import to_float

    paths = [reference.images / fid.image_name(i) for i in range(reference.n)]
    tokens = []
    for start in range(0, len(paths), cfg.eval.batch_size):
        images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths[start:start + cfg.eval.batch_size]])
        tokens.append(tok.encode(to_float(torch.from_numpy(images))).cpu())
    from harness.text.cache import caption_features

    captions = reference.captions()
    return TokenDataset(torch.cat(tokens), captions, caption_features(cfg.text, captions))


def trained_module(run_dir: Path, cfg: DictConfig, tok) -> GeneratorModule:
    """The run's networks with its latest checkpoint's weights (EMA included), in eval mode."""
    ckpt = RunDir(run_dir).latest_checkpoint()
    if ckpt is None:
        raise UserError("run_dir", f"{RunDir(run_dir).checkpoints} holds no readable checkpoint")
    module = GeneratorModule(cfg, tok.token_dim, tok.codebook_size, caption_vocabulary(cfg.data))
    module.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"])
    return module.to(pick_device()).eval()


def run_validation_loss(run_dir: Path, cfg: DictConfig, reference: fid.Reference | None = None) -> dict:
    """``val_loss``: ``harness.train.run.validation_loss`` of the checkpoint's EMA networks over the
    run's val set, batched as in training, so it equals the run's last logged ``val/loss``; with
    ``eval.reference.source=coco``, over the ``reference`` draw instead. With named scenes in the
    shapes world, also the long tail's metrics (``harness.evaluate.tail``)."""
    run = RunDir(run_dir)
    tok_dir = read_json(run.stage0)["tokenizer"]
    tok = load_tokenizer(tok_dir)
    if cfg.eval.reference.source == "coco":
        val_set = reference_val_set(cfg, tok, reference)
    elif cfg.text.encoder == "learned" and cfg.data.name != "tokens":
        val_set = TokenDataset(*load_tokens(tok_dir, "val"))
    else:  # cached features of the frozen text encoder come with the stage-0 data; token shards: their val subset
        val_set = prepare_data(cfg)[2]
    module = trained_module(run_dir, cfg, tok)
    loader = torch.utils.data.DataLoader(val_set, batch_size=cfg.train.batch_size, shuffle=False)
    metrics = {"val_loss": validation_loss(module, loader)}
    if cfg.data.name == "shapes" and cfg.data.named_scenes:
        metrics.update(run_tail_metrics(module, tok, cfg))
    return metrics


def _fresh_folder(folder: Path, manifest: dict) -> None:
    """Keep ``folder`` for resuming only if it was made by the same ``manifest``; else empty it."""
    path = folder / "manifest.json"
    if path.exists() and read_json(path) != manifest:
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(path, manifest)


def generate_images(sampler, captions: list[str], folder: Path, seed: int, batch_size: int,
                    report: Path | None = None) -> Path:
    """One image per caption as ``folder/<index>.png``; batch b uses seed ``seed + b``, and batches
    whose files all exist are skipped (the count goes to the progress file ``report``)."""
    n = len(captions)
    reporter = progress.Reporter(report, "FID samples", n) if report else None
    with tqdm(total=n, desc="FID samples", unit="img", file=sys.stderr) as bar:
        for b, start in enumerate(range(0, n, batch_size)):
            stop = min(start + batch_size, n)
            if not all((folder / fid.image_name(i)).exists() for i in range(start, stop)):
                images = sampler.generate(captions[start:stop], seed=seed + b, batch_size=batch_size)
                fid.write_pngs(images, folder, start)
            bar.update(stop - start)
            if reporter is not None:
                reporter.update(stop)
    return folder


def fid_samples(sampler, cfg: DictConfig, reference: fid.Reference, folder: Path, seed: int, manifest: dict,
                report: Path | None = None) -> Path:
    """Evaluation's FID samples: one image per reference caption in ``folder`` from eval seed
    ``seed``'s FID stream, kept for resuming while ``manifest`` (and the reference) stay the same."""
    captions = reference.captions()
    _fresh_folder(folder, {**manifest, "n": len(captions), "reference": reference.directory.name,
                          "batch_size": cfg.eval.batch_size})
    return generate_images(sampler, captions, folder, stream_seed(seed, "fid"), cfg.eval.batch_size, report)


class _Progress:
    """A sampler whose ``generate`` also advances a progress bar and, when given, a progress file
    (the GenEval export has neither)."""

    def __init__(self, sampler, bar: tqdm, reporter: progress.Reporter | None = None):
        self.sampler, self.bar, self.reporter = sampler, bar, reporter

    def generate(self, prompts: list[str], seed: int) -> np.ndarray:
        images = self.sampler.generate(prompts, seed=seed)
        self.bar.update(len(prompts))
        if self.reporter is not None:
            self.reporter.update(self.bar.n)
        return images


def run_geneval(sampler, cfg: DictConfig, folder: Path, seed: int, manifest: dict,
                report: Path | None = None, split: str = "compositional",
                tags: tuple[str, ...] = GENEVAL_TAGS) -> dict[str, float]:
    """Shapes GenEval of ``tags`` on ``split``'s prompts in ``folder``: prompts.jsonl, the export
    (resumed), scores.json (the count of samples goes to the progress file ``report``). Returns
    the scorer's summary: accuracy per tag and "overall"."""
    e = cfg.eval
    prompts = [p for p in make_prompts(e.geneval_prompts_per_tag, seed, split) if p["tag"] in tags]
    text = "".join(json.dumps(p) + "\n" for p in prompts)
    _fresh_folder(folder, {**manifest, "prompts_sha256": hashlib.sha256(text.encode()).hexdigest(),
                           "images_per_prompt": e.images_per_prompt, "batch_size": e.batch_size})
    path = write_text(folder / "prompts.jsonl", text)
    total = len(prompts) * e.images_per_prompt
    with tqdm(total=total, desc="GenEval samples", unit="img", file=sys.stderr) as bar:
        reporter = progress.Reporter(report, "GenEval samples", total) if report else None
        export(path, _Progress(sampler, bar, reporter), folder, e.images_per_prompt,
               stream_seed(seed, "geneval" if split == "compositional" else f"geneval-{split}"), e.batch_size)
    return score(folder)


def geneval_metrics(sampler, cfg: DictConfig, run: RunDir, seed: int,
                    manifest: dict) -> dict[str, float]:
    """``geneval_<tag>`` and ``geneval_overall`` on the held-out (compositional) prompts; with
    ``eval.geneval_in_distribution`` also ``geneval_in_dist_<tag>`` for :data:`HELD_OUT_TAGS` on
    prompts of combinations seen in training, and ``geneval_in_dist_overall``: the six tags' mean
    with those three in distribution (the other tags have nothing held out: their prompts are the
    same either way)."""
    held_out = run_geneval(sampler, cfg, run.geneval(seed, cfg.eval.seed), seed, manifest, run.progress)
    out = {"geneval_overall": held_out["overall"], **{f"geneval_{t}": held_out[t] for t in GENEVAL_TAGS}}
    if cfg.eval.geneval_in_distribution:
        seen = run_geneval(sampler, cfg, run.geneval_in_dist(seed, cfg.eval.seed), seed, manifest,
                           run.progress, split="train", tags=HELD_OUT_TAGS)
        out.update({f"geneval_in_dist_{t}": seen[t] for t in HELD_OUT_TAGS},
                   geneval_in_dist_overall=float(np.mean([seen.get(t, held_out[t]) for t in GENEVAL_TAGS])))
    return out


def image_grid(images: np.ndarray, columns: int, pad: int = 2) -> np.ndarray:
    """uint8 images (N, H, W, 3) in rows of ``columns``, ``pad`` black pixels apart."""
    rows = [grid(images[i:i + columns], pad) for i in range(0, len(images), columns)]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    out = [rows[0]]
    for r in rows[1:]:
        out += [np.zeros((pad, width, 3), np.uint8), r]
    return np.concatenate(out)


def write_samples(sampler, run_dir: Path, generated: Path) -> list[Path]:
    """``samples/grid.png`` (first generated FID images) and ``samples/fixed_prompts.png``."""
    from PIL import Image

    files = sorted(generated.glob("*.png"))[:GRID_IMAGES]
    first = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    strip = sampler.generate(list(FIXED_PROMPTS), seed=FIXED_SEED, batch_size=len(FIXED_PROMPTS))
    out = RunDir(run_dir).samples
    paths = [out / "grid.png", out / "fixed_prompts.png"]
    write_bytes(paths[0], fid.png_bytes(image_grid(first, GRID_COLUMNS)))
    write_bytes(paths[1], fid.png_bytes(grid(strip)))
    return paths


def _log(run_dir: Path, cfg: DictConfig, metrics: dict, step: int, prefix: str) -> None:
    """Numeric metrics to metrics.jsonl and MLflow, skipping (key, step) pairs already logged."""
    seen = {(r["key"], r["step"]) for r in store.read_metrics(run_dir)}
    fresh = {prefix + k: float(v) for k, v in metrics.items()
             if isinstance(v, (int, float)) and (prefix + k, step) not in seen}
    if fresh:
        store.log_metrics(run_dir, fresh, step, cfg.tracking.uri)


def metrics_path(run_dir: str | Path, seed: int | None = None) -> Path:
    """Where ``evaluate(run_dir, seed)`` writes its metrics (for callers checking what exists)."""
    run = RunDir(run_dir)
    default = C.load_saved(run.config).eval.seed
    return run.eval_metrics(default if seed is None else seed, default)


def evaluate(run_dir: str | Path, seed: int | None = None) -> dict:
    """Evaluate a trained run (see the module docstring); returns the metrics written."""
    start = time.time()
    run = RunDir(run_dir)
    run_dir = run.path
    status = check_run(run_dir)
    cfg = C.load_saved(run.config)
    seed = cfg.eval.seed if seed is None else int(seed)
    default = seed == cfg.eval.seed
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    space = fid.feature_space(cfg)  # first: a missing Inception file fails before any work
    reference = fid.ensure_reference(cfg, space)
    step = int(status.get("step", cfg.train.steps))
    sampler = Sampler.from_run(run_dir)
    metrics: dict = run_validation_loss(run_dir, cfg, reference)
    manifest = {"seed": seed, "step": step, "sample": OmegaConf.to_container(cfg.sample)}
    generated = fid_samples(sampler, cfg, reference, run.fid_generated(seed, cfg.eval.seed), seed, manifest,
                            run.progress)
    captions = reference.captions()
    fault("evaluate.generated", run_dir)
    metrics.update(fid.fid_metrics(generated, reference, space, cfg.eval.batch_size, seed))
    for name, other in fid.other_net_spaces(cfg).items():
        metrics[name] = fid.fid_value(generated, fid.ensure_reference(cfg, other), other, cfg.eval.batch_size)
    metrics.update(geneval_metrics(sampler, cfg, run, seed, manifest))
    if cfg.data.name == "shapes":
        ceiling = ensure_geneval_ceiling(read_json(run.stage0)["tokenizer"], sampler.tokenizer, cfg.data,
                                         cfg.eval.geneval_prompts_per_tag, cfg.eval.images_per_prompt)
        metrics.update({f"geneval_ceiling_{k}": v for k, v in ceiling.items() if k != "true_overall"})
        if cfg.eval.reference.source == "data":
            floor = ensure_fid_floor(read_json(run.stage0)["tokenizer"], sampler.tokenizer, cfg, reference, space)
            metrics.update({k: floor[k] for k in FID_FLOOR})
        if loss_floor.problem(cfg) is None:
            metrics["loss_floor"] = loss_floor.ensure_loss_floor(cfg)["loss_floor"]
    images = write_samples(sampler, run_dir, generated) if default else []
    metrics.update(eval_seconds=time.time() - start, fid_samples=len(captions), fid_features=space.name,
                   geneval_images=cfg.eval.geneval_prompts_per_tag * cfg.eval.images_per_prompt
                   * (len(GENEVAL_TAGS) + len(HELD_OUT_TAGS) * cfg.eval.geneval_in_distribution))
    _log(run_dir, cfg, metrics, step, "eval/" if default else f"eval_seed{seed}/")
    metrics.update(seed=seed, step=step)
    out = run.eval_metrics(seed, cfg.eval.seed)
    # listed before metrics.json exists, so a stop right after writing it still leaves it to sync
    store.log_artifacts(run_dir, {**{p: "samples" for p in images}, out: "eval"}, cfg.tracking.uri)
    write_json(out, metrics)
    if default:
        write_status(run_dir, "completed", evaluated=time.time())
    store.catch_up(run_dir, cfg.tracking.uri)  # metrics.json, and what a stopped attempt left behind
    return metrics
