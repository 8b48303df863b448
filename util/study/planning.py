"""``plan``: every point with its labels, parameters, MACs per pixel, status and estimated time.

The estimate comes from :mod:`util.study.costs`: each distinct model is timed for a few training steps at the
recipe's batch and crop, with the threads one run gets under ``--jobs`` (``threads // jobs``), on this
machine's device. Totals: run-hours (sum over points still to train), CPU-hours (× threads per run; on a GPU
the device-hours are the run-hours), and wall-clock hours with ``--jobs`` runs at once.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch

from util.study import costs, store
from util.study.runner import default_threads, point_status
from util.study.points import Point, base_config, expand_points, fixed_lr_words, in_shard, point_config
from util.study.spec import Study


def timing_config(study: Study, p: Point):
    """The configuration a point's cost is measured on (its own, or with the recipe's rate while its
    learning rate is not chosen yet: cost does not depend on it)."""
    if p.config is not None:
        return p.config
    return point_config(study, p.arm, p.fraction, p.seed, study.lr_values[0] if study.lr_values else 1e-3,
                        p.id, p.width)


def plan_rows(study: Study, jobs: int = 1, threads: int | None = None, steps: int = 3, timing: bool = True,
              shard: tuple[int, int] | None = None, echo: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """One dict per point: labels, status, parameters, MACs/px, s/step and estimated minutes of a run."""
    rows = store.read_rows(store.runs_csv(study))
    points = [p for p in expand_points(study, rows) if in_shard(p, shard)]
    per_run = max(1, (threads or default_threads()) // max(1, jobs))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    previous = torch.get_num_threads()
    torch.set_num_threads(per_run)
    cache: dict[str, dict[str, float]] = {}
    images: dict[str, Any] | None = None
    out = []
    try:
        for p in points:
            cfg = timing_config(study, p)
            key = costs.model_key(cfg)
            if key not in cache:
                cache[key] = costs.model_cost(cfg)
                if timing:
                    images = images or costs.eval_images(cfg)
                    echo(f"timing {p.arm.label} ({cfg.model.name}, width {cfg.model.kwargs.get('width')}) ...")
                    cache[key] |= costs.time_model(cfg, images, steps, device)
            c = cache[key]
            status = point_status(p, rows)
            est = costs.estimate_run_s(cfg, c, images, costs.val_every_steps(cfg)) / 60 if timing else None
            out.append({"#": p.index, "point": p.id, "stage": p.stage, "arm": p.arm.label,
                        "model": cfg.model.name, "group": cfg.model.kwargs.get("group", ""),
                        "preset": cfg.data.preset, "fraction": p.fraction, "seed": p.seed,
                        "lr": p.learning_rate if p.learning_rate is not None else "search",
                        "width": cfg.model.kwargs.get("width"), "params": int(c["parameters"]),
                        "MACs/px": round(c["macs_per_px"]), "s/step": c.get("s_per_step"),
                        "est_min": est, "status": status,
                        "comparison": p.arm.comparison, "threads": per_run, "device": device.type,
                        "steps_timed": steps if timing else None})
    finally:
        torch.set_num_threads(previous)
    return out


def plan_totals(rows: Sequence[dict[str, Any]], jobs: int, threads_per_run: int, device: str) -> dict[str, Any]:
    """Points, runs still to train, run-hours, CPU- (or GPU-) hours and wall hours at ``jobs`` at once."""
    todo = [r for r in rows if r["status"] in ("pending", "waiting")]
    run_h = sum(r["est_min"] or 0.0 for r in todo) / 60
    return {"points": len(rows), "to_train": len(todo),
            "reused": sum(r["status"] in ("reuse", "reuse-wait") for r in rows),
            "done": sum(r["status"] == "done" for r in rows), "run_hours": run_h,
            "device_hours": run_h * (threads_per_run if device == "cpu" else 1), "device": device,
            "wall_hours": run_h / max(1, jobs), "threads_per_run": threads_per_run, "jobs": jobs,
            "untimed": any(r["est_min"] is None for r in todo)}


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """An aligned plain-text table; floats with 3 significant digits."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return "" if math.isnan(v) else f"{v:.3g}"
        return "" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _timed_under(mode: str, untimed: bool) -> str:
    """Whether the timing ran under the study's numerics mode (``python -m util.study plan`` starts it so)."""
    import os

    from util.numerics import in_mode
    from util.training.runs import NUMERICS_VARIABLES

    if untimed:
        return ""
    return " (timed under it)" if in_mode(os.environ, mode, NUMERICS_VARIABLES) else " (timed outside it)"


def plan_text(study: Study, rows: Sequence[dict[str, Any]], totals: dict[str, Any]) -> str:
    """The printed plan: the table, then the totals in words."""
    cols = ["#", "point", "stage", "preset", "fraction", "seed", "lr", "width", "params", "MACs/px", "s/step",
            "est_min", "status"]
    unit = "CPU-hours" if totals["device"] == "cpu" else f"{totals['device']} device-hours"
    budget = f"budget: {study.max_steps} optimizer steps per run (the same for every arm)"
    lr = (f"learning-rate search: {study.lr_values} on seed {study.lr_seed} at fraction {study.lr_fraction:g}"
          if study.lr_values else f"learning rate: {fixed_lr_words(study)}")
    base = base_config(study)
    method = (f"params: trainable parameters; MACs/px: convolution multiply-accumulates per pixel of one eval "
              f"forward at the {base.data.crop_size}² crop (FlopCounterMode FLOPs / 2); s/step: median of timed "
              f"training steps at batch {base.data.batch_size}, {totals['threads_per_run']} thread(s), "
              f"{totals['device']}; est_min: steps × s/step + validation/test forwards + start-up")
    lines = [format_table(rows, cols), "", method, f"study {study.name}: {len(study.arms)} arms × "
             f"{len(study.fractions)} fractions × {len(study.seeds)} seeds; {budget}; {lr}"
             + (f"; CPU numerics mode {study.numerics}" + _timed_under(study.numerics, totals["untimed"])
                if study.numerics else ""),
             f"{totals['points']} points: {totals['done']} done, {totals['reused']} reuse a search run, "
             f"{totals['to_train']} to train",
             "no time estimate (--no-timing)" if totals["untimed"] else
             f"estimated {totals['run_hours']:.2f} run-hours at {totals['threads_per_run']} thread(s) per run = "
             f"{totals['device_hours']:.2f} {unit}; about {totals['wall_hours']:.2f} h wall-clock with "
             f"--jobs {totals['jobs']}"]
    return "\n".join(lines)
