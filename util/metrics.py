"""Segmentation and cell-detection metrics, including the OCELOT 2023 challenge metric.

OCELOT rule (``cell_detection_scores``), reproducing the official evaluation script of the OCELOT 2023
challenge (``ocelot23algo/evaluation/eval.py``, final version):

* per image and per class (1 = BC, 2 = TC), predictions are sorted by decreasing confidence
  (``np.argsort(-confidence)``, as in the official script);
* each prediction is matched to the **nearest still-unmatched** ground-truth cell of the **same class** whose
  Euclidean distance is ``<= cutoff`` (inclusive; the final cut-off is 15 px at ~0.2 µm/px ≈ 3 µm); that cell
  is then removed from further matching. A prediction with no such cell is a false positive; ground-truth
  cells left unmatched are false negatives;
* TP, FP and the number of ground-truth cells are **summed over all images per class**, then
  ``P = TP / (TP + FP + 1e-7)``, ``R = TP / (N_gt + 1e-7)``, ``F1 = 2PR / (P + R + 1e-7)`` and each is rounded
  to 4 decimals (the official script's epsilons and rounding; ``rounding=None`` switches rounding off);
* ``mF1`` is the mean of the BC and TC F1.

Consequences of the official rule worth knowing: no predictions and no ground truth for a class gives
P = R = F1 = 0 for that class (not 1); a prediction's class is taken as given (a cell predicted with the wrong
class is an FP of its class and leaves an FN in the other).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

#: OCELOT class index -> name (index 0 is "no cell" in masks and is not scored).
CLASS_NAMES: dict[int, str] = {1: "BC", 2: "TC"}
#: The challenge's final matching cut-off in pixels, defined at the cell patches' resolution.
OFFICIAL_CUTOFF_PX: float = 15.0
#: The resolution (µm/px) the 15 px cut-off refers to; 15 px × 0.2 µm/px = 3 µm.
OFFICIAL_MPP: float = 0.2
OFFICIAL_CUTOFF_UM: float = OFFICIAL_CUTOFF_PX * OFFICIAL_MPP
_EPS = 1e-7


def cutoff_px(mpp: float, cutoff_um: float = OFFICIAL_CUTOFF_UM) -> float:
    """Matching cut-off in pixels for an image at ``mpp`` µm/px (15 px at 0.2 µm/px)."""
    if not mpp or mpp <= 0 or not np.isfinite(mpp):
        raise ValueError(f"cutoff_px: mpp must be a positive finite number (µm/px), got {mpp!r}")
    return float(cutoff_um) / float(mpp)


def _as_points(a, ncols: int, what: str, index: int) -> np.ndarray:
    arr = np.asarray(a.detach().cpu().numpy() if isinstance(a, Tensor) else a, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, ncols), np.float64)
    if arr.ndim != 2 or arr.shape[1] < ncols:
        raise ValueError(
            f"cell_detection_scores: {what}[{index}] must be an array of shape (N, {ncols}) "
            f"({'x, y, class, confidence' if ncols == 4 else 'x, y, class'}), got shape {arr.shape}"
        )
    if not np.isfinite(arr[:, :ncols]).all():
        raise ValueError(f"cell_detection_scores: {what}[{index}] contains NaN or inf")
    return arr[:, :ncols]


def _match_one(pred: np.ndarray, gt: np.ndarray, cutoff: float) -> tuple[int, int, int]:
    """TP, FP, number of GT for one image and one class (pred N×3: x, y, conf; gt M×2: x, y)."""
    num_pred, num_gt = len(pred), len(gt)
    if num_pred == 0:
        return 0, 0, num_gt
    if num_gt == 0:
        return 0, num_pred, 0
    # float32 like the official script (its arrays are np.float32), so boundary cases round the same way
    pred, gt = pred.astype(np.float32), gt.astype(np.float32)
    distance = np.linalg.norm(pred[:, None, :2] - gt[None, :, :2], axis=2)
    order = np.argsort(-pred[:, 2])  # same call as the official script
    available = distance <= cutoff
    tp = fp = 0
    for i in order:
        neighbours = available[i].nonzero()[0]
        if len(neighbours) == 0:
            fp += 1
        else:
            j = min(neighbours, key=lambda k: distance[i, k])
            tp += 1
            available[:, j] = False
    return tp, fp, num_gt


def cell_detection_scores(predictions: Sequence, ground_truth: Sequence,
                          cutoff: float | Sequence[float] = OFFICIAL_CUTOFF_PX,
                          rounding: int | None = 4) -> dict:
    """The OCELOT 2023 cell-detection metric (see the module docstring for the exact rule).

    Args:
        predictions: one item per image, each an array ``N×4`` (x, y, class, confidence); class 1 = BC, 2 = TC
            (other classes are ignored, as in the official script).
        ground_truth: one item per image, each an array ``M×3`` (x, y, class).
        cutoff: matching distance in pixels (inclusive), one number or one per image (e.g. from
            :func:`cutoff_px` when images differ in resolution).
        rounding: decimals P/R/F1 are rounded to (4 in the official script); ``None`` keeps full precision.

    Returns:
        ``{"BC": {"precision", "recall", "f1", "tp", "fp", "fn"}, "TC": {...}, "mF1": float}``.
    """
    if len(predictions) != len(ground_truth):
        raise ValueError(f"cell_detection_scores: {len(predictions)} prediction lists but "
                         f"{len(ground_truth)} ground-truth lists; need one of each per image")
    n = len(ground_truth)
    cutoffs = [float(cutoff)] * n if np.isscalar(cutoff) else [float(c) for c in cutoff]
    if len(cutoffs) != n:
        raise ValueError(f"cell_detection_scores: {len(cutoffs)} cut-offs for {n} images")
    if any(c < 0 for c in cutoffs):
        raise ValueError(f"cell_detection_scores: cut-off must be >= 0, got {cutoff!r}")
    totals = {c: [0, 0, 0] for c in CLASS_NAMES}  # tp, fp, n_gt
    for idx, (p, g) in enumerate(zip(predictions, ground_truth)):
        pred = _as_points(p, 4, "predictions", idx)
        gt = _as_points(g, 3, "ground_truth", idx)
        for cls in CLASS_NAMES:
            pc = pred[pred[:, 2] == cls][:, [0, 1, 3]]
            gc = gt[gt[:, 2] == cls][:, :2]
            tp, fp, ng = _match_one(pc, gc, cutoffs[idx])
            totals[cls][0] += tp
            totals[cls][1] += fp
            totals[cls][2] += ng

    def r(v: float) -> float:
        return float(round(v, rounding)) if rounding is not None else float(v)

    out: dict = {}
    for cls, name in CLASS_NAMES.items():
        tp, fp, ng = totals[cls]
        precision = tp / (tp + fp + _EPS)
        recall = tp / (ng + _EPS)
        f1 = 2 * precision * recall / (precision + recall + _EPS)
        out[name] = {"precision": r(precision), "recall": r(recall), "f1": r(f1),
                     "tp": int(tp), "fp": int(fp), "fn": int(ng - tp)}
    out["mF1"] = float(sum(out[name]["f1"] for name in CLASS_NAMES.values()) / len(CLASS_NAMES))
    return out


def flatten_scores(scores: dict, prefix: str = "") -> dict[str, float]:
    """``{"BC": {"f1": ..}, "mF1": ..}`` -> ``{"prefixBC/f1": .., "prefixmF1": ..}`` (for loggers/tables)."""
    flat: dict[str, float] = {}
    for k, v in scores.items():
        if isinstance(v, dict):
            for k2, v2 in v.items():
                flat[f"{prefix}{k}/{k2}"] = v2
        else:
            flat[f"{prefix}{k}"] = v
    return flat


# --------------------------------------------------------------------------------------------- detection
def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``x[B, C, H, W]`` with reflect padding (no-op for sigma <= 0)."""
    if sigma <= 0:
        return x
    radius = max(1, int(round(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    pad_h = min(radius, x.shape[-2] - 1)
    pad_w = min(radius, x.shape[-1] - 1)
    kx = k.view(1, 1, 1, -1).repeat(c, 1, 1, 1)
    ky = k.view(1, 1, -1, 1).repeat(c, 1, 1, 1)
    if pad_w == radius:
        x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kx, groups=c)
    if pad_h == radius:
        x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), ky, groups=c)
    return x


@torch.no_grad()
def detect_cells(probs: Tensor | np.ndarray, min_distance: int = 3, threshold: float = 0.5,
                 sigma: float = 1.0) -> np.ndarray:
    """Cells from class probability maps: smoothing, local maxima, one class and confidence per cell.

    Args:
        probs: ``(C, H, W)`` softmax probabilities, channel 0 = no cell, 1 = BC, 2 = TC (more channels allowed).
        min_distance: a peak must be the maximum in a ``(2·min_distance+1)²`` window (pixels), so two detected
            cells are at least ``min_distance`` px apart (ties on plateaus are thinned to one per window).
        threshold: minimum smoothed cell probability ``1 - p(no cell)`` at a peak.
        sigma: Gaussian smoothing (pixels) before peak finding.

    Returns:
        ``N×4`` float array (x, y, class, confidence): x = column, y = row; class = argmax over the cell
        classes at the peak; confidence = smoothed cell probability at the peak.
    """
    p = torch.as_tensor(probs, dtype=torch.float32)
    if p.dim() != 3 or p.shape[0] < 2:
        raise ValueError(f"detect_cells: expected probabilities of shape (C>=2, H, W), got {tuple(p.shape)}")
    if min_distance < 1:
        raise ValueError(f"detect_cells: min_distance must be >= 1 pixel, got {min_distance}")
    p = _gaussian_blur(p.unsqueeze(0), sigma)[0]
    fg = 1.0 - p[0]
    k = 2 * int(min_distance) + 1
    pooled = F.max_pool2d(fg[None, None], k, stride=1, padding=k // 2)[0, 0]
    peaks = (fg == pooled) & (fg >= threshold)
    ys, xs = torch.nonzero(peaks, as_tuple=True)
    if len(ys) == 0:
        return np.zeros((0, 4), np.float64)
    conf = fg[ys, xs]
    # thin plateaus: keep peaks in order of confidence, dropping any closer than min_distance to a kept one
    order = torch.argsort(conf, descending=True, stable=True)
    ys, xs, conf = ys[order], xs[order], conf[order]
    cls = p[1:, ys, xs].argmax(0) + 1
    keep = _thin(xs.numpy(), ys.numpy(), float(min_distance))
    out = np.stack([xs.numpy()[keep], ys.numpy()[keep], cls.numpy()[keep], conf.numpy()[keep]], axis=1)
    return out.astype(np.float64)


def _thin(xs: np.ndarray, ys: np.ndarray, min_distance: float) -> np.ndarray:
    """Indices of points kept greedily (in the given order) so that no two are closer than ``min_distance``."""
    kept: list[int] = []
    pts = np.stack([xs, ys], 1).astype(np.float64)
    for i in range(len(pts)):
        if kept:
            d = np.linalg.norm(pts[kept] - pts[i], axis=1)
            if (d < min_distance).any():
                continue
        kept.append(i)
    return np.asarray(kept, dtype=np.int64)


# ------------------------------------------------------------------------------------------ segmentation
class SegmentationAccumulator:
    """Per-class Dice and IoU over many batches of label maps, computed by torchmetrics.

    Dice: ``torchmetrics.segmentation.DiceScore`` (global aggregation: counts summed over all pixels of all
    images). IoU: ``torchmetrics.classification.MulticlassJaccardIndex`` (global confusion matrix). A class
    absent from both predictions and targets is reported as NaN (undefined) instead of torchmetrics' 0.
    """

    def __init__(self, num_classes: int = 3):
        from torchmetrics.classification import MulticlassJaccardIndex
        from torchmetrics.segmentation import DiceScore

        self.num_classes = num_classes
        # sync_on_compute=False: counts are local to this process (evaluation runs on one rank; in DDP every
        # rank validates the full validation set), so no collective call may happen here
        self.dice = DiceScore(num_classes=num_classes, include_background=True, average="none",
                              aggregation_level="global", input_format="index", sync_on_compute=False)
        self.iou = MulticlassJaccardIndex(num_classes=num_classes, average="none", sync_on_compute=False)
        self.present = torch.zeros(num_classes, dtype=torch.bool)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch: ``pred`` and ``target`` are ``(B, H, W)`` class indices."""
        if pred.shape != target.shape or pred.dim() != 3:
            raise ValueError(f"SegmentationAccumulator: expected pred and target of shape (B, H, W), "
                             f"got {tuple(pred.shape)} and {tuple(target.shape)}")
        pred, target = pred.detach().long().cpu(), target.detach().long().cpu()
        self.dice.update(pred, target)
        self.iou.update(pred, target)
        for c in range(self.num_classes):
            self.present[c] |= bool(((pred == c) | (target == c)).any())

    def compute(self) -> dict[str, dict[str, float]]:
        """``{"dice": {"background": .., "BC": .., "TC": ..}, "iou": {...}}``."""
        dice = self.dice.compute().reshape(-1)
        iou = self.iou.compute().reshape(-1)
        names = ["background"] + [CLASS_NAMES.get(c, f"class{c}") for c in range(1, self.num_classes)]
        out: dict[str, dict[str, float]] = {"dice": {}, "iou": {}}
        for c, name in enumerate(names):
            ok = bool(self.present[c])
            out["dice"][name] = float(dice[c]) if ok else float("nan")
            out["iou"][name] = float(iou[c]) if ok else float("nan")
        return out


def segmentation_scores(pred: Tensor, target: Tensor, num_classes: int = 3) -> dict[str, dict[str, float]]:
    """Dice and IoU per class of one batch ``(B, H, W)`` of label maps (see :class:`SegmentationAccumulator`)."""
    acc = SegmentationAccumulator(num_classes)
    acc.update(pred, target)
    return acc.compute()


__all__ = ["CLASS_NAMES", "OFFICIAL_CUTOFF_PX", "OFFICIAL_CUTOFF_UM", "cutoff_px", "cell_detection_scores",
           "flatten_scores", "detect_cells", "segmentation_scores", "SegmentationAccumulator"]
