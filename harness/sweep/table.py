"""The sweep's results table ``<results_dir>/<sweep>/runs.csv``: one row per (run, eval seed).

Rows are built from the run directories (the source of truth) and upserted under a file lock, then
the whole file is replaced atomically: jobs that finish at the same moment each add their rows and
a reader never sees half a file. Analysis reads this table (``status == completed`` rows).

Size and cost come from the run's ``info.json`` in two conventions (``harness.models.flops``): the
paper's ``params`` (generator + aligner) and ``train_flops`` (3 x forward x images), and what runs:
``trainable_params`` (what the optimizer updates) and ``executed_flops`` (the diffusion batch
multiplier counted, a frozen text path forward only). Runs written before the latter two existed
leave them empty. ``cpu`` is the CPU the run trained on, with the instruction set torch's kernels
used (``environment.json``): runs on different CPUs agree only within training noise (calibration
item 92), so a comparison across tables should know it.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from omegaconf import OmegaConf

from harness.faults import fault
from harness.io import atomic_write, file_lock, read_json
from harness.registry import FID_NETS, METRICS, TEXT_PROBES
from harness.run_dir import RunDir
from harness.sweep import records

# the shapes world's long tail (data.named_scenes): what the run learned of it, and the world's kinds
# and Zipf exponent, which the analysis's quantization check reads (blank without named scenes)
TAIL = ("tail_kinds_learned", "tail_loss", "named_scenes", "named_scene_zipf")
# info.json fields copied into every row
SIZE_AND_COST = ("params", "trainable_params", "train_flops", "executed_flops")
COLUMNS = ("run_key", "sweep", "token", "order", "size", *SIZE_AND_COST, "steps", "train_seed",
           *METRICS, *TEXT_PROBES, "geneval_ceiling", "geneval_in_dist", "fid_floor",
           "fid_floor_matched", *FID_NETS, "loss_floor", *TAIL, "cpu", "status", "run_dir", "seed")
TABLE = "runs.csv"


def table_path(sweep_dir: str | Path) -> Path:
    return Path(sweep_dir) / TABLE


def read(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    def write(f) -> None:
        f.write(buf.getvalue())
        fault("table.writing", path)  # the new table in the temp file, the old one in place

    atomic_write(path, write)


def upsert(path: str | Path, rows: list[dict]) -> None:
    """Insert or replace rows by (run_key, seed), keeping the others; safe under concurrency."""
    path = Path(path)
    with file_lock(path.with_suffix(".lock")):
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # of a writer killed mid-write
            stale.unlink(missing_ok=True)
        table = {(r["run_key"], str(r["seed"])): r for r in read(path)}
        for r in rows:
            table[(r["run_key"], str(r["seed"]))] = {k: "" if r.get(k) is None else str(r[k]) for k in COLUMNS}
        _write(path, sorted(table.values(), key=_order))


def _order(row: dict) -> tuple:
    seed = row["seed"]
    return (row["sweep"], row["token"], row["order"], row["size"], row["run_key"],
            int(seed) if seed.lstrip("-").isdigit() else seed)


def _last_logged(run_dir: Path) -> dict[str, float]:
    """The last value training logged of ``val/loss`` and of each text probe, by table column."""
    from harness.tracking.store import read_metrics

    keys = {"val_loss": "val/loss", **TEXT_PROBES}
    last: dict[str, dict] = {}
    for r in read_metrics(run_dir):
        for column, key in keys.items():
            if r["key"] == key and (column not in last or r["step"] >= last[column]["step"]):
                last[column] = r
    return {column: r["value"] for column, r in last.items()}


def trained_on(run: RunDir) -> str | None:
    """The CPU (and torch's instruction set) each install the run trained in, in order, ``" + "``
    joined; None for a run without ``environment.json``."""
    if not run.environment.exists():
        return None
    seen = []
    for env in read_json(run.environment):
        cpu = f"{env.get('cpu', '?')} ({env.get('cpu_capability', '?')})"
        if cpu not in seen:
            seen.append(cpu)
    return " + ".join(seen)


def run_rows(run_dir: str | Path, sweep: str, seeds: list[int], cfg=None) -> list[dict]:
    """The rows of one run, from its directory (``cfg`` stands in for a run not started yet).
    A seed's row is ``completed`` once that seed is evaluated; before, it shows the run's status
    (``trained`` for a run whose training is done but this seed is not evaluated). A ``failed`` row
    has no metrics, not even the val loss logged before the failure."""
    from harness.run_status import read_status

    run = RunDir(run_dir)
    run_dir = run.path
    if run.config.exists():
        cfg = OmegaConf.load(run.config)
    info = read_json(run.info) if run.info.exists() else {}
    status = read_status(run_dir)
    logged = _last_logged(run_dir)
    rows = []
    for seed in seeds:
        metrics = records.read_eval(run_dir, seed, cfg.eval.seed)
        state = status["status"]
        if metrics is not None:
            state = "completed"
        elif state == "completed":
            state = "trained"
        row = {"run_key": run_dir.name, "sweep": sweep, "token": cfg.model.token,
               "order": cfg.model.order, "size": cfg.model.size,
               **{k: info.get(k) for k in SIZE_AND_COST}, "steps": status.get("step", cfg.train.steps),
               "train_seed": cfg.train.seed, **{k: None for k in METRICS}, **logged,
               "status": state, "run_dir": str(run_dir), "seed": seed}
        row.update({k: v for k, v in (metrics or {}).items() if k in METRICS})
        row["geneval_ceiling"] = (metrics or {}).get("geneval_ceiling_overall")
        row["geneval_in_dist"] = (metrics or {}).get("geneval_in_dist_overall")
        row["fid_floor"] = (metrics or {}).get("fid_floor")
        row["fid_floor_matched"] = (metrics or {}).get("fid_floor_matched")
        row["loss_floor"] = (metrics or {}).get("loss_floor")
        row.update({k: (metrics or {}).get(k) for k in FID_NETS})
        row["cpu"] = trained_on(run)
        row["tail_kinds_learned"] = (metrics or {}).get("tail_kinds_learned")
        row["tail_loss"] = (metrics or {}).get("tail_loss")
        named = cfg.data.name == "shapes" and OmegaConf.select(cfg, "data.named_scenes", default=0)
        row["named_scenes"] = cfg.data.named_scenes if named else None
        row["named_scene_zipf"] = cfg.data.named_scene_zipf if named else None
        if state == "failed":  # its last val loss (before a NaN, say) is no result of the run
            row.update({k: None for k in (*METRICS, *TEXT_PROBES)})
        rows.append(row)
    return rows
