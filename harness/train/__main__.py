"""``python -m harness.train [--config FILE ...] key=value ...``: train one run."""
from __future__ import annotations

import argparse

from harness import config
from harness.errors import cli_main


@cli_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m harness.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="config fields (key = default: bounds; what):\n"
                                     + config.describe_fields())
    parser.add_argument("--config", action="append", default=[], help="YAML override file(s)")
    parser.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. model.token=discrete")
    args = parser.parse_args(argv)
    cfg = config.load(args.overrides, args.config)
    from lightning.pytorch.utilities import rank_zero_only

    from harness.train.run import train

    run = train(cfg)
    # one line, from rank 0: the other ranks of a multi-process run train the same run, and their
    # prints would interleave with its own on a shared stdout
    if rank_zero_only.rank == 0:
        print(run)


if __name__ == "__main__":
    main()
