"""Run folders as tidy tables: one row per run (config and results), histories, the headline summary.

Runs are read from run folders (``runs/<name>/<run-id>/`` with ``config.yaml``, ``metrics.json``,
``history.csv``), nothing else. A model is labelled by its registry name and group (``unet``,
``moment_unet D4``, ``escnn_unet C8``), so runs that differ only in seed or data fraction are aggregated.
"""
from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd
import yaml

from util.ocelot.classes import CELL_CLASSES


def find_runs(runs_dir: str | Path = "runs", name: str | None = None) -> list[Path]:
    """Run folders (holding ``config.yaml``, not ``failed.json``) under ``runs_dir``; ``name`` filters
    ``runs/<name>/`` (glob)."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    runs = sorted(p.parent for p in root.glob("*/*/config.yaml"))
    # a run that failed (util.training writes failed.json with the reason) is not compared
    runs = [r for r in runs if not (r / "failed.json").is_file()]
    if name:
        runs = [r for r in runs if fnmatch.fnmatch(r.parent.name, name)]
    return runs


def model_label(model: str, group: str | None = None) -> str:
    """``unet``, ``moment_unet D4``, ... (the hue of every comparison figure)."""
    return f"{model} {group}" if group else str(model)


def _read_run(run_dir: Path) -> dict[str, Any]:
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    metrics: dict[str, Any] = {}
    if (run_dir / "metrics.json").is_file():
        metrics = json.loads((run_dir / "metrics.json").read_text())
    model = cfg.get("model", {}) or {}
    kwargs = model.get("kwargs", {}) or {}
    group = metrics.get("group") or kwargs.get("group")
    data = cfg.get("data", {}) or {}
    row: dict[str, Any] = {
        "run_dir": str(run_dir),
        "name": cfg.get("name", run_dir.parent.name),
        "run_id": run_dir.name,
        "model": model.get("name"),
        "group": group,
        "model_label": model_label(model.get("name"), group),
        "width": kwargs.get("width"),
        "preset": data.get("preset"),
        "subset_fraction": data.get("subset_fraction"),
        "seed": cfg.get("seed"),
        "complete": bool(metrics),
        "parameters": metrics.get("parameters"),
        "steps": metrics.get("steps"),
        "train_wall_s": metrics.get("train_wall_s"),
        "best_val_mF1": metrics.get("best_val_mF1"),
        "target_mF1": metrics.get("target_mF1", cfg.get("target_mf1")),
        "time_to_target_s": metrics.get("time_to_target_s"),
        "steps_to_target": metrics.get("steps_to_target"),
        "equivariance_group": (metrics.get("equivariance") or {}).get("group"),
        "equivariance_error": (metrics.get("equivariance") or {}).get("max"),
    }
    for key, val in metrics.items():  # test, test_rot90, test_flip, ...: mF1, F1 and Dice per class
        if isinstance(val, dict) and "mF1" in val:
            suffix = "" if key == "test" else key.removeprefix("test")
            row[f"mF1{suffix}"] = val.get("mF1")
            for cls in CELL_CLASSES.values():
                row[f"F1_{cls}{suffix}"] = (val.get("cells", {}).get(cls) or {}).get("f1")
                row[f"Dice_{cls}{suffix}"] = (val.get("dice") or {}).get(cls)
    return row


def run_table(run_dirs: Iterable[str | Path]) -> pd.DataFrame:
    """The :func:`load_runs` table for explicit run folders (e.g. the one a notebook just trained)."""
    return _tidy(pd.DataFrame([_read_run(Path(r)) for r in run_dirs]))


def _tidy(df: pd.DataFrame) -> pd.DataFrame:
    if df.empty:
        return df
    numeric = ["subset_fraction", "seed", "width", "parameters", "steps", "train_wall_s", "best_val_mF1", "target_mF1",
               "time_to_target_s", "steps_to_target", "equivariance_error"]
    numeric += [c for c in df.columns if c.startswith(("mF1", "F1_", "Dice_"))]
    for col in numeric:
        if col in df:
            df[col] = pd.to_numeric(df[col], errors="coerce")
    return df


def load_runs(runs_dir: str | Path = "runs", name: str | None = None, tags: Iterable[str] | None = None,
              complete_only: bool = True, **where: Any) -> pd.DataFrame:
    """A tidy table, one row per run: config (model, group, preset, data fraction, seed, width) and results
    (test mF1 and per-class F1/Dice, the same on rotated/flipped copies as ``mF1_rot90``, ..., parameters,
    wall time, time to target, equivariance error).

    ``name``: glob on the experiment name (``runs/<name>/``); ``tags``: keep runs whose model, group, preset or
    name is among them; ``where``: column equality filters, e.g. ``model="unet"``; ``complete_only``: drop runs
    without ``metrics.json`` (still training, or failed).
    """
    rows = [_read_run(r) for r in find_runs(runs_dir, name)]
    df = _tidy(pd.DataFrame(rows))
    if df.empty:
        return df
    if complete_only:
        df = df[df["complete"]]
    if tags:
        tags = set(tags)
        keep = df[["model", "group", "preset", "name", "model_label"]].astype(str).isin(tags).any(axis=1)
        df = df[keep]
    for col, val in where.items():
        df = df[df[col] == val]
    return df.reset_index(drop=True)


def summary_table(df: pd.DataFrame, by: Sequence[str] = ("model_label", "preset", "subset_fraction"),
                  values: Sequence[str] = ("mF1", "mF1_rot90", "mF1_flip", "equivariance_error", "parameters",
                                           "train_wall_s", "time_to_target_s")) -> pd.DataFrame:
    """Mean (and run count) of ``values`` per group of ``by``: the headline comparison table."""
    if df.empty:
        return df
    values = [v for v in values if v in df.columns]
    by = [b for b in by if b in df.columns]
    g = df.groupby(list(by), dropna=False)
    out = g[values].mean(numeric_only=True)
    out.insert(0, "runs", g.size())
    return out.reset_index()


def load_histories(runs: pd.DataFrame | Iterable[str | Path]) -> pd.DataFrame:
    """All ``history.csv`` rows of the runs, with ``run_id`` and ``model_label`` columns."""
    if isinstance(runs, pd.DataFrame):
        if runs.empty:
            return pd.DataFrame()
        items = list(zip(runs["run_dir"], runs["model_label"]))
    else:
        items = []
        for r in runs:
            row = _read_run(Path(r))
            items.append((row["run_dir"], row["model_label"]))
    frames = []
    for run_dir, label in items:
        p = Path(run_dir) / "history.csv"
        if p.is_file() and p.stat().st_size > 0:
            h = pd.read_csv(p)
            h["run_id"] = Path(run_dir).name
            h["run_dir"] = str(run_dir)
            h["model_label"] = label
            frames.append(h)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


__all__ = ["find_runs", "model_label", "run_table", "load_runs", "summary_table", "load_histories"]
