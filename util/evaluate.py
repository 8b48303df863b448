"""CLI: ``python -m util.evaluate RUN_DIR [--split test] [--tta]`` — evaluate a run's best checkpoint.

Writes ``RUN_DIR/eval_<split>[_tta].json`` and ``RUN_DIR/predictions/<split>[_tta].json`` (OCELOT point format)
and prints a metrics table (also for the rotated/flipped copies listed in the run's ``eval_transforms``).
"""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m util.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("run", help="run folder (runs/<name>/<run-id>) or a checkpoint inside it")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--tta", action="store_true", help="D4 test-time augmentation")
    parser.add_argument("--no-transforms", action="store_true", help="skip the rotated/flipped copies")
    args = parser.parse_args(argv)

    from util.training import evaluate, format_metrics_table

    try:
        res = evaluate(args.run, split=args.split, tta=args.tta, transforms=[] if args.no_transforms else None)
    except (FileNotFoundError, RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"run folder: {res['run_dir']}  (checkpoint {res['checkpoint']}, tta={args.tta})")
    print(format_metrics_table(res, args.split))
    return 0


if __name__ == "__main__":
    sys.exit(main())
