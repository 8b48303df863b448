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

One job a module (every name is re-exported here): ``common`` (class colours, saving), ``runs`` (run folders as
tables), ``comparisons`` (figures comparing models), ``images`` (patches, augmentations, predictions with their
cells), ``class_balance`` (cells per class and split).
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import yaml

from util.visualize.class_balance import class_balance_table, plot_class_balance
from util.visualize.common import CLASS_COLORS, CLASS_NAMES, FORMATS, _empty, _finish, save_figure  # noqa: F401
from util.visualize.comparisons import (plot_equivariance_error, plot_learning_curves, plot_mf1_vs_fraction,
                                        plot_time_to_target, plot_transformed_accuracy, transformed_long)
from util.visualize.images import (_draw_points, _to_hwc, plot_augmentation_grid, plot_data_preview,  # noqa: F401
                                   plot_prediction_overlay, plot_samples)
from util.visualize.runs import (_read_run, _tidy, find_runs, load_histories, load_runs, model_label,  # noqa: F401
                                 run_table, summary_table)

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
