"""CLI: ``python -m util.train [CONFIG] [key=value ...]`` — train (or resume) one run and print its metrics.

Examples::

    python -m util.train configs/default.yaml
    python -m util.train configs/default.yaml learning_rate=1e-3 data.crop_size=128 model.kwargs.width=8
    python -m util.train configs/grid_example.yaml --grid-index 3     # one point of a grid (Slurm array)
    python -m util.train configs/grid_example.yaml --list-grid

Rerunning the same command resumes the run from its ``last`` checkpoint (``resume=auto``). Exit codes: 0 done,
1 bad configuration/data, 3 non-finite loss, 143 stopped by SIGTERM after saving ``last.ckpt``.
"""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m util.train", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("items", nargs="*", help="a YAML config path (optional, first) and key=value overrides")
    parser.add_argument("--grid-index", type=int, default=None, help="run this point of the config's grid")
    parser.add_argument("--list-grid", action="store_true", help="print the grid points and exit")
    args = parser.parse_args(argv)

    from util.config import ConfigError, expand_grid, grid_point, load_config

    items = list(args.items)
    config_path = items.pop(0) if items and "=" not in items[0] else None
    try:
        cfg = load_config(config_path, items)
        if args.list_grid:
            for i, p in enumerate(expand_grid(cfg)):
                print(f"{i}\t{p.run_id or ''}")
            return 0
        if cfg.grid:
            if args.grid_index is None:
                print(f"{config_path} defines a grid of {len(expand_grid(cfg))} points; pass --grid-index N "
                      f"(0-based) or --list-grid", file=sys.stderr)
                return 1
            cfg = grid_point(cfg, args.grid_index)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    from util.training import NonFiniteLossError, format_metrics_table, resolve_run_dir, train

    print(f"run folder: {resolve_run_dir(cfg)}", flush=True)
    try:
        result = train(cfg)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if result.stopped_by_signal:
        print(f"stopped by signal; last checkpoint: {result.last_checkpoint}. Rerun the same command to resume.",
              flush=True)
        return 143
    if not result.metrics:  # a DDP worker process
        return 0
    print(f"\nrun folder: {result.run_dir}")
    print(format_metrics_table(result.metrics, "test"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
