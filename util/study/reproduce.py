"""``reproduce``: train finished points again from scratch and compare their test mF1 with their rows.

    python -m util.study reproduce configs/study/brca_cpu.yaml lr-plain_none-0.001 plain_none_pe-f0.25-s1

Each named point is trained afresh with its own configuration (the one its row's ``config_hash`` records) in
a scratch folder (default ``runs/<study>-reproduce/``, emptied first for those points), as a ``python -m
util.train`` subprocess with the thread count its row records (CPU rows also on the CPU here); ``--jobs N``
runs N at once. It prints the committed and the rerun test mF1 with their difference and returns 0 when every
difference is within ``--tolerance`` (default 0.005), else 1. Under the table it names what differs between
the environment the committed row recorded (``points/<point>.json``) and the rerun's (``env.json``): CPU model,
kernel instruction set, package versions, numerics settings (:func:`store.environment_differences`). Training
is bit-identical only where none differs. A row that recorded its numerics settings (the variables of a
:mod:`util.numerics` mode, e.g. ``run --numerics portable``) is rerun under exactly those. The committed files
are not touched.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Callable

from util.study import store
from util.study.points import Point, expand_points
from util.study.runner import spawn_training
from util.study.spec import Study


@dataclass
class Rerun:
    """One point being trained again: its point, row, configuration file and process."""

    point: Point
    committed: float
    threads: int
    cfg_path: Path
    run_dir: Path
    proc: subprocess.Popen | None = None
    log: IO[str] | None = None
    rerun: float | None = None
    numerics: dict[str, str] | None = None  #: the row's recorded numerics settings (None: not recorded)


def select_points(study: Study, ids: list[str]) -> tuple[list[Point], dict[str, dict[str, str]]]:
    """The finished points named by ``ids`` (each must have a row whose configuration is the point's)."""
    rows = store.read_rows(store.runs_csv(study))
    points = {p.id: p for p in expand_points(study, rows)}
    chosen = []
    for pid in ids:
        p = points.get(pid)
        if p is None:
            raise ValueError(f"{pid!r} is not a point of study {study.name!r} (see `plan`)")
        row = rows.get(pid)
        if p.config is None or row is None or row.get("config_hash") != p.config.config_hash():
            raise ValueError(f"{pid!r} has no finished row in {store.runs_csv(study)} for its configuration")
        chosen.append(p)
    return chosen, rows


def recorded_numerics(record: dict | None) -> dict[str, str] | None:
    """The numerics variables a row's training ran with (``points/<point>.json`` environment), so that the rerun
    sets exactly those; None when the row did not record them (the rerun then inherits this shell's)."""
    env = (record or {}).get("environment") or {}
    settings = env.get("numerics_settings")
    return dict(settings) if isinstance(settings, dict) else None


def _prepare(p: Point, row: dict[str, str], scratch: Path) -> Rerun:
    overrides = [f"runs_dir={scratch}"]
    if row.get("device", "cpu") == "cpu":
        overrides.append("accelerator=cpu")
    cfg = p.config.replace(overrides)  # type: ignore[union-attr]
    run_dir = store.run_dir(replace(p, config=cfg))
    if run_dir.exists():
        shutil.rmtree(run_dir)
    cfg_path = scratch / "configs" / f"{p.id}.yaml"
    cfg.save(cfg_path)
    threads = int(float(row.get("threads") or 1))
    return Rerun(p, float(row["test_mF1"]), threads, cfg_path, run_dir)


def reproduce(study: Study, ids: list[str], tolerance: float = 0.005, jobs: int = 1, scratch: Path | None = None,
              echo: Callable[[str], None] = print) -> int:
    """Train ``ids`` again from scratch and compare (see the module docstring); 0 when all are within tolerance."""
    points, rows = select_points(study, ids)
    scratch = Path(scratch or Path(study.runs_dir) / f"{study.name}-reproduce")
    log_dir = scratch / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    todo = [_prepare(p, rows[p.id], scratch) for p in points]
    records = store.read_point_records(study)
    for job in todo:
        job.numerics = recorded_numerics(records.get(job.point.id))
        if job.numerics:
            echo(f"{job.point.id}: trained with {' '.join(f'{k}={v}' for k, v in sorted(job.numerics.items()))}; "
                 f"the rerun uses the same")
    running: list[Rerun] = []
    done: list[Rerun] = []
    failed = []
    while todo or running:
        while todo and len(running) < max(1, jobs):
            job = todo.pop(0)
            job.proc, job.log = spawn_training(job.cfg_path, log_dir / f"{job.point.id}.log", job.threads,
                                               log_mode="w", numerics=job.numerics)
            echo(f"start {job.point.id} ({job.threads} thread(s)) → {scratch}")
            running.append(job)
        time.sleep(0.5)
        for job in [j for j in running if j.proc is not None and j.proc.poll() is not None]:
            running.remove(job)
            job.log.close()  # type: ignore[union-attr]
            if job.proc.returncode != 0:
                failed.append(job.point.id)
                echo(f"FAIL  {job.point.id} (exit {job.proc.returncode}; log {log_dir / (job.point.id + '.log')})")
                continue
            job.rerun = float(json.loads((job.run_dir / "metrics.json").read_text())["test"]["mF1"])
            done.append(job)
            echo(f"done  {job.point.id}")
    echo(f"{'point':<28} {'committed':>10} {'rerun':>10} {'difference':>11}")
    worst = 0.0
    for job in done:
        diff = float(job.rerun) - job.committed  # type: ignore[arg-type]
        worst = max(worst, abs(diff))
        echo(f"{job.point.id:<28} {job.committed:>10.5f} {job.rerun:>10.5f} {diff:>+11.5f}")
    for job in done:
        committed_env = (records.get(job.point.id) or {}).get("environment")
        rerun_env = store.environment_summary(json.loads((job.run_dir / "env.json").read_text()))
        differences = store.environment_differences(committed_env, rerun_env)
        echo(f"environment of {job.point.id}: " + ("; ".join(differences) if differences else "the same"))
    ok = not failed and worst <= tolerance
    echo(f"largest |difference| {worst:.5f}: {'within' if ok else 'NOT within'} the tolerance {tolerance}"
         + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 0 if ok else 1
