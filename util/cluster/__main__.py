"""``python -m util.cluster <command>``: the commands train.sh and jupyter_tunnel.sh call (see :mod:`util.cluster`).

Exit codes: ``plan`` 2 for a config/override it cannot use; ``run`` the job's status (0 done or requeued, 143
stopped by a signal, else the command's status); ``wait-jupyter`` 1 when the server does not answer; 2 for
bad arguments.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m util.cluster", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("plan", help="train.sh's run plan as one JSON line: run folder and command")
    p.add_argument("config", help="the YAML config")
    p.add_argument("overrides", nargs="*", help="key=value overrides")

    p = sub.add_parser("run", help="run a plan as train.sh's job (pre-emption, retries, requeue)")
    p.add_argument("plan", help="the JSON line `plan` printed")
    p.add_argument("--dry-run", action="store_true", help="print what would run and exit")
    p.add_argument("--started", type=float, default=None, metavar="EPOCH_S",
                   help="when the job started (seconds since the epoch), for the time it reports")

    sub.add_parser("free-port", help="print a TCP port nobody listens on")
    sub.add_parser("token", help="print a fresh random token")

    p = sub.add_parser("wait-jupyter", help="wait until Jupyter answers with $JUPYTER_TOKEN "
                                            "(at most $JUPYTER_START_TIMEOUT s, default 300)")
    p.add_argument("port", type=int)
    p.add_argument("pid", type=int, help="the Jupyter process (waiting stops when it ends)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in ("plan", "run"):
        from util.cluster.plan import PROG, Plan, PlanError, make_plan

        try:
            if args.command == "plan":
                print(make_plan(args.config, args.overrides, os.environ, Path.cwd()).to_json())
                return 0
            plan = Plan.from_json(args.plan)
        except PlanError as e:
            print(f"{PROG}: {e}", file=sys.stderr)
            return 2
        from util.cluster.supervise import run_job

        return run_job(plan, dry_run=args.dry_run, started=args.started)

    from util.cluster import jupyter

    if args.command == "free-port":
        print(jupyter.free_port())
    elif args.command == "token":
        print(jupyter.new_token())
    else:  # wait-jupyter
        token = os.environ.get("JUPYTER_TOKEN", "")
        try:
            if not token:
                raise jupyter.JupyterError("JUPYTER_TOKEN is not set")
            jupyter.wait_for_jupyter(args.port, args.pid, token, jupyter.start_timeout(os.environ))
        except jupyter.JupyterError as e:
            print(f"{jupyter.PROG}: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
