"""The comparison figures: learning curves, mF1 against data fraction, rotated/flipped test accuracy,
equivariance error and time to target, per model (``runs``: a :func:`~util.visualize.runs.load_runs` table)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from util.visualize.common import _empty, _finish, _one_panel
from util.visualize.runs import load_histories


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
    def draw(ax: plt.Axes) -> None:
        sns.lineplot(data=runs, x="subset_fraction", y="mF1", hue="model_label", style="preset", marker="o",
                     errorbar=("ci", 95), ax=ax)
        ax.set_xscale("log", base=2)
        fr = sorted(runs["subset_fraction"].dropna().unique())
        ax.set_xticks(fr, [f"{f:g}" for f in fr])
        ax.set_xlabel("fraction of training data")
        ax.set_ylabel("test mF1")
        ax.legend(fontsize=8)

    empty = runs.empty or "mF1" not in runs or runs["mF1"].isna().all()
    return _one_panel(out_dir, name, "mF1 vs training data", None if empty else draw, "no finished runs")


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
    long = transformed_long(runs) if not runs.empty else pd.DataFrame()

    def draw(ax: plt.Axes) -> None:
        sns.barplot(data=long, x="model_label", y="mF1", hue="test set", errorbar=("ci", 95), ax=ax)
        ax.set_xlabel("model")
        ax.set_ylabel("test mF1")
        ax.legend(title="test images", fontsize=8)
        ax.tick_params(axis="x", rotation=20)

    return _one_panel(out_dir, name, "accuracy on rotated / flipped test images", None if long.empty else draw,
                      "no finished runs", figsize=(7, 4))


def plot_equivariance_error(runs: pd.DataFrame, out_dir: str | Path | None = "visualization",
                            name: str = "equivariance_error") -> plt.Figure:
    """Equivariance error of each trained model (max relative error over the group; log scale)."""
    def draw(ax: plt.Axes) -> None:
        d = runs.dropna(subset=["equivariance_error"]).copy()
        d["equivariance_error"] = d["equivariance_error"].clip(lower=1e-12)  # exact zeros on a log axis
        sns.stripplot(data=d, x="model_label", y="equivariance_error", hue="model_label", size=8, ax=ax,
                      legend=False)
        ax.set_yscale("log")
        ax.set_xlabel("model")
        ax.set_ylabel("relative equivariance error (max)")
        ax.tick_params(axis="x", rotation=20)

    empty = runs.empty or "equivariance_error" not in runs or runs["equivariance_error"].isna().all()
    return _one_panel(out_dir, name, "equivariance error of trained models", None if empty else draw,
                      "no equivariance error recorded")


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


__all__ = ["plot_learning_curves", "plot_mf1_vs_fraction", "transformed_long", "plot_transformed_accuracy",
           "plot_equivariance_error", "plot_time_to_target"]
