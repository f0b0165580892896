"""``RunDir``: every path of one run, in one place. A run lives in ``<results_dir>/runs/<run_key>/``
and that folder holds everything needed to resume, evaluate, report or re-mirror it:

    config.yaml              the resolved config (``harness.config.load_saved`` reads it back)
    stage0.json, info.json   the tokenizer it trained on; its size and cost (params, FLOPs)
    environment.json         the software versions it trained with (``harness.environment``)
    status.json              queued / running / trained / completed / failed, and when
    checkpoints/             last.ckpt, prev.ckpt (the one before, if last is unreadable)
    metrics.jsonl            every metric logged, in order (MLflow is a mirror of it)
    params.json, mlflow_artifacts.json, mlflow_run_id, mlflow_pending   the MLflow mirror's state
    metrics.json             the evaluation of the run's own eval seed; metrics-seed<s>.json others
    fid/generated[-seed<s>]/, geneval[-seed<s>]/, samples/   what evaluation generated
    geneval-in-dist[-seed<s>]/   GenEval on prompts of seen combinations (``eval.geneval_in_distribution``)
    guidance/                FID by guidance scale (and temperature), when asked for
                             (``python -m harness.evaluate.guidance``)
    occupancy.json           object probability per cell on counting scenes, when asked for
                             (``python -m harness.evaluate.occupancy``)
    binding.json             colour binding at the object's cell on colour captions, when asked
                             for (``python -m harness.evaluate.binding``)
    loss_floor.json          the validation loss of a generator that knows the world, when asked
                             for (``python -m harness.evaluate.loss_floor``: runs evaluated before
                             metrics.json carried ``loss_floor``)
    jobs/                    the sweep jobs' records and logs (``harness.sweep.records``)

Modules ask a ``RunDir`` for a path; none joins run paths by hand. Torch-free: the sweep driver
and the results table use it without importing the training stack.
"""
from __future__ import annotations

import warnings
from pathlib import Path

from omegaconf import DictConfig

RUNS = "runs"


class RunDir:
    """The folder of one run (it need not exist yet)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def of(cls, cfg: DictConfig) -> "RunDir":
        """The run directory of a resolved config: ``<results_dir>/runs/<run_key(cfg)>``."""
        from harness.config import run_key

        return cls(Path(cfg.results_dir) / RUNS / run_key(cfg))

    @staticmethod
    def all_in(results_dir: str | Path) -> list["RunDir"]:
        """Every run directory under ``results_dir``, by name."""
        runs = Path(results_dir) / RUNS
        return [RunDir(p) for p in sorted(runs.iterdir()) if p.is_dir()] if runs.is_dir() else []

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def name(self) -> str:
        """The run key."""
        return self.path.name

    # ---- what the run is --------------------------------------------------------------------
    config = property(lambda self: self.path / "config.yaml")
    stage0 = property(lambda self: self.path / "stage0.json")
    info = property(lambda self: self.path / "info.json")
    environment = property(lambda self: self.path / "environment.json")
    status = property(lambda self: self.path / "status.json")
    progress = property(lambda self: self.path / "progress.json")  # harness.progress: live step/total

    # ---- training ---------------------------------------------------------------------------
    checkpoints = property(lambda self: self.path / "checkpoints")
    last_checkpoint = property(lambda self: self.checkpoints / "last.ckpt")
    prev_checkpoint = property(lambda self: self.checkpoints / "prev.ckpt")

    def latest_checkpoint(self, warn: bool = True) -> Path | None:
        """The newest checkpoint that loads (weights only) and holds a state dict: last.ckpt, or
        prev.ckpt when last is missing or unreadable (with a warning); None without one."""
        for path in (self.last_checkpoint, self.prev_checkpoint):
            if self._loads(path, warn):
                return path
        return None

    def checkpoint_step(self) -> int | None:
        """The global step of the newest readable checkpoint (memory-mapped: cheap even for
        billions of parameters); None without one."""
        import torch

        for path in (self.last_checkpoint, self.prev_checkpoint):
            try:
                return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"])
            except Exception:
                continue
        return None

    @staticmethod
    def _loads(path: Path, warn: bool) -> bool:
        import torch

        from harness.errors import one_line

        if not path.exists():
            return False
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            return "state_dict" in ckpt and "global_step" in ckpt
        except Exception as e:
            if warn:
                warnings.warn(f"checkpoint {path} is unreadable ({one_line(e, typed=True, limit=160)}); "
                              "falling back to an older one")
            return False

    # ---- metrics and their MLflow mirror ----------------------------------------------------
    metrics_log = property(lambda self: self.path / "metrics.jsonl")
    params = property(lambda self: self.path / "params.json")
    artifacts = property(lambda self: self.path / "mlflow_artifacts.json")
    mlflow_run_id = property(lambda self: self.path / "mlflow_run_id")
    mlflow_pending = property(lambda self: self.path / "mlflow_pending")

    # ---- evaluation -------------------------------------------------------------------------
    @staticmethod
    def _suffix(seed: int, default_seed: int) -> str:
        return "" if seed == default_seed else f"-seed{seed}"

    def eval_metrics(self, seed: int, default_seed: int) -> Path:
        """``metrics.json`` for the run's own ``eval.seed``, ``metrics-seed<s>.json`` for others."""
        return self.path / ("metrics.json" if seed == default_seed else f"metrics-seed{seed}.json")

    def fid_generated(self, seed: int, default_seed: int) -> Path:
        return self.path / "fid" / f"generated{self._suffix(seed, default_seed)}"

    def geneval(self, seed: int, default_seed: int) -> Path:
        return self.path / f"geneval{self._suffix(seed, default_seed)}"

    def geneval_in_dist(self, seed: int, default_seed: int) -> Path:
        """GenEval on in-distribution prompts (``eval.geneval_in_distribution``)."""
        return self.path / f"geneval-in-dist{self._suffix(seed, default_seed)}"

    samples = property(lambda self: self.path / "samples")

    @staticmethod
    def _temperature(temperature: float | None) -> str:
        return "" if temperature is None else f"-t{temperature:g}"

    def guidance_images(self, scale: float, seed: int, default_seed: int,
                        temperature: float | None = None) -> Path:
        """FID samples at guidance scale ``scale`` (``harness.evaluate.guidance``), at the run's
        sampling temperature unless ``temperature`` is given."""
        return (self.path / "guidance"
                / f"cfg{scale:g}{self._temperature(temperature)}{self._suffix(seed, default_seed)}")

    def guidance_fid(self, seed: int, default_seed: int, temperature: float | None = None) -> Path:
        """FID by guidance scale (``harness.evaluate.guidance``), at the run's temperature
        (``fid.json``, what the analysis reads) or at ``temperature`` (``fid-t<T>.json``)."""
        return (self.path / "guidance"
                / f"fid{self._temperature(temperature)}{self._suffix(seed, default_seed)}.json")

    occupancy = property(lambda self: self.path / "occupancy.json")  # harness.evaluate.occupancy
    binding = property(lambda self: self.path / "binding.json")  # harness.evaluate.binding
    loss_floor = property(lambda self: self.path / "loss_floor.json")  # harness.evaluate.loss_floor

    # ---- sweep jobs (harness.sweep.records) -------------------------------------------------
    jobs = property(lambda self: self.path / "jobs")
    job_record = property(lambda self: self.jobs / "job.json")  # the latest submission
    run_lock = property(lambda self: self.jobs / "run.lock")  # held by the job working on the run
    attempts = property(lambda self: self.jobs / "attempts.jsonl")  # one line per start, stop, end
