"""Images with their cells: data patches and masks, augmentation previews, a run's predictions on test images."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib.colors
import matplotlib.patches
import matplotlib.pyplot as plt
import numpy as np
import yaml

from util.visualize.common import CLASS_COLORS, CLASS_NAMES, _empty, _finish


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
    handles = [matplotlib.patches.Patch(color=CLASS_COLORS[c], label=CLASS_NAMES[c]) for c in CLASS_NAMES]
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


__all__ = ["plot_samples", "plot_data_preview", "plot_prediction_overlay", "plot_augmentation_grid"]
