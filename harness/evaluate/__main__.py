"""``python -m harness.evaluate RUN_DIR [--seed S]``: evaluate a trained run, print its metrics (JSON)."""
from __future__ import annotations

import argparse
import json

from harness.errors import cli_main


@cli_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m harness.evaluate", description=__doc__)
    parser.add_argument("run_dir", help="a run directory whose status is trained or completed")
    parser.add_argument("--seed", type=int, default=None,
                        help="eval seed (default: the run's eval.seed, writing metrics.json; "
                             "others write metrics-seed<S>.json)")
    args = parser.parse_args(argv)
    from harness.evaluate.run import evaluate

    print(json.dumps(evaluate(args.run_dir, args.seed), indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
