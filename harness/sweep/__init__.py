"""Sweeps: a grid of runs (token x order x size, eval seeds) launched, resumed and tabulated.

    python -m harness.sweep --preset smoke --launcher debug     # or: make sweep PRESET=smoke

The flow, one module per step:
  grid      the sweep file (``sweeps/<preset>.yaml``): schema, validation, --size/--variants
  plan      runs (one resolved RunConfig each, named by ``run_key``) and the stage 0 they need
  estimate  parameters and FLOPs before running; GPU memory and GPU-hours for the paper ladder
  dry_run   the ``--dry-run`` plan
  jobs      what submitit runs: stage 0, and one checkpointable job per run (train, evaluate)
  launch    debug / local (capped) / slurm (arrays, afterok on stage 0) launchers
  records   what a job leaves in ``<run_dir>/jobs/``: submission, lock, attempts, logs
  status    each run's state, the live progress line, ``--status``
  table     ``<results_dir>/<sweep>/runs.csv``, one row per (run, eval seed)
  parent    the MLflow experiment and parent run of the sweep
"""
