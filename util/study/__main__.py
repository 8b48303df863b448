"""CLI: ``python -m util.study plan|run|report STUDY.yaml [options]`` (schema in :mod:`util.study`).

Examples::

    python -m util.study plan configs/study/brca_cpu.yaml --jobs 2          # points, cost, estimated hours
    python -m util.study run configs/study/brca_cpu.yaml --jobs 2 --max-minutes 600
    python -m util.study run configs/study/brca_gpu.yaml --stage lr --shard $SLURM_ARRAY_TASK_ID/10
    python -m util.study report configs/study/brca_cpu.yaml
    python -m util.study reproduce configs/study/brca_cpu.yaml lr-plain_none-0.001 plain_none_pe-f0.25-s1
    python -m util.study compare configs/study/brca_cpu.yaml configs/study/brca_cpu_portable.yaml

Exit codes: 0 done, 1 a point failed or a bad study file, 143 stopped by SIGTERM/SIGINT (rerun to resume).
"""
from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m util.study", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (("plan", "list the points with parameters, MACs/px and estimated time"),
                       ("run", "train the unfinished points"), ("report", "tables, contrasts and figures"),
                       ("reproduce", "train finished points again from scratch; compare test mF1 with their rows"),
                       ("compare", "the points finished in this study and another: test mF1 differences")):
        s = sub.add_parser(name, help=text)
        s.add_argument("study", help="study YAML file")
        if name in ("plan", "run"):
            s.add_argument("--jobs", type=int, default=1, help="concurrent training subprocesses (default 1)")
            s.add_argument("--threads", type=int, default=None,
                           help="CPU threads to split between the jobs (default: the cores this process may use)")
            s.add_argument("--shard", default=None, help="i/n: only points with index k mod n == i")
        if name == "plan":
            s.add_argument("--steps", type=int, default=3, help="timed training steps per model (default 3)")
            s.add_argument("--no-timing", action="store_true", help="skip the timing (no time estimate)")
            s.add_argument("--save-timing", action="store_true",
                           help="write the per-arm s/step to results/<study>/timing.csv (run it on an idle "
                                "machine: the report compares arms by it)")
        if name == "reproduce":
            s.add_argument("points", nargs="+", help="point ids (see plan), e.g. lr-plain_none-0.001")
            s.add_argument("--tolerance", type=float, default=0.005, help="largest |test mF1 difference| (0.005)")
            s.add_argument("--jobs", type=int, default=1, help="points trained at once (default 1)")
            s.add_argument("--scratch", default=None, help="folder for the reruns (default runs/<study>-reproduce)")
        if name == "compare":
            s.add_argument("other", help="the second study YAML file (d = its test mF1 − the first's)")
            s.add_argument("--out", default=None,
                           help="per-point CSV (default results/<second study>/compare_<first study>.csv); the printed "
                                "summary goes beside it as .txt")
        if name == "report":
            s.add_argument("--readme", default=None,
                           help="also rewrite the study's results block in this Markdown file (between the lines "
                                "<!-- results:STUDY --> and <!-- /results:STUDY -->), e.g. README.md")
        if name == "run":
            s.add_argument("--max-minutes", type=float, default=None,
                           help="start no new point after this many minutes (running ones finish)")
            s.add_argument("--stage", choices=("all", "lr", "main"), default="all",
                           help="only the learning-rate search (lr) or only the grid (main); default all")
            s.add_argument("--finish-by", type=float, default=None,
                           help="start a point only if its estimated run time (from its arm's finished rows) ends "
                                "within this many minutes; shorter points fill the end (no half-run points)")
            s.add_argument("--numerics", default=None, metavar="MODE",
                           help="train under this CPU numerics mode (util.numerics: native, avx2, compatible, "
                                "portable, compatible_exact); default: the study file's numerics, else the numerics "
                                "variables of this shell. Each row records the settings it was trained with")
            s.add_argument("--order", choices=("grid", "seed"), default="grid",
                           help="start order: grid (arm, fraction, seed) or seed (every arm at a seed before the "
                                "next seed, largest fraction first); results do not depend on it")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    from util.config import ConfigError
    from util.study.points import parse_shard
    from util.study.spec import load_study

    try:
        study = load_study(args.study)
        shard = parse_shard(getattr(args, "shard", None))
        if args.command == "plan":
            return _plan(study, args, shard, argv)
        if args.command == "run":
            from util.study.runner import run_study

            return run_study(study, jobs=args.jobs, threads=args.threads, shard=shard,
                             max_minutes=args.max_minutes, stage=args.stage,
                             order=args.order, finish_by=args.finish_by, numerics=args.numerics)
        if args.command == "reproduce":
            from util.study.reproduce import reproduce

            return reproduce(study, args.points, tolerance=args.tolerance, jobs=args.jobs, scratch=args.scratch)
        if args.command == "compare":
            return _compare(study, load_study(args.other), args.out)
        from util.study.report import report

        report(study)
        if args.readme:
            from util.study.answer import update_readme

            changed = update_readme(args.readme, study)
            print(f"{args.readme}: results block {'rewritten' if changed else 'unchanged'}")
        return 0
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def _plan(study, args, shard, argv: list[str]) -> int:
    if study.numerics and not args.no_timing:
        import os
        import subprocess

        from util.numerics import apply_from_env, in_mode, mode_env
        from util.training.runs import NUMERICS_VARIABLES

        if not in_mode(os.environ, study.numerics, NUMERICS_VARIABLES):
            # kernels pick their code paths when the libraries load: time the arms in a process started under the
            # study's mode, as its trainings are
            env = mode_env(os.environ, study.numerics, NUMERICS_VARIABLES)
            return subprocess.run([sys.executable, "-m", "util.study", *argv], env=env).returncode
        apply_from_env()
    import torch

    from util.study.planning import plan_rows, plan_text, plan_totals
    from util.study.runner import default_threads

    rows = plan_rows(study, jobs=args.jobs, threads=args.threads, steps=args.steps, timing=not args.no_timing,
                     shard=shard)
    per_run = max(1, (args.threads or default_threads()) // max(1, args.jobs))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(plan_text(study, rows, plan_totals(rows, args.jobs, per_run, device)))
    if args.save_timing and not args.no_timing:
        from util.study.store import write_timing

        print(f"wrote {write_timing(study, rows)}")
    return 0


def _compare(a, b, out: str | None) -> int:
    from pathlib import Path

    from util.study import compare
    from util.study.points import choose_lr
    from util.study.store import read_rows, runs_csv

    path = Path(out) if out else b.study_results / f"compare_{a.name}.csv"
    summary = path.with_suffix(".txt")  # what is printed, kept beside the table for the README to cite
    if summary == path:
        raise ValueError(f"--out {out}: expected a table path such as compare.csv; the printed summary goes to the "
                         f"same name with .txt, which would overwrite the table")
    rows_a, rows_b = read_rows(runs_csv(a)), read_rows(runs_csv(b))
    table = compare.compare_rows(rows_a, rows_b)
    text = "\n".join([
        compare.compare_text(a.name, b.name, table, compare.seed_std(rows_a)),
        compare.lr_choices_text(a.name, b.name, {arm.label: choose_lr(a, arm.label, rows_a) for arm in a.arms},
                                {arm.label: choose_lr(b, arm.label, rows_b) for arm in b.arms}),
        compare.contrasts_text(a.name, b.name, compare.read_contrasts(a.study_results / "contrasts.csv"),
                               compare.read_contrasts(b.study_results / "contrasts.csv"))]) + "\n"
    print(text, end="")
    compare.write_table(path, table)
    summary.write_text(text)
    print(f"wrote {path} and {summary.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
