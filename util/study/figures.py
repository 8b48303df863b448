"""The study's figures (PNG, in ``visualization/<study>/``), drawn from the report's tables and points records.

* ``mf1_vs_fraction``: test mF1 against the training fraction, one line per arm, bootstrap 95 % intervals;
* ``val_curves``: validation mF1 against optimizer steps and against training wall-clock, median over seeds,
  one column per fraction;
* ``transformed_test``: test mF1 on the original, rotated and flipped test images per arm (largest fraction),
  mean over seeds;
* ``time_to_target``: training seconds until validation mF1 first reached the target, each seed a marker
  (hollow: never reached, drawn at its total time), median as a bar;
* ``contrasts``: the paired differences with their intervals.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from util.study.spec import Study  # noqa: E402
from util.study.stats import first_reach, median_curve_by_step, median_curve_by_time  # noqa: E402

FIGURES = {
    "mf1_vs_fraction": "test mF1 against the fraction of training data (bootstrap 95 % intervals)",
    "val_curves": "validation mF1 against steps and against wall-clock (median over seeds)",
    "transformed_test": "test mF1 on rotated and flipped test images",
    "time_to_target": "time until validation mF1 reached the target",
    "contrasts": "the paired contrasts with 95 % intervals",
}
TEST_SETS = (("original", "mF1_mean"), ("rot90", "mF1_rot90_mean"), ("rot180", "mF1_rot180_mean"),
             ("flip", "mF1_flip_mean"), ("rot45", "mF1_rot45_mean"))


def _colors(study: Study) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10" if len(study.arms) <= 10 else "tab20")
    return {a.label: cmap(i % cmap.N) for i, a in enumerate(study.arms)}


def _save(fig: plt.Figure, study: Study, name: str) -> Path:
    out = study.study_figures
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path


def _empty(ax: plt.Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_mf1_vs_fraction(study: Study, summary: pd.DataFrame) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if summary.empty:
        _empty(ax, "no finished points")
        return fig
    colors = _colors(study)
    for arm, part in summary.groupby("arm", sort=False):
        part = part.sort_values("fraction")
        y = part["mF1_from_counts"].to_numpy()
        err = np.vstack([y - part["mF1_ci_low"], part["mF1_ci_high"] - y])
        ax.errorbar(part["fraction"], y, yerr=err, marker="o", capsize=3, label=arm, color=colors.get(arm))
    fr = sorted(summary["fraction"].unique())
    if len(fr) > 1:
        ax.set_xscale("log", base=2)
    ax.set_xticks(fr, [f"{f:g}" for f in fr])
    ax.set_xlabel("fraction of training data")
    ax.set_ylabel("test mF1")
    ax.set_title(f"{study.name}: test mF1 vs training data")
    ax.legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    return fig


def _histories(df: pd.DataFrame, records: Mapping[str, dict], arm: str, fraction: float) -> list[dict]:
    part = df[(df["stage"] == "main") & (df["arm"] == arm) & np.isclose(df["fraction"], fraction)]
    return [records[p]["history"] for p in part["point"] if p in records and records[p]["history"]["step"]]


def plot_val_curves(study: Study, df: pd.DataFrame, records: Mapping[str, dict]) -> plt.Figure:
    n = len(study.fractions)
    fig, axes = plt.subplots(2, n, figsize=(4.5 * n, 7), squeeze=False)
    colors = _colors(study)
    for j, f in enumerate(study.fractions):
        for arm in study.arms:
            hs = _histories(df, records, arm.label, f)
            if not hs:
                continue
            x, y = median_curve_by_step(hs)
            axes[0, j].plot(x, y, marker=".", label=arm.label, color=colors[arm.label])
            t, m = median_curve_by_time(hs)
            axes[1, j].plot(t, m, label=arm.label, color=colors[arm.label], drawstyle="steps-post")
        axes[0, j].set_title(f"fraction {f:g}")
        axes[0, j].set_xlabel("optimizer step")
        axes[1, j].set_xlabel("training wall-clock (s)")
    for i in range(2):
        axes[i, 0].set_ylabel("validation mF1 (median over seeds)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(f"{study.name}: validation mF1 against steps and wall-clock")
    fig.tight_layout()
    return fig


def plot_transformed(study: Study, summary: pd.DataFrame) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(max(7, 0.9 * len(study.arms) + 2), 4.5))
    if summary.empty:
        _empty(ax, "no finished points")
        return fig
    f = summary["fraction"].max()
    part = summary[np.isclose(summary["fraction"], f)]
    step = 0.6 / len(TEST_SETS)
    for k, (name, col) in enumerate(TEST_SETS):
        if col in part and part[col].notna().any():
            ax.plot(np.arange(len(part)) + (k - (len(TEST_SETS) - 1) / 2) * step, part[col], "o", label=name)
    ax.set_xticks(range(len(part)), part["arm"], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("test mF1 (mean over seeds)")
    ax.set_title(f"{study.name}: rotated / flipped test images (fraction {f:g})")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, title="test images", bbox_to_anchor=(1.02, 1), loc="upper left")
    return fig


def plot_time_to_target(study: Study, df: pd.DataFrame, records: Mapping[str, dict],
                        target: float | None) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(max(7, 0.9 * len(study.arms) + 2), 4.5))
    if target is None or df.empty:
        _empty(ax, "no target or no finished points")
        return fig
    markers = "osD^v<>"
    for j, f in enumerate(study.fractions):
        for i, arm in enumerate(study.arms):
            hs = _histories(df, records, arm.label, f)
            x = i + (j - (len(study.fractions) - 1) / 2) * 0.8 / max(1, len(study.fractions))
            times = [first_reach(h, target) for h in hs]
            for h, t in zip(hs, times):
                reached = np.isfinite(t)
                ax.scatter(x, t if reached else max(h["elapsed_s"]), marker=markers[j % len(markers)],
                           facecolors=f"C{j}" if reached else "none", edgecolors=f"C{j}", s=30)
            ok = [t for t in times if np.isfinite(t)]
            if ok:
                ax.hlines(np.median(ok), x - 0.1, x + 0.1, color=f"C{j}", lw=2)
        ax.scatter([], [], marker=markers[j % len(markers)], color=f"C{j}", label=f"fraction {f:g}")
    ax.scatter([], [], marker="o", facecolors="none", edgecolors="0.3", label="not reached (total time)")
    ax.set_xticks(range(len(study.arms)), [a.label for a in study.arms], rotation=30, ha="right", fontsize=8)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("training wall-clock (s)")
    ax.set_title(f"{study.name}: time to validation mF1 {target:g} (bar: median of those that reached it)")
    ax.legend(fontsize=7)
    return fig


def plot_contrasts(study: Study, contrasts: pd.DataFrame) -> plt.Figure:
    rows = contrasts.dropna(subset=["diff"]) if not contrasts.empty else contrasts
    fig, ax = plt.subplots(figsize=(8, 0.35 * max(4, len(rows)) + 1))
    if rows.empty:
        _empty(ax, "no contrast has paired runs yet")
        return fig
    y = np.arange(len(rows))[::-1]
    labels = [f"({r.kind}) {r.arm} − {r.vs} @ {r.fraction:g}" for r in rows.itertuples()]
    ax.errorbar(rows["diff"], y, xerr=np.vstack([rows["diff"] - rows["ci_low"], rows["ci_high"] - rows["diff"]]),
                fmt="o", capsize=3, color="C0")
    ax.axvline(0, color="0.5", lw=1, ls="--")
    ax.set_yticks(y, labels, fontsize=7)
    ax.set_xlabel("Δ test mF1 (paired, 95 % bootstrap interval)")
    ax.set_title(f"{study.name}: contrasts")
    return fig


def make_figures(study: Study, df: pd.DataFrame, summary: pd.DataFrame, contrasts: pd.DataFrame,
                 records: Mapping[str, dict], target: float | None) -> dict[str, tuple[Path, str]]:
    """Draw and save every figure; ``{name: (path, what it shows)}``."""
    figs = {"mf1_vs_fraction": plot_mf1_vs_fraction(study, summary),
            "val_curves": plot_val_curves(study, df, records),
            "transformed_test": plot_transformed(study, summary),
            "time_to_target": plot_time_to_target(study, df, records, target),
            "contrasts": plot_contrasts(study, contrasts)}
    return {name: (_save(fig, study, name), FIGURES[name]) for name, fig in figs.items()}
