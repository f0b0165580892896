"""``python -m harness.sweep``: plan, launch, resume and report a sweep.

    python -m harness.sweep --preset cpu --size all                 # the default study, locally
    python -m harness.sweep --preset smoke --launcher debug          # whole pipeline, in-process
    python -m harness.sweep --preset paper --size 166M,369M --dry-run  # params, FLOPs, GPU-hours
    python -m harness.sweep --preset cpu --status                   # where every run stands
    python -m harness.sweep --file my.yaml --variants continuous-random train.steps=500

Re-running a command skips completed runs, resumes interrupted ones from their checkpoints and
reports failed ones (``--retry-failed`` runs them again). Exit status: 0 when every selected run
is completed, 1 when some failed or are left, 2 on bad input.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from harness.errors import UserError, check_choice, cli_main, one_line
from harness.registry import VARIANTS
from harness.sweep import grid


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", help=f"a sweep in sweeps/ ({', '.join(grid.presets())})")
    src.add_argument("--file", help="a sweep YAML file")
    p.add_argument("--size", default="all", help="all, or sizes of the ladder: xs,s")
    p.add_argument("--variants", help=f"all, or some of: {','.join(VARIANTS)}")
    p.add_argument("--launcher", help=f"one of {', '.join(grid.LAUNCHERS)} (default: the sweep's)")
    p.add_argument("--dry-run", action="store_true", help="print the plan; run nothing")
    p.add_argument("--status", action="store_true", help="print where each run stands")
    p.add_argument("--json", action="store_true", help="machine-readable --dry-run/--status")
    p.add_argument("--retry-failed", action="store_true", help="run failed runs again")
    p.add_argument("--no-wait", action="store_true", help="slurm: submit and return")
    p.add_argument("--progress-every", type=float, help="seconds between progress lines")
    p.add_argument("overrides", nargs="*", help="key=value overrides passed to every run")
    return p


def _threads(spec, launcher: str, sizes: list[str]) -> dict[str, int | None]:
    """``train.threads`` per size: the local slot's share, or the SLURM job's CPUs."""
    if launcher == "local":
        return {s: spec.launcher.local.threads_per_job for s in sizes}
    if launcher == "slurm":
        from harness.sweep.launch import resources

        slurm = spec.launcher.slurm
        return {s: resources(slurm, slurm.per_size.get(s))["cpus_per_task"] for s in sizes}
    return {s: None for s in sizes}


def _print(obj: object, as_json: bool, text: str) -> None:
    print(json.dumps(obj, indent=2, default=str) if as_json else text)


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_intermixed_args(argv)
    for item in args.overrides:
        if "=" not in item:
            raise UserError(item, "override must look like key=value (e.g. train.steps=100)")
    path = Path(args.file) if args.file else grid.preset_path(args.preset or "cpu")
    spec = grid.load_sweep(path)
    sizes, variants = grid.select(spec, args.size, args.variants)
    launcher = args.launcher or spec.launcher.default
    check_choice("--launcher", launcher, grid.LAUNCHERS)

    from harness.sweep import dry_run, plan, status

    threads = _threads(spec, launcher, sizes)
    runs = [r for s in sizes for r in plan.build_runs(spec, [s], variants, args.overrides, threads[s])]
    sweep_dir = plan.sweep_dir(runs, spec.name)
    states = status.assess_all(runs)
    if args.status:
        _print(status.as_dicts(states), args.json, status.report(states))
        return 0
    if args.dry_run:
        gpu = runs[0].cfg.model.ladder == "paper"
        p = dry_run.plan(spec.name, launcher, runs, states, plan.stage0_tasks(runs), gpu)
        _print(p, args.json, dry_run.render(p))
        return 0
    return launch(spec, path, launcher, runs, states, sweep_dir, args)


def _record(table_path: Path, name: str, runs) -> None:
    from harness.sweep import table

    table.upsert(table_path, [row for r in runs for row in table.run_rows(r.dir, name, r.seeds, r.cfg)])


def launch(spec, path: Path, launcher: str, runs, states, sweep_dir: Path, args) -> int:
    """Create the MLflow parent, write the table, run stage 0 and the runs left, report."""
    from harness.sweep import launch as launchers
    from harness.sweep import parent, plan, status, table
    from harness.sweep.live import View

    # Ctrl-C (or kill -INT) stops the jobs and leaves the runs resumable, also for a driver that a
    # non-interactive shell started in the background: such a shell starts it with SIGINT ignored,
    # which Python, its job controllers and their jobs would inherit and keep
    signal.signal(signal.SIGINT, signal.default_int_handler)

    by_key = {s.key: s for s in states}
    failed = [r for r in runs if by_key[r.key].state == "failed"]
    busy = [r for r in runs if by_key[r.key].state in ("running", "queued")]
    todo = [r for r in runs if by_key[r.key].state == "pending" or (args.retry_failed and r in failed)]
    if launcher == "local" and todo:
        from harness.sweep import forkserver

        forkserver.context()  # its imports (~11 s) overlap the driver's MLflow set-up below
    print(f"sweep {spec.name}: {len(runs)} runs: {sum(s.state == 'completed' for s in states)} "
          f"completed, {len(todo)} to run, {len(busy)} already running or queued, "
          f"{len(failed)} failed{' (retrying)' if args.retry_failed else ''}")
    for r in failed:
        if not args.retry_failed:
            print(f"  failed: {r.key} ({by_key[r.key].detail}); --retry-failed runs it again")
    uri = runs[0].cfg.tracking.uri
    table_path = table.table_path(sweep_dir)
    try:
        parent_id = parent.ensure_parent(spec.name, sweep_dir, uri, plan.results_dir(runs),
                                         {"sweep": spec.name, "file": str(path),
                                          "sizes": ",".join(dict.fromkeys(r.size for r in runs)),
                                          "variants": ",".join(dict.fromkeys(r.variant for r in runs)),
                                          "seeds": ",".join(map(str, spec.seeds)), "launcher": launcher,
                                          "overrides": " ".join(args.overrides)})
    except Exception as e:  # MLflow is a mirror: the sweep goes on, python -m harness.sync later
        print(f"warning: MLflow at {uri} unavailable ({one_line(e, limit=200)}); runs log to "
              "their directories; send it later with python -m harness.sync", file=sys.stderr)
        parent_id = None
    for r in runs:
        r.cfg.tracking.parent_run_id = parent_id
    _record(table_path, spec.name, runs)
    stage0 = [t for t in plan.stage0_tasks(todo) if not t.done]
    slots = spec.launcher.local.max_parallel if launcher == "local" else None
    view = View(spec.name, runs, todo, stage0, args.progress_every or spec.launcher.progress_every_s,
                slots=slots)
    sweep = launchers.Sweep(spec.name, spec, runs, todo, stage0, table_path, sweep_dir, view)
    try:
        if not todo:
            pass
        elif launcher == "debug":
            launchers.run_debug(sweep)
        elif launcher == "local":
            launchers.run_local(sweep)
        else:
            jobs = launchers.submit_slurm(sweep)
            if args.no_wait:
                print(f"submitted; follow with: python -m harness.sweep --file {path} --status")
                return 0
            launchers.wait_slurm(sweep, jobs)
    except launchers.Stage0Failed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted: {'the jobs go on in the queue' if launcher == 'slurm' else 'jobs stopped'}; "
              "run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        view.close()
    states = status.assess_all(runs)
    _record(table_path, spec.name, runs)
    if parent_id is not None:
        try:
            parent.finish_parent(parent_id, uri, status.counts(states), table_path)
        except Exception as e:
            print(f"warning: MLflow parent run not updated ({one_line(e, limit=200)})", file=sys.stderr)
    print(status.report(states))
    print(f"table: {table_path}")
    return 0 if all(s.state == "completed" for s in states) else 1


if __name__ == "__main__":
    sys.exit(main())
