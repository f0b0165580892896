"""Command line: write prompts, export a run's samples in GenEval's layout, score a folder.

    python -m harness.geneval prompts --out FILE [--n-per-tag 20] [--seed 0] [--split compositional]
    python -m harness.geneval export --metadata FILE --run RUN_DIR --out DIR [--images-per-prompt 4] [--seed 0]
                                     [--cfg SCALE] [--temperature T]   (default: the run's sampling)
    python -m harness.geneval score DIR
    python -m harness.geneval twins DIR   (position, colour attribution by which binding training showed)
"""
from __future__ import annotations

import argparse

from harness.data.shapes import SPLITS
from harness.errors import UserError, cli_main


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m harness.geneval", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prompts", help="write shapes-world GenEval prompts (JSON lines)")
    p.add_argument("--out", required=True)
    p.add_argument("--n-per-tag", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="compositional", choices=SPLITS)
    e = sub.add_parser("export", help="sample a trained run on every prompt, in GenEval's folder layout")
    e.add_argument("--metadata", required=True, help="GenEval evaluation_metadata.jsonl")
    e.add_argument("--run", required=True, help="run directory of a trained model")
    e.add_argument("--out", required=True)
    e.add_argument("--images-per-prompt", type=int, default=4)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--cfg", type=float, help="classifier-free guidance scale (>= 1; default: the run's)")
    e.add_argument("--temperature", type=float, help="sampling temperature (> 0; default: the run's)")
    s = sub.add_parser("score", help="score a GenEval-layout folder with the shapes detector")
    s.add_argument("dir")
    t = sub.add_parser("twins", help="position and colour attribution by which binding of the words training showed")
    t.add_argument("dir")
    return parser


@cli_main
def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "prompts":
        from harness.geneval.prompts import make_prompts, write_jsonl

        prompts = make_prompts(args.n_per_tag, seed=args.seed, split=args.split)
        print(f"wrote {len(prompts)} prompts to {write_jsonl(prompts, args.out)}")
    elif args.command == "export":
        from harness.geneval.export import export
        from harness.geneval.prompts import read_jsonl

        read_jsonl(args.metadata)  # fail on a bad prompt file before loading a model
        if args.cfg is not None and args.cfg < 1:
            raise UserError("cfg", f"must be >= 1 (1 = no guidance), got {args.cfg}")
        if args.temperature is not None and args.temperature <= 0:
            raise UserError("temperature", f"must be > 0, got {args.temperature}")
        from harness.sampling import Sampler  # imported here: only export needs a model

        sampler = Sampler.from_run(args.run)
        for field, value in (("cfg", args.cfg), ("temperature", args.temperature)):
            if value is not None:
                sampler.cfg.sample[field] = value
        out = export(args.metadata, sampler, args.out, args.images_per_prompt, args.seed, args.batch_size)
        print(f"wrote samples to {out}")
    elif args.command == "twins":
        from harness.geneval.twins import split_by_twin

        split = split_by_twin(args.dir)
        if not split:
            print(f"no position or colour-attribution prompts in {args.dir}")
        for tag, kinds in split.items():
            print(f"{tag:>10s}  " + "; ".join(f"{kind}: {c}/{n} correct, {t} drew the twin"
                                              for kind, (c, t, n) in kinds.items()))
    else:
        from harness.geneval.export import score

        summary = score(args.dir)
        for tag, value in summary.items():
            print(f"{tag:>14s}  {value:.3f}")


if __name__ == "__main__":
    main()
