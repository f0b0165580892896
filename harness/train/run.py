"""Train one generator run: ``train(cfg)``, or ``python -m harness.train <dotlist overrides>``.

A run lives in its ``RunDir`` (``harness/run_dir.py``: config, checkpoints, metrics, status).
Calling ``train`` again on the same config resumes from the newest readable checkpoint, or returns
at once if training already finished.
"""
from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig

from harness import config as C, progress
from harness.data.datasets import caption_vocabulary
from harness.data.tokens import TokenDataModule, TokenDataset
from harness.environment import record_environment
from harness.errors import one_line
from harness.faults import fault
from harness.io import write_json
from harness.models.flops import executed_flops, forward_flops, train_flops, trainable_parameters
from harness.run_dir import RunDir
from harness.run_status import read_status, write_status
from harness.tokenizers.stage0 import ensure_tokenizer, load_token_std, load_tokenizer, load_tokens
from harness.tracking import store, tracking_uri
from harness.tracking.logger import RunLogger, flatten
from harness.tracking.size_metrics import STEP as SIZE_STEP, size_metrics
from harness.train.module import GeneratorModule, NonFiniteLoss, counted_parameters


class OnSteps(Callback):
    """A callback that acts after the optimizer steps ``every`` steps apart and after the last.

    With gradient accumulation a batch that ends no optimizer step sees the same global step as the
    one before it: it is skipped, so nothing is checkpointed (or validated) twice, nor between the
    micro-batches of a step, where a resumed run would restart out of phase with the data."""

    def __init__(self, every: int):
        self.every, self._step = every, None

    def on_train_start(self, trainer, pl_module) -> None:
        self._step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step != self._step and (step % self.every == 0 or step >= trainer.max_steps):
            self.on_step(trainer, pl_module)
        self._step = step

    def on_step(self, trainer, pl_module) -> None:
        raise NotImplementedError


class AtomicCheckpoint(OnSteps):
    """Every ``every`` steps and at the end: last.ckpt -> prev.ckpt, then a new last.ckpt written
    to a temp file and renamed, so a kill at any moment leaves a loadable checkpoint."""

    def __init__(self, run: RunDir, every: int):
        super().__init__(every)
        self.run = run

    def save(self, trainer: L.Trainer) -> None:
        folder = self.run.checkpoints
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".last.{os.getpid()}.tmp"
        if trainer.is_global_zero:  # temp files of attempts killed mid-save
            for stale in folder.glob(".last.*.tmp"):
                stale.unlink(missing_ok=True)
        trainer.save_checkpoint(tmp)
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            if self.run.last_checkpoint.exists():
                os.replace(self.run.last_checkpoint, self.run.prev_checkpoint)
            # the newest checkpoint is only in the temp file, the one before in prev.ckpt
            fault("checkpoint.rotating", self.run.path)
            os.replace(tmp, self.run.last_checkpoint)

    def on_step(self, trainer, pl_module) -> None:
        self.save(trainer)


class Validation(OnSteps):
    """Every ``every`` steps and at the end, on the EMA networks with fixed randomness: the
    validation loss, and whether the text path is read — the loss with each sample reading another
    sample's caption (``val/loss_shuffled``; ``val/caption_gain`` = shuffled - true), the loss with
    the null caption (``val/loss_null``; ``val/caption_null_gain`` = null - true, what the captions
    tell the model without the cost of a contradicting one) and the context's spread across
    captions (``text/context_spread``), so a text path that collapses shows in MLflow as it
    happens."""

    def run(self, trainer, pl_module: GeneratorModule) -> None:
        # sharded (FSDP) parameters are gathered collectively: then every rank runs the sharded root
        sharded = sharded_model(trainer)
        if trainer.is_global_zero or sharded is not None:
            loader = trainer.datamodule.val_dataloader()
            probes = {probe: validation_loss(pl_module, loader, sharded, probe)
                      for probe in ("loss", "shuffled", "null", "spread")}
        if trainer.is_global_zero:
            metrics = {"val/loss": probes["loss"], "val/loss_shuffled": probes["shuffled"],
                       "val/caption_gain": probes["shuffled"] - probes["loss"],
                       "val/loss_null": probes["null"], "val/caption_null_gain": probes["null"] - probes["loss"],
                       "text/context_spread": probes["spread"]}
            for lg in trainer.loggers:
                lg.log_metrics(metrics, trainer.global_step)

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        if trainer.global_step == 0:
            self.run(trainer, pl_module)

    def on_step(self, trainer, pl_module) -> None:
        self.run(trainer, pl_module)


def sharded_model(trainer: L.Trainer):
    """The FSDP-wrapped root module when training under ``train.strategy=fsdp``, else None."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    return trainer.model if isinstance(trainer.model, FullyShardedDataParallel) else None


@torch.no_grad()
def validation_loss(module: GeneratorModule, loader, model=None, probe: str = "loss") -> float:
    """Mean of a probe (``GeneratorModule._ema_probe``; by default the loss) of the EMA networks
    over the validation set (in its order), with fixed randomness. ``model``: the FSDP root
    wrapping ``module``, which gathers the sharded parameters."""
    model = model or module
    total, count = 0.0, 0
    for i, batch in enumerate(loader):
        batch = {k: v.to(module.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        n = batch["tokens"].shape[0]
        total += model(batch, i, count, probe).float().item() * n
        count += n
    return total / max(1, count)


def lightning_strategy(cfg: DictConfig):
    """``train.strategy`` as Lightning takes it. ``ddp`` finds unused parameters (the null caption
    and the raster start token skip some steps). ``fsdp``: FSDPStrategy, fully sharded, one unit per
    transformer block, diffusion-head block and the EMA (``harness.train.module.FSDP_WRAP``), mixed
    precision from ``train.precision``, full (unsharded) checkpoints that load anywhere."""
    if cfg.train.strategy == "ddp":
        return "ddp_find_unused_parameters_true"
    if cfg.train.strategy == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy

        from harness.train.module import FSDP_WRAP

        # FSDP warns about every ModuleDict it wraps; the EMA is one that has a forward
        warnings.filterwarnings("ignore", message="FSDP will not all-gather parameters for containers "
                                "that do not implement forward: EMA", category=UserWarning)
        return FSDPStrategy(auto_wrap_policy=set(FSDP_WRAP), sharding_strategy="FULL_SHARD",
                            state_dict_type="full", use_orig_params=True)
    return cfg.train.strategy


class StartFrom(Callback):
    """Tell the step-indexed sampler where a resumed run picks up."""

    def on_train_start(self, trainer, pl_module) -> None:
        dm = trainer.datamodule
        dm.sampler.start = trainer.global_step * trainer.accumulate_grad_batches
        dm.sampler.rank, dm.sampler.world = trainer.global_rank, trainer.world_size


class StepTimer(Callback):
    """Time inside training steps (forward, backward, optimizer, EMA) and when the first step of
    this process ended: ``make bench`` separates compute from harness overhead with them."""

    def __init__(self, out: Path):
        self.out, self.compute, self.first, self._t0 = out, 0.0, None, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.compute += time.perf_counter() - self._t0
        if self.first is None and trainer.is_global_zero:
            self.first = time.time()
            write_status(self.out, "running", first_step=self.first)


def prepare_data(cfg: DictConfig) -> tuple[Path, TokenDataset, TokenDataset]:
    """Stage 0 for this run: the tokenizer and the pre-encoded tokens (and text features); for
    ``data.name=tokens``, the token shards' tokenizer, training stream and fixed val subset."""
    if cfg.data.name == "tokens":
        from harness.data.token_shards import prepare

        return prepare(cfg)
    tok_dir = ensure_tokenizer(cfg, cfg.model.token)
    text = {}
    if cfg.text.encoder != "learned":
        from harness.text.cache import ensure_text_features

        text = ensure_text_features(cfg)
    sets = []
    for split in ("train", "val"):
        tokens, captions = load_tokens(tok_dir, split)
        # tokenizer.posterior_sample: training draws from the cached posterior; validation, the mean
        std = load_token_std(tok_dir) if split == "train" else None
        sets.append(TokenDataset(tokens, captions, text.get(split), std=std))
    return tok_dir, sets[0], sets[1]


def size_and_cost(cfg: DictConfig, module: GeneratorModule, tok) -> dict:
    """Size and cost of a run, as logged and written to the results table, in the paper's
    convention (params, train_flops) and as executed (trainable_params, executed_flops;
    harness/models/flops.py)."""
    text_width = None if cfg.text.encoder == "learned" else module.nets["aligner"].proj.in_features
    dims = (tok.token_dim, tok.codebook_size, text_width)
    return {"params": counted_parameters(module.nets),
            "trainable_params": trainable_parameters(module.nets),
            "forward_flops": forward_flops(cfg, *dims),
            "train_flops": train_flops(cfg, *dims),
            "executed_flops": executed_flops(cfg, *dims),
            "num_tokens": C.num_tokens(cfg)}


def train(cfg: DictConfig) -> Path:
    """Train (or resume, or skip) the run for ``cfg``; returns its directory."""
    run = RunDir.of(cfg)
    out = run.path
    out.mkdir(parents=True, exist_ok=True)
    C.save(cfg, run.config)
    status = read_status(out)
    if status["status"] in ("trained", "completed"):
        return out
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    tok_dir, train_set, val_set = prepare_data(cfg)
    tok = load_tokenizer(tok_dir)
    write_json(run.stage0, {"tokenizer": str(tok_dir.resolve())})
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)  # after stage 0, which may train
    module = GeneratorModule(cfg, tok.token_dim, tok.codebook_size, caption_vocabulary(cfg.data))
    info = size_and_cost(cfg, module, tok)
    write_json(run.info, info)
    record_environment(run.environment)
    uri = cfg.tracking.uri or tracking_uri()
    m = cfg.model
    try:
        store.ensure_run(out, cfg.tracking.experiment, C.run_key(cfg),
                         {"token": m.token, "order": m.order, "size": m.size, "ladder": m.ladder,
                          "run_key": C.run_key(cfg)}, cfg.tracking.parent_run_id, uri)
    except Exception as e:
        store.mark_pending(out, f"run not created: {one_line(e)}")
    logger = RunLogger(out, uri)
    logger.log_hyperparams({**flatten(C.to_container(cfg)), **info})
    logger.log_metrics(size_metrics(info, cfg.model), step=SIZE_STEP)  # what the UI's charts plot against
    # train.batch_size images per optimizer step over all devices: the sampler counts micro-batches,
    # accumulate_grad_batches of them per step, each split across the ranks
    if cfg.data.name == "tokens":  # streamed from token shards (train_set: a ShardStream)
        from harness.data.token_shards import TokenShardDataModule

        dm = TokenShardDataModule(train_set, val_set, cfg.train.batch_size, cfg.data.num_workers)
    else:
        dm = TokenDataModule(train_set, val_set, cfg.train.batch_size,
                             cfg.train.steps * cfg.train.accumulate_grad_batches, cfg.train.seed,
                             cfg.data.num_workers, cfg.train.accumulate_grad_batches)
    strategy = lightning_strategy(cfg)
    # FSDP clips through its sharded root (GeneratorModule.configure_gradient_clipping)
    clip = None if cfg.train.strategy == "fsdp" else cfg.train.grad_clip or None
    # submitit owns requeueing on SLURM (it calls the job's checkpoint() on USR2)
    plugins = [SLURMEnvironment(auto_requeue=False)] if "SLURM_JOB_ID" in os.environ else None
    timer = StepTimer(out)
    trainer = L.Trainer(
        max_steps=cfg.train.steps, accelerator=cfg.train.accelerator, devices=cfg.train.devices,
        num_nodes=cfg.train.num_nodes, strategy=strategy, plugins=plugins,
        accumulate_grad_batches=cfg.train.accumulate_grad_batches,
        precision=cfg.train.precision, gradient_clip_val=clip,
        logger=logger, log_every_n_steps=cfg.train.log_every, limit_val_batches=0,
        enable_checkpointing=False, enable_model_summary=False, use_distributed_sampler=False,
        enable_progress_bar=bool(os.environ.get("HARNESS_PROGRESS", "")),
        callbacks=[StartFrom(), Validation(cfg.train.val_every),  # validate, then checkpoint
                   AtomicCheckpoint(run, cfg.train.checkpoint_every), timer,
                   progress.lightning_callback(progress.Reporter(run.progress, "train", cfg.train.steps))],
        default_root_dir=str(out), deterministic=False)
    if trainer.is_global_zero:  # one writer: the other ranks of a multi-process run share the folder
        write_status(out, "running", started=time.time())
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=run.latest_checkpoint(), weights_only=True)
    except NonFiniteLoss as e:
        write_status(out, "failed", reason=str(e), step=e.step)
        raise
    if trainer.global_step < cfg.train.steps:
        raise RuntimeError(f"training stopped at step {trainer.global_step} of {cfg.train.steps}")
    # time inside the steps of the attempt that finished (an interrupted attempt's is lost)
    if trainer.is_global_zero:
        write_status(out, "trained", step=trainer.global_step, train_compute_seconds=timer.compute)
    return out
