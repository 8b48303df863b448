"""Figures and tables for comparing runs and checking data: what ``visualizations_and_testing.ipynb`` shows.

Every ``plot_*`` function draws one figure, writes it as PNG and PDF into ``out_dir`` (``visualization/`` by
default) under a fixed name (:data:`FIGURES`) and returns the :class:`matplotlib.figure.Figure`; the notebook
displays it, scripts can ignore it. :func:`make_all_figures` draws the whole set.

Runs are read from run folders (``runs/<name>/<run-id>/`` with ``config.yaml``, ``metrics.json``,
``history.csv``, ``predictions/``), nothing else:

>>> df = load_runs("runs", name="tiny*")                                   # doctest: +SKIP
>>> plot_mf1_vs_fraction(df, "visualization")                            # doctest: +SKIP

Labels: a model is labelled by its registry name and group (``unet``, ``moment_unet D4``, ``escnn_unet C8``),
so runs that differ only in seed or data fraction are aggregated (mean and 95 % CI by seaborn).
"""
from __future__ import annotations

import fnmatch
import json
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import matplotlib
import matplotlib.colors
import matplotlib.patches
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import yaml

#: figure name → what it shows (the file stems written into ``out_dir``)
FIGURES: dict[str, str] = {
    "learning_curves": "validation mF1 (and training loss) against training step, per model",
    "mf1_vs_data_fraction": "test mF1 against the fraction of training data, per model",
    "transformed_test_accuracy": "test mF1 on the original, rotated and flipped test images, per model",
    "equivariance_error": "equivariance error of the trained models (max over the group's elements)",
    "time_to_target": "training wall time until validation mF1 first reached the target, per model",
    "prediction_overlay": "test images with ground-truth and predicted cells",
    "augmentation_preview": "the same training patch under each augmentation preset",
    "class_balance": "cells per class and split, and cells per image",
    "data_preview": "patches with their cell masks and points",
}
#: colours of the cell classes (1 = background cell, 2 = tumour cell)
CLASS_COLORS = {1: "#1f77b4", 2: "#d62728"}
CLASS_NAMES = {1: "BC", 2: "TC"}
FORMATS = ("png", "pdf")


# ================================================================================================ saving
def save_figure(fig: plt.Figure, out_dir: str | Path, name: str, formats: Sequence[str] = FORMATS,
                dpi: int = 150) -> list[Path]:
    """Write ``fig`` as ``<out_dir>/<name>.<fmt>`` for each format; return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        p = out / f"{name}.{fmt}"
        fig.savefig(p, dpi=dpi, bbox_inches="tight")
        paths.append(p)
    return paths


def _finish(fig: plt.Figure, out_dir: str | Path | None, name: str, dpi: int = 150) -> plt.Figure:
    if out_dir is not None:
        save_figure(fig, out_dir, name, dpi=dpi)
    return fig


def _empty(ax: plt.Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=10, color="0.4",
            wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


# ================================================================================================= runs
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
            for cls in ("BC", "TC"):
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


# ============================================================================================= comparisons
def plot_learning_curves(runs: pd.DataFrame | Iterable[str | Path], out_dir: str | Path | None = "visualization",
                         name: str = "learning_curves") -> plt.Figure:
    """Validation mF1 and training loss against step, one line per run, coloured by model (``runs``: a
    :func:`load_runs` table or run folders)."""
    hist = load_histories(runs)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    if hist.empty:
        for ax in axes:
            _empty(ax, "no history.csv in the selected runs")
        return _finish(fig, out_dir, name)
    for ax, col, title in ((axes[0], "val_mF1", "validation mF1"), (axes[1], "train_loss", "training loss")):
        if col in hist and hist[col].notna().any():
            sns.lineplot(data=hist, x="step", y=col, hue="model_label", units="run_id", estimator=None,
                         marker="o", ax=ax, legend=ax is axes[0])
            ax.set_title(title)
        else:
            _empty(ax, f"no {col} recorded")
    if axes[0].get_legend() is not None:
        axes[0].legend(title="model", fontsize=8)
    fig.tight_layout()
    return _finish(fig, out_dir, name)


def plot_mf1_vs_fraction(runs: pd.DataFrame, out_dir: str | Path | None = "visualization",
                         name: str = "mf1_vs_data_fraction") -> plt.Figure:
    """Test mF1 against the training-data fraction, per model (mean and 95 % CI over seeds)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    if runs.empty or "mF1" not in runs or runs["mF1"].isna().all():
        _empty(ax, "no finished runs")
    else:
        sns.lineplot(data=runs, x="subset_fraction", y="mF1", hue="model_label", style="preset", marker="o",
                     errorbar=("ci", 95), ax=ax)
        ax.set_xscale("log", base=2)
        fr = sorted(runs["subset_fraction"].dropna().unique())
        ax.set_xticks(fr, [f"{f:g}" for f in fr])
        ax.set_xlabel("fraction of training data")
        ax.set_ylabel("test mF1")
        ax.legend(fontsize=8)
    ax.set_title("mF1 vs training data")
    fig.tight_layout()
    return _finish(fig, out_dir, name)


def transformed_long(runs: pd.DataFrame) -> pd.DataFrame:
    """Long table of test mF1 per run and test-set transform (``original``, ``rot90``, ``flip``, ...)."""
    cols = [c for c in runs.columns if c == "mF1" or (c.startswith("mF1_") and c != "mF1_")]
    long = runs.melt(id_vars=["run_id", "model_label", "preset"], value_vars=cols, var_name="test set",
                     value_name="score").rename(columns={"score": "mF1"})
    long["test set"] = long["test set"].map(lambda c: "original" if c == "mF1" else c.removeprefix("mF1_"))
    return long.dropna(subset=["mF1"])


def plot_transformed_accuracy(runs: pd.DataFrame, out_dir: str | Path | None = "visualization",
                              name: str = "transformed_test_accuracy") -> plt.Figure:
    """Test mF1 on the original test images and their rotated/flipped copies, per model.

    An equivariant model scores the same on every copy; a plain U-Net trained without rotation augmentation
    drops on the rotated ones.
    """
    fig, ax = plt.subplots(figsize=(7, 4))
    long = transformed_long(runs) if not runs.empty else pd.DataFrame()
    if long.empty:
        _empty(ax, "no finished runs")
    else:
        sns.barplot(data=long, x="model_label", y="mF1", hue="test set", errorbar=("ci", 95), ax=ax)
        ax.set_xlabel("model")
        ax.set_ylabel("test mF1")
        ax.legend(title="test images", fontsize=8)
        ax.tick_params(axis="x", rotation=20)
    ax.set_title("accuracy on rotated / flipped test images")
    fig.tight_layout()
    return _finish(fig, out_dir, name)


def plot_equivariance_error(runs: pd.DataFrame, out_dir: str | Path | None = "visualization",
                            name: str = "equivariance_error") -> plt.Figure:
    """Equivariance error of each trained model (max relative error over the group; log scale)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    if runs.empty or "equivariance_error" not in runs or runs["equivariance_error"].isna().all():
        _empty(ax, "no equivariance error recorded")
    else:
        d = runs.dropna(subset=["equivariance_error"]).copy()
        d["equivariance_error"] = d["equivariance_error"].clip(lower=1e-12)  # exact zeros on a log axis
        sns.stripplot(data=d, x="model_label", y="equivariance_error", hue="model_label", size=8, ax=ax,
                      legend=False)
        ax.set_yscale("log")
        ax.set_xlabel("model")
        ax.set_ylabel("relative equivariance error (max)")
        ax.tick_params(axis="x", rotation=20)
    ax.set_title("equivariance error of trained models")
    fig.tight_layout()
    return _finish(fig, out_dir, name)


def plot_time_to_target(runs: pd.DataFrame, out_dir: str | Path | None = "visualization",
                        name: str = "time_to_target") -> plt.Figure:
    """Wall time until validation mF1 first reached the target, per model; runs that never reached it are
    drawn as hollow markers at their total training time (a lower bound)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    if runs.empty or "train_wall_s" not in runs:
        _empty(ax, "no finished runs")
        return _finish(fig, out_dir, name)
    d = runs.copy()
    d["reached"] = d["time_to_target_s"].notna()
    d["seconds"] = d["time_to_target_s"].where(d["reached"], d["train_wall_s"])
    order = sorted(d["model_label"].astype(str).unique())
    pos = {m: i for i, m in enumerate(order)}
    rng = np.random.default_rng(0)
    for reached, marker, face in ((True, "o", None), (False, "o", "none")):
        part = d[d["reached"] == reached]
        if part.empty:
            continue
        x = part["model_label"].astype(str).map(pos) + rng.uniform(-0.15, 0.15, len(part))
        ax.scatter(x, part["seconds"], marker=marker, s=50, facecolors=face or "C0", edgecolors="C0",
                   label="reached target" if reached else "not reached (total time)")
    ax.set_xticks(range(len(order)), order, rotation=20)
    ax.set_xlim(-0.5, len(order) - 0.5)
    target = d["target_mF1"].dropna().unique()
    tgt = f" {target[0]:g}" if len(target) == 1 else ""
    ax.set_title(f"time to target val mF1{tgt}")
    ax.set_xlabel("model")
    ax.set_ylabel("training wall time (s)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _finish(fig, out_dir, name)


# ================================================================================================ images
def _draw_points(ax: plt.Axes, points: np.ndarray, marker: str = "o", size: float = 18, filled: bool = True,
                 label_prefix: str = "") -> None:
    pts = np.asarray(points).reshape(-1, np.asarray(points).shape[-1] if np.size(points) else 3)
    for cls, color in CLASS_COLORS.items():
        sel = pts[pts[:, 2] == cls] if len(pts) else pts
        if len(sel) == 0:
            continue
        kw = dict(c=color) if filled else dict(facecolors="none", edgecolors=color)
        ax.scatter(sel[:, 0], sel[:, 1], marker=marker, s=size, linewidths=1.2,
                   label=f"{label_prefix}{CLASS_NAMES[cls]}", **kw)


def _to_hwc(image: Any) -> np.ndarray:
    arr = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(1, 2, 0)
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 1)
    return arr


def plot_samples(samples: Sequence[dict], out_dir: str | Path | None = None, name: str = "data_preview",
                 title: str | None = None) -> plt.Figure:
    """Sample dicts (``image``, ``mask``, ``points``): image with points, and the cell mask, per column."""
    n = max(1, len(samples))
    fig, axes = plt.subplots(2, n, figsize=(3 * n, 6), squeeze=False)
    cmap = matplotlib.colors.ListedColormap(["white", CLASS_COLORS[1], CLASS_COLORS[2]])
    for j, s in enumerate(samples):
        axes[0, j].imshow(_to_hwc(s["image"]))
        _draw_points(axes[0, j], np.asarray(s["points"]), size=10)
        axes[0, j].set_title(str(s.get("id", j)), fontsize=8)
        mask = np.asarray(s["mask"])
        axes[1, j].imshow(mask, cmap=cmap, vmin=0, vmax=2, interpolation="nearest")
        axes[1, j].set_title(f"mask: BC {int((mask == 1).sum())} px, TC {int((mask == 2).sum())} px", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [matplotlib.patches.Patch(color=CLASS_COLORS[c], label=CLASS_NAMES[c]) for c in (1, 2)]
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return _finish(fig, out_dir, name)


def plot_data_preview(root: str | Path, split: str = "train", n: int = 4, mask_radius_um: float = 2.0,
                      out_dir: str | Path | None = "visualization", name: str = "data_preview") -> plt.Figure:
    """The first ``n`` full patches of a split with their points and masks (no augmentation)."""
    from util.dataloader import OcelotDataset

    ds = OcelotDataset(root, split, mask_radius_um=mask_radius_um)
    samples = [ds[i] for i in range(min(n, len(ds)))]
    return plot_samples(samples, out_dir, name, title=f"{Path(root).name} / {split}")


def plot_prediction_overlay(run_dir: str | Path, out_dir: str | Path | None = "visualization", n: int = 4,
                            split: str = "test", name: str = "prediction_overlay") -> plt.Figure:
    """Test images of a run with ground truth (hollow circles) and its predictions (crosses)."""
    from util.ocelot import cell_csv_path, find_image, read_cells_csv, read_image, read_points_json

    run_dir = Path(run_dir)
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    root = Path(cfg["data"]["root"])
    pred_file = run_dir / "predictions" / f"{split}.json"
    predicted, ids = read_points_json(pred_file)
    k = min(n, len(ids))
    fig, axes = plt.subplots(1, max(1, k), figsize=(4 * max(1, k), 4.3), squeeze=False)
    for j in range(k):
        ax = axes[0, j]
        img_path = find_image(root, split, ids[j])
        ax.imshow(read_image(img_path))
        gt = read_cells_csv(cell_csv_path(root, split, ids[j]))
        _draw_points(ax, gt, marker="o", size=40, filled=False, label_prefix="true ")
        _draw_points(ax, predicted[j][:, :3] if j < len(predicted) else np.zeros((0, 3)), marker="x", size=20,
                     label_prefix="predicted ")
        ax.set_title(ids[j], fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if k == 0:
        _empty(axes[0, 0], f"no images in {pred_file}")
    else:
        handles, labels = axes[0, 0].get_legend_handles_labels()
        uniq = dict(zip(labels, handles))
        fig.legend(uniq.values(), uniq.keys(), loc="lower center", ncol=4, fontsize=8)
    model = cfg.get("model", {}).get("name")
    fig.suptitle(f"{model}: {run_dir.parent.name}/{run_dir.name} ({split})", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return _finish(fig, out_dir, name)


# ================================================================================================== data
def plot_augmentation_grid(root: str | Path, out_dir: str | Path | None = "visualization",
                           presets: Sequence[str] | None = None, n_draws: int = 4, crop_size: int | None = None,
                           index: int = 0, mask_radius_um: float = 2.0, seed: int = 0,
                           name: str = "augmentation_preview") -> plt.Figure:
    """One training patch under each augmentation preset (rows), ``n_draws`` random draws each (columns),
    points drawn on top: they must stay on their cells."""
    from util.dataloader import OcelotDataset
    from util.transforms import PRESETS

    presets = list(presets or PRESETS)
    fig, axes = plt.subplots(len(presets), n_draws, figsize=(2.6 * n_draws, 2.6 * len(presets)), squeeze=False)
    for i, preset in enumerate(presets):
        for j in range(n_draws):
            ds = OcelotDataset(root, "train", crop_size=crop_size, transforms=preset,
                               mask_radius_um=mask_radius_um, seed=seed + j)
            s = ds[index % len(ds)]
            ax = axes[i, j]
            ax.imshow(_to_hwc(s["image"]))
            _draw_points(ax, np.asarray(s["points"]), size=8)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(preset)
    fig.suptitle("augmentation presets (rows) × random draws (columns)")
    fig.tight_layout()
    return _finish(fig, out_dir, name, dpi=100)


def class_balance_table(root: str | Path, splits: Sequence[str] = ("train", "val", "test")) -> pd.DataFrame:
    """One row per image: split, id, number of BC and TC cells (from the annotation CSVs)."""
    from util.ocelot import cell_csv_path, list_ids, read_cells_csv

    rows = []
    root = Path(root)
    for split in splits:
        try:
            ids = list_ids(root, split)
        except (FileNotFoundError, ValueError):
            continue
        for sid in ids:
            csv = cell_csv_path(root, split, sid)
            pts = read_cells_csv(csv) if csv.is_file() else np.zeros((0, 3))
            cls = np.asarray(pts)[:, 2] if len(pts) else np.zeros(0)
            rows.append({"split": split, "id": sid, "BC": int((cls == 1).sum()), "TC": int((cls == 2).sum())})
    return pd.DataFrame(rows, columns=["split", "id", "BC", "TC"])


def plot_class_balance(root: str | Path, out_dir: str | Path | None = "visualization",
                       splits: Sequence[str] = ("train", "val", "test"), name: str = "class_balance") -> plt.Figure:
    """Cells per class and split (left) and the distribution of cells per image (right)."""
    table = class_balance_table(root, splits)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    if table.empty:
        for ax in axes:
            _empty(ax, f"no annotations under {root}")
        return _finish(fig, out_dir, name)
    long = table.melt(id_vars=["split", "id"], value_vars=["BC", "TC"], var_name="class", value_name="cells")
    totals = long.groupby(["split", "class"], as_index=False)["cells"].sum()
    palette = {CLASS_NAMES[c]: CLASS_COLORS[c] for c in (1, 2)}
    sns.barplot(data=totals, x="split", y="cells", hue="class", palette=palette, ax=axes[0])
    for cont in axes[0].containers:
        axes[0].bar_label(cont, fontsize=8)
    axes[0].set_title("cells per class")
    sns.boxplot(data=long, x="split", y="cells", hue="class", palette=palette, ax=axes[1])
    axes[1].set_title("cells per image")
    ratio = totals.pivot(index="split", columns="class", values="cells")
    frac = (ratio["TC"] / ratio.sum(axis=1)).to_dict() if {"BC", "TC"} <= set(ratio.columns) else {}
    if frac:
        fig.suptitle("tumour-cell fraction: " + ", ".join(f"{k} {v:.2f}" for k, v in frac.items()
                                                          if not math.isnan(v)), fontsize=10)
    fig.tight_layout()
    return _finish(fig, out_dir, name)


# ================================================================================================= all
def make_all_figures(runs_dir: str | Path = "runs", out_dir: str | Path = "visualization",
                     data_root: str | Path | None = None, name: str | None = None,
                     overlay_run: str | Path | None = None) -> dict[str, list[Path]]:
    """Every figure of :data:`FIGURES` for the runs under ``runs_dir`` (filtered by ``name``) and the data set
    ``data_root`` (default: the data root of the first run). Returns figure name → written files."""
    runs = load_runs(runs_dir, name)
    if data_root is None and not runs.empty:
        data_root = yaml.safe_load((Path(runs["run_dir"].iloc[0]) / "config.yaml").read_text())["data"]["root"]
    figs = {
        "learning_curves": lambda: plot_learning_curves(runs, out_dir),
        "mf1_vs_data_fraction": lambda: plot_mf1_vs_fraction(runs, out_dir),
        "transformed_test_accuracy": lambda: plot_transformed_accuracy(runs, out_dir),
        "equivariance_error": lambda: plot_equivariance_error(runs, out_dir),
        "time_to_target": lambda: plot_time_to_target(runs, out_dir),
    }
    if overlay_run is not None or not runs.empty:
        run = overlay_run or runs.sort_values("mF1", ascending=False)["run_dir"].iloc[0]
        figs["prediction_overlay"] = lambda: plot_prediction_overlay(run, out_dir)
    if data_root is not None:
        figs["augmentation_preview"] = lambda: plot_augmentation_grid(data_root, out_dir)
        figs["class_balance"] = lambda: plot_class_balance(data_root, out_dir)
        figs["data_preview"] = lambda: plot_data_preview(data_root, out_dir=out_dir)
    written = {}
    for key, draw in figs.items():
        fig = draw()
        plt.close(fig)
        written[key] = [Path(out_dir) / f"{key}.{fmt}" for fmt in FORMATS]
    return written


__all__ = ["FIGURES", "save_figure", "find_runs", "load_runs", "run_table", "summary_table", "load_histories", "model_label",
           "plot_learning_curves", "plot_mf1_vs_fraction", "transformed_long", "plot_transformed_accuracy",
           "plot_equivariance_error", "plot_time_to_target", "plot_samples", "plot_data_preview",
           "plot_prediction_overlay", "plot_augmentation_grid", "class_balance_table", "plot_class_balance",
           "make_all_figures"]
