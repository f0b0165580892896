"""The callables a launcher runs (forked locally, or through submitit): stage 0, and one job per
run (train, then evaluate per seed).

``RunJob`` is a ``submitit.helpers.Checkpointable``: on preemption or a time limit (USR2) submitit
calls ``checkpoint``, which only has to requeue, because training already writes an atomic
checkpoint every ``train.checkpoint_every`` steps; the requeued job calls ``train`` again, which
resumes from that checkpoint and keeps logging to the same MLflow run (``<run_dir>/mlflow_run_id``).
A failure marks the run ``failed`` (with the reason) so the next sweep reports it instead of
silently retrying; ``--retry-failed`` runs it again.
"""
from __future__ import annotations

import os
import resource
import traceback
from pathlib import Path

import submitit
from omegaconf import DictConfig, OmegaConf

from harness import config as C
from harness.errors import one_line
from harness.faults import fault
from harness.run_dir import RunDir
from harness.sweep import records, table
from harness.sweep.plan import net_seed


def _job_env() -> submitit.JobEnvironment | None:
    try:
        env = submitit.JobEnvironment()
        return env if env.activated() else None
    except RuntimeError:
        return None


def _set_threads(threads: int) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


class Stage0Job:
    """Build one stage-0 artefact (tokenizer, text features, FID feature net)."""

    def __init__(self, kind: str, cfg: DictConfig, part: str = ""):
        self.kind, self.part = kind, part
        self.cfg = OmegaConf.to_container(cfg)

    def __call__(self) -> str:
        cfg = C.load(base=self.cfg)
        _set_threads(cfg.train.threads)
        return str(build_stage0(self.kind, cfg, self.part))


def build_stage0(kind: str, cfg: DictConfig, part: str = "") -> Path:
    """The artefact of a ``plan.Stage0Task``: ``part`` is the tokenizer's token type, or a
    feature net's ``plan.net_part`` (its seed)."""
    if kind == "tokenizer":
        from harness.tokenizers.stage0 import ensure_tokenizer

        return ensure_tokenizer(cfg, part)
    if kind == "text":
        from harness.text.cache import ensure_text_features, text_cache_dir

        ensure_text_features(cfg)
        return text_cache_dir(cfg)
    if kind == "features":
        from harness.evaluate import features, fid

        seed = net_seed(part)
        space = fid.feature_space(cfg, None if seed is None else features.seeded(seed))
        fid.ensure_reference(cfg, space)
        return space.directory
    raise ValueError(f"unknown stage-0 kind {kind!r}")


class RunJob(submitit.helpers.Checkpointable):
    """Train the run of ``cfg`` (or resume it), evaluate each seed not yet evaluated, and record
    its rows in the sweep's table. Only the global rank 0 of a multi-task job evaluates."""

    def __init__(self, cfg: DictConfig, seeds: list[int], sweep: str, table_path: str | Path):
        self.cfg = OmegaConf.to_container(cfg)
        self.run_dir = str(RunDir.of(cfg).path)
        self.seeds, self.sweep, self.table_path = list(seeds), sweep, str(table_path)
        self.preempted = False

    def __call__(self) -> dict:
        self.preempted = False
        out = Path(self.run_dir)
        env = _job_env()
        rank = env.global_rank if env else 0
        try:  # the code may have changed since the sweep planned the run: fail it, with the reason
            cfg = C.load(base=self.cfg)
        except Exception as e:
            if rank == 0:
                self._fail(out, e)
            raise
        _set_threads(cfg.train.threads)
        if rank != 0:
            from harness.train.run import train

            train(cfg)
            return {}
        with records.run_lock(out):
            evaluated = {seed: records.read_eval(out, seed, cfg.eval.seed) for seed in self.seeds}
            if records.is_closed(out) and None not in evaluated.values():
                # another job (a second driver's) closed the run while this one waited for the
                # lock: reopening it would show it running to that driver, which is done with it
                return {"run_dir": str(out), "metrics": evaluated}
            if env is not None and type(env).name() == "slurm":
                records.link_logs(out, [env.paths.stdout, env.paths.stderr])
            records.log_attempt(out, "start", job_id=env.job_id if env else None,
                                restart=os.environ.get("SLURM_RESTART_COUNT"),
                                resume_step=RunDir(out).checkpoint_step())
            try:
                result = self._work(cfg, out)
            except Exception as e:
                if not self.preempted:
                    self._fail(out, e)
                raise
            # closing: each step below is idempotent, and the run counts as completed only once the
            # last is done, so a stop anywhere in between leaves it for the next sweep to close
            fault("run.closing", out)
            from harness.tracking import store

            store.catch_up(out, cfg.tracking.uri)  # what a stopped attempt left unmirrored
            _terminate_mlflow_run(out, cfg.tracking.uri, "FINISHED")
            table.upsert(self.table_path, table.run_rows(out, self.sweep, self.seeds))
            records.log_attempt(out, "completed")
            return result

    def _work(self, cfg: DictConfig, out: Path) -> dict:
        from harness.evaluate.run import evaluate
        from harness.train.run import train

        from harness.run_status import read_status, write_status

        if read_status(out)["status"] not in ("trained", "completed"):
            train(cfg)  # or resume
            records.log_attempt(out, "trained", step=read_status(out).get("step"))
        results = {}
        for seed in self.seeds:
            metrics = records.read_eval(out, seed, cfg.eval.seed)
            results[seed] = metrics if metrics is not None else evaluate(out, seed=seed)
        # this process's peak resident memory (train + evaluate), for make bench
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        status = read_status(out)
        # evaluated but stopped before the status was set: the metrics file is the commit point
        done = records.read_eval(out, cfg.eval.seed, cfg.eval.seed) is not None
        write_status(out, "completed" if done else status["status"],
                     peak_rss_mb=max(peak_mb, status.get("peak_rss_mb", 0.0)))
        return {"run_dir": str(out), "metrics": results}

    def _fail(self, out: Path, error: Exception) -> None:
        from harness.run_status import write_status

        reason = one_line(error, typed=True)
        write_status(out, "failed", reason=reason)
        records.log_attempt(out, "failed", reason=reason, traceback=traceback.format_exc())
        _terminate_mlflow_run(out, self.cfg["tracking"]["uri"], "FAILED")
        table.upsert(self.table_path, table.run_rows(out, self.sweep, self.seeds,
                                                     OmegaConf.create(self.cfg)))

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        """Preempted or out of time: the training checkpoints itself, so just requeue."""
        self.preempted = True
        records.log_attempt(self.run_dir, "preempted", checkpoint_step=RunDir(self.run_dir).checkpoint_step())
        return super().checkpoint(*args, **kwargs)


def _terminate_mlflow_run(run_dir: Path, uri: str | None, state: str) -> None:
    """Close the run's MLflow run (best effort: the run dir stays the source of truth, and
    ``harness.sync`` closes it later)."""
    from harness.tracking import store

    try:
        store.close_run(run_dir, state, uri)
    except Exception as e:
        store.mark_pending(run_dir, f"run status not set: {one_line(e)}")
