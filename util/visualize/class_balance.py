"""Cells per class: a table per image and split, and its figure (totals and cells per image)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from util.visualize.common import CLASS_COLORS, CLASS_NAMES, _empty, _finish


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
            rows.append({"split": split, "id": sid} | {n: int((cls == c).sum()) for c, n in CLASS_NAMES.items()})
    return pd.DataFrame(rows, columns=["split", "id", *CLASS_NAMES.values()])


def plot_class_balance(root: str | Path, out_dir: str | Path | None = "visualization",
                       splits: Sequence[str] = ("train", "val", "test"), name: str = "class_balance") -> plt.Figure:
    """Cells per class and split (left) and the distribution of cells per image (right)."""
    table = class_balance_table(root, splits)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    if table.empty:
        for ax in axes:
            _empty(ax, f"no annotations under {root}")
        return _finish(fig, out_dir, name)
    long = table.melt(id_vars=["split", "id"], value_vars=list(CLASS_NAMES.values()), var_name="class", value_name="cells")
    totals = long.groupby(["split", "class"], as_index=False)["cells"].sum()
    palette = {CLASS_NAMES[c]: CLASS_COLORS[c] for c in CLASS_NAMES}
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


__all__ = ["class_balance_table", "plot_class_balance"]
