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

from util.flatten import flatten_dict
from util.ocelot.classes import CELL_CLASSES

#: OCELOT class index -> name (index 0 is "no cell" in masks and is not scored).
CLASS_NAMES = CELL_CLASSES
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
    """TP, FP, number of GT for one image and one class (pred N×3: x, y, conf; gt M×2: x, y).

    The official rule, sparse: predictions in ``np.argsort(-conf)`` order each take the nearest still-unmatched
    GT with float32 distance ``<= cutoff`` (lowest GT index among equal distances). Only pairs within the
    cut-off matter, so a KD-tree finds them (radius padded, then the exact float32 test); a prediction
    without any pair is a false positive, and once every GT is matched all remaining predictions are too.
    """
    num_pred, num_gt = len(pred), len(gt)
    if num_pred == 0:
        return 0, 0, num_gt
    if num_gt == 0:
        return 0, num_pred, 0
    # float32 like the official script (its arrays are np.float32), so boundary cases round the same way
    pred, gt = pred.astype(np.float32), gt.astype(np.float32)
    order = np.argsort(-pred[:, 2])  # same call as the official script
    ii, jj = _pairs_within(pred[:, :2], gt[:, :2], cutoff)
    # the official distances: np.linalg.norm over (x, y) of the float32 differences, compared in float32
    distance = np.linalg.norm(pred[ii, :2] - gt[jj, :2], axis=1)
    ok = distance <= cutoff
    ii, jj, distance = ii[ok], jj[ok], distance[ok]
    if len(ii) == 0:
        return 0, num_pred, num_gt
    rank = np.empty(num_pred, np.int64)
    rank[order] = np.arange(num_pred)
    # per prediction (in matching order) its GT by increasing distance, then index: the first unmatched one
    # of that list is ``min(available neighbours, key=distance)``
    s = np.lexsort((jj, distance, rank[ii]))
    r, gts = rank[ii][s], jj[s].tolist()
    starts = np.flatnonzero(np.r_[True, r[1:] != r[:-1]]).tolist() + [len(r)]
    matched = bytearray(num_gt)
    tp = 0
    for a, b in zip(starts[:-1], starts[1:]):
        for j in gts[a:b]:
            if not matched[j]:
                matched[j] = 1
                tp += 1
                break
        if tp == num_gt:
            break
    return tp, num_pred - tp, num_gt


def _pairs_within(a: np.ndarray, b: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j) of all ``a[i]``, ``b[j]`` at Euclidean distance <= ``radius`` (a superset: the radius
    is padded by 1e-5 relative + 1e-5 absolute, more than float32 rounding of distance and cut-off can move)."""
    r = float(radius) * (1 + 1e-5) + 1e-5
    if not np.isfinite(r):  # infinite or NaN cut-off: every pair, the exact test decides
        ii, jj = np.meshgrid(np.arange(len(a)), np.arange(len(b)), indexing="ij")
        return ii.ravel(), jj.ravel()
    from scipy.spatial import cKDTree

    near = cKDTree(a.astype(np.float64)).query_ball_point(b.astype(np.float64), r)
    counts = np.array([len(x) for x in near], np.int64)
    ii = np.concatenate([np.asarray(x, np.int64) for x in near])
    jj = np.repeat(np.arange(len(b)), counts)
    return ii, jj


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
    return flatten_dict(scores, prefix, sep="/")


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
    # the k×k window maximum as a column then a row maximum (max is exact, so equal to one k×k pool, faster)
    pooled = F.max_pool2d(fg[None, None], (k, 1), stride=1, padding=(k // 2, 0))
    pooled = F.max_pool2d(pooled, (1, k), stride=1, padding=(0, k // 2))[0, 0]
    peaks = (fg == pooled) & (fg >= threshold)
    ys, xs = torch.nonzero(peaks, as_tuple=True)
    if len(ys) == 0:
        return np.zeros((0, 4), np.float64)
    # thin plateaus: keep peaks in order of confidence, dropping any closer than min_distance to a kept one
    # (computed as an equal row-major sweep by _thin, see there); output in order of confidence, stable
    keep = torch.from_numpy(_thin(peaks.numpy(), float(min_distance)))
    ys, xs = ys[keep], xs[keep]
    conf = fg[ys, xs]
    order = torch.argsort(conf, descending=True, stable=True)
    ys, xs, conf = ys[order], xs[order], conf[order]
    cls = p[1:, ys, xs].argmax(0) + 1
    out = np.stack([xs.numpy(), ys.numpy(), cls.numpy(), conf.numpy()], axis=1)
    return out.astype(np.float64)


def _thin(peaks: np.ndarray, min_distance: float) -> np.ndarray:
    """Keep mask (row-major order of ``peaks.nonzero()``) of the greedy thinning of window maxima.

    The greedy: visit the peaks by decreasing value, ties in row-major order, and drop a peak closer than
    ``d = min_distance`` (Euclidean, ``< d``) to a kept one. ``peaks`` must be maxima of their
    ``(2·int(d)+1)²`` windows, as in :func:`detect_cells`; then the greedy equals a row-major sweep:

    * two peaks at distance ``< d`` are at Chebyshev distance ``<= ceil(d) - 1 <= int(d)``, inside each other's
      window, so both being maxima means equal values; conflicting peaks are thus ordered row-major by the
      greedy, and a peak's fate (kept iff no kept conflicting peak precedes it) is the same in both orders;
    * a peak with no other peak in its ``(2R+1)²`` box (``R = ceil(d) - 1``) conflicts with none: kept;
    * the others row by row: blocked by kept peaks ``dy = 1..R`` rows up within ``|dx| <= w(dy)`` (the largest
      ``dx`` with ``sqrt(dx² + dy²) < d``, a cumulative-sum box test), then the 1-D greedy within the row.

    Cost O(H·W) for the box counts plus O(N·R + N log W) for the sweep (N peaks that have a close neighbour).
    """
    h, w = peaks.shape
    ys, xs = np.nonzero(peaks)
    keep = np.ones(len(ys), bool)
    half = _half_widths(min_distance, h, w)
    reach = len(half) - 1
    if len(ys) < 2 or (reach == 0 and half[0] == 0):  # d <= 1: distinct pixels never conflict
        return keep
    # peaks with another peak in their (2R+1)² box (a superset of those with one at distance < d)
    box = np.zeros((h + 1, w + 1), np.int32)
    box[1:, 1:] = peaks.cumsum(0, dtype=np.int32).cumsum(1)
    y0, y1 = np.maximum(ys - reach, 0), np.minimum(ys + reach + 1, h)
    x0, x1 = np.maximum(xs - half[0], 0), np.minimum(xs + half[0] + 1, w)
    count = box[y1, x1] - box[y0, x1] - box[y1, x0] + box[y0, x0]
    close = np.flatnonzero(count > 1)
    if len(close) == 0:
        return keep
    cy, cx = ys[close], xs[close]
    kept_close = np.zeros(len(close), bool)
    kept_rows: dict[int, np.ndarray] = {}  # row -> cumulative count of its kept (close) peaks, length w + 1
    starts = np.flatnonzero(np.r_[True, cy[1:] != cy[:-1]]).tolist() + [len(cy)]
    for a, b in zip(starts[:-1], starts[1:]):
        y, x = int(cy[a]), cx[a:b]
        free = np.ones(b - a, bool)
        for dy in range(1, reach + 1):
            c = kept_rows.get(y - dy)
            if c is not None:
                wd = half[dy]
                free &= c[np.minimum(x + wd + 1, w)] == c[np.maximum(x - wd, 0)]
        idx = np.flatnonzero(free)
        idx = idx[_greedy_1d(x[idx], int(half[0]))]
        if len(idx):
            kept_close[a + idx] = True
            row = np.zeros(w + 1, np.int32)
            row[x[idx] + 1] = 1
            kept_rows[y] = np.cumsum(row)
        for old in [r for r in kept_rows if r <= y - reach]:  # later rows look at most reach rows up
            del kept_rows[old]
    keep[close] = kept_close
    return keep


def _half_widths(min_distance: float, h: int, w: int) -> np.ndarray:
    """``w(dy)`` for ``dy = 0..R``: the largest integer ``dx`` with ``sqrt(dx² + dy²) < d`` (float64, the test
    the greedy uses), ``R = ceil(d) - 1``; both capped at the image size (larger offsets never occur)."""
    d = float(min_distance)
    n = int(min(np.ceil(d), max(h, w)))
    t = np.arange(n + 1, dtype=np.int64)
    dy = t[t.astype(np.float64) < d][:h]
    inside = np.sqrt((t[None, :w] ** 2 + dy[:, None] ** 2).astype(np.float64)) < d
    return inside.sum(1) - 1  # inside[dy] is an interval 0..w(dy) (sqrt increases with dx)


def _greedy_1d(x: np.ndarray, gap: int) -> np.ndarray:
    """Indices of the sorted integers ``x`` kept by the left-to-right greedy: keep ``x[i]`` iff
    ``x[i] - (last kept) > gap``.

    The kept ones are the chain ``0, nxt(0), nxt(nxt(0)), ...`` with ``nxt(i)`` = first index with
    ``x > x[i] + gap``; built by pointer doubling (``nxt^(2^k)``), O(n log n) in vector operations.
    """
    n = len(x)
    if n == 0 or (n > 1 and np.diff(x).min() > gap):
        return np.arange(n)
    nxt = np.append(np.searchsorted(x, x + gap, side="right"), n)  # index n: past the end, maps to itself
    jumps = [nxt]
    while (1 << len(jumps)) < n:
        jumps.append(jumps[-1][jumps[-1]])
    chain = np.zeros(1, np.int64)  # after level k: nxt^t(0) for all t < 2^(levels above k, inclusive)
    for jump in reversed(jumps):
        chain = np.concatenate([chain, jump[chain]])
        chain = chain[chain < n]
    return np.sort(chain)


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


__all__ = ["CLASS_NAMES", "OFFICIAL_CUTOFF_PX", "OFFICIAL_CUTOFF_UM", "cutoff_px", "cell_detection_scores",
           "flatten_scores", "detect_cells", "SegmentationAccumulator"]
