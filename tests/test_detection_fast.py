"""Fast detection and matching (``util.metrics.detect_cells`` / ``_match_one``) against the previous code.

The reference below is a verbatim transcription of ``util/metrics.py`` at commit 9d26ef6 (quadratic ``_thin``,
dense ``_match_one``), only renamed ``ref_*``. Every comparison is exact (``np.array_equal``, equal counts).
Speed is measured in ``benchmarks/detection.py``, not here.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from scipy.spatial import cKDTree
from torch import Tensor

from util.metrics import _gaussian_blur, _greedy_1d, _half_widths, _match_one, detect_cells


# ----------------------------------------------------------------------- reference (verbatim, renamed ref_*)
def ref_match_one(pred: np.ndarray, gt: np.ndarray, cutoff: float) -> tuple[int, int, int]:
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


@torch.no_grad()
def ref_detect_cells(probs: Tensor | np.ndarray, min_distance: int = 3, threshold: float = 0.5,
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
    keep = ref_thin(xs.numpy(), ys.numpy(), float(min_distance))
    out = np.stack([xs.numpy()[keep], ys.numpy()[keep], cls.numpy()[keep], conf.numpy()[keep]], axis=1)
    return out.astype(np.float64)


def ref_thin(xs: np.ndarray, ys: np.ndarray, min_distance: float) -> np.ndarray:
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


# ------------------------------------------------------------------------------------------------- maps
def smooth_softmax_map(seed: int, h: int, w: int, smooth: float = 2.5, scale: float = 12.0) -> Tensor:
    """An "ordinary" map: softmax over 3 channels of smoothed Gaussian noise (no-cell channel biased up)."""
    rng = np.random.default_rng(seed)
    logits = np.stack([ndimage.gaussian_filter(rng.standard_normal((h, w)), smooth) for _ in range(3)])
    logits = logits / logits.std() * scale / 4
    logits[0] += 0.5
    return torch.softmax(torch.tensor(logits, dtype=torch.float32), 0)


def quantised_map(seed: int, h: int, w: int, levels: int, smooth: float) -> Tensor:
    """A map with plateaus: the foreground probability rounded to ``levels`` values (exact ties)."""
    probs = smooth_softmax_map(seed, h, w, smooth=smooth)
    fg = torch.round((1 - probs[0]) * (levels - 1)) / (levels - 1)
    return torch.stack([1 - fg, fg * 0.6, fg * 0.4])


def flat_map(h: int, w: int, fg: float = 0.8) -> Tensor:
    """Every pixel the same probabilities: with ``sigma=0`` every pixel is a candidate peak."""
    return torch.tensor([1 - fg, 0.5 * fg, 0.5 * fg], dtype=torch.float32)[:, None, None].repeat(1, h, w)


def patches_map(seed: int, h: int, w: int) -> Tensor:
    """Small flat squares and discs of equal value on a weak smooth background (ties inside a patch)."""
    rng = np.random.default_rng(seed)
    fg = 0.3 * (1 - smooth_softmax_map(seed, h, w)[0].numpy())
    yy, xx = np.mgrid[:h, :w]
    for _ in range(12):
        y, x, r = rng.integers(0, h), rng.integers(0, w), rng.integers(1, 7)
        v = rng.choice([0.7, 0.9])
        if rng.random() < 0.5:
            fg[max(0, y - r):y + r, max(0, x - r):x + r] = v
        else:
            fg[(yy - y) ** 2 + (xx - x) ** 2 <= r * r] = v
    fg = torch.tensor(fg, dtype=torch.float32)
    return torch.stack([1 - fg, fg * rng.random(), fg * rng.random()])


# -------------------------------------------------------------------------------------------- detection
ORDINARY = [  # (h, w, min_distance, threshold, sigma, smooth): sizes incl. non-square, min_distance 1..8
    (64, 64, 1, 0.5, 1.0, 2.0), (64, 64, 2, 0.3, 1.0, 2.0), (96, 64, 3, 0.5, 1.0, 2.5), (64, 96, 4, 0.4, 0.0, 2.5),
    (128, 128, 5, 0.5, 1.0, 3.0), (128, 80, 6, 0.2, 2.0, 3.0), (80, 128, 7, 0.5, 1.0, 4.0),
    (128, 128, 8, 0.5, 1.0, 4.0), (200, 150, 3, 0.5, 1.0, 2.0), (150, 200, 8, 0.6, 1.5, 3.0),
    (256, 256, 3, 0.5, 1.0, 2.5), (256, 192, 8, 0.5, 1.0, 3.5), (33, 47, 2, 0.1, 0.5, 1.5),
    (47, 33, 5, 0.3, 0.0, 1.5), (1, 64, 3, 0.2, 0.0, 2.0), (64, 1, 3, 0.2, 0.0, 2.0), (5, 7, 8, 0.0, 0.0, 1.0),
    (120, 120, 1, 0.0, 0.0, 1.0), (120, 90, 2, 0.0, 1.0, 1.0), (90, 120, 4, 0.45, 1.0, 2.0),
    (160, 160, 6, 0.5, 1.0, 2.5), (100, 300, 7, 0.35, 1.0, 3.0), (300, 100, 5, 0.5, 1.0, 3.0),
    (448, 448, 8, 0.5, 1.0, 4.0),
]


@pytest.mark.parametrize("seed,case", list(enumerate(ORDINARY)))
def test_detect_cells_equals_reference_on_ordinary_maps(seed, case):
    h, w, md, thr, sigma, smooth = case
    probs = smooth_softmax_map(seed, h, w, smooth=smooth)
    new = detect_cells(probs, min_distance=md, threshold=thr, sigma=sigma)
    ref = ref_detect_cells(probs, min_distance=md, threshold=thr, sigma=sigma)
    assert new.dtype == ref.dtype and new.shape == ref.shape
    assert np.array_equal(new, ref)


PLATEAUS = [  # (kind, seed, h, w, min_distance, sigma): exact ties, incl. non-integer min_distance
    ("quantised", 0, 64, 64, 3, 0.0), ("quantised", 1, 64, 96, 5, 0.0), ("quantised", 2, 96, 64, 8, 0.0),
    ("quantised", 3, 80, 80, 2, 1.0), ("quantised", 4, 64, 64, 2.5, 0.0), ("quantised", 5, 72, 56, 3.7, 0.0),
    ("quantised", 6, 64, 64, 1.5, 0.0), ("quantised", 7, 64, 64, 6, 1.0),
    ("patches", 0, 96, 96, 3, 0.0), ("patches", 1, 96, 64, 4, 0.0), ("patches", 2, 64, 96, 7, 0.0),
    ("patches", 3, 96, 96, 2.2, 0.0), ("patches", 4, 96, 96, 5, 1.0),
    ("flat", 0, 64, 64, 3, 0.0), ("flat", 0, 64, 64, 8, 0.0), ("flat", 0, 48, 80, 5.5, 0.0),
    ("flat", 0, 64, 64, 2, 1.0), ("flat", 0, 3, 40, 4, 0.0), ("flat", 0, 40, 1, 2, 0.0),
]


@pytest.mark.parametrize("kind,seed,h,w,md,sigma", PLATEAUS)
def test_detect_cells_equals_reference_with_plateaus(kind, seed, h, w, md, sigma):
    if kind == "quantised":
        probs = quantised_map(seed, h, w, levels=4 + seed % 3, smooth=1.5 + 0.5 * (seed % 3))
    elif kind == "patches":
        probs = patches_map(seed, h, w)
    else:
        probs = flat_map(h, w)
    new = detect_cells(probs, min_distance=md, threshold=0.5, sigma=sigma)
    ref = ref_detect_cells(probs, min_distance=md, threshold=0.5, sigma=sigma)
    assert len(ref) > 0
    assert new.dtype == ref.dtype and new.shape == ref.shape
    assert np.array_equal(new, ref)


@pytest.mark.parametrize("md", [1, 2, 3, 4.5, 8, 15, 100])
def test_half_widths_by_brute_force(md):
    """w(dy) = the largest dx with sqrt(dx² + dy²) < d, for every dy < d (capped at the image)."""
    h, w = 40, 30
    half = _half_widths(md, h, w)
    assert len(half) == min(int(np.ceil(md)), h)
    for dy, wd in enumerate(half):
        ok = [dx for dx in range(w) if np.sqrt(float(dx * dx + dy * dy)) < md]
        assert wd == max(ok)


def test_greedy_1d_equals_a_loop():
    rng = np.random.default_rng(0)
    for _ in range(200):
        x = np.sort(rng.choice(200, size=rng.integers(0, 60), replace=False))
        gap = int(rng.integers(0, 9))
        kept, last = [], None
        for i, v in enumerate(x):
            if last is None or v - last > gap:
                kept.append(i)
                last = v
        assert _greedy_1d(x, gap).tolist() == kept


@pytest.mark.parametrize("md", [3, 8])
def test_detect_cells_flat_1024(md):
    """A flat 1024² map (every pixel a candidate): kept points pairwise >= d apart and every pixel within < d of
    one (the greedy leaves no gap), all of the flat confidence, in row-major order; for d = 3 the 3-px grid."""
    n = 1024
    det = detect_cells(flat_map(n, n), min_distance=md, threshold=0.5, sigma=0.0)
    xy = det[:, :2]
    assert (det[:, 3] == det[0, 3]).all() and (det[:, 2] == 1).all()
    assert np.array_equal(np.lexsort((xy[:, 0], xy[:, 1])), np.arange(len(det)))  # ties keep row-major order
    tree = cKDTree(xy)
    assert not tree.query_pairs(md * (1 - 1e-9))  # no two kept points closer than d
    yy, xx = np.mgrid[:n, :n]
    dist, _ = tree.query(np.stack([xx.ravel(), yy.ravel()], 1), distance_upper_bound=md)
    assert (dist < md).all()  # maximal: each dropped pixel has a kept one closer than d
    if md == 3:
        grid = np.arange(0, n, 3)
        gx, gy = np.meshgrid(grid, grid)
        assert np.array_equal(xy, np.stack([gx.ravel(), gy.ravel()], 1).astype(float))


# --------------------------------------------------------------------------------------------- matching
def _random_points(rng: np.random.Generator, n: int, size: int, integer: bool) -> np.ndarray:
    xy = rng.integers(0, size, (n, 2)).astype(float) if integer else rng.uniform(0, size, (n, 2))
    return xy


@pytest.mark.parametrize("seed", range(40))
def test_match_one_equals_reference(seed):
    """Random sets: integer grids (many equal distances, points exactly at the cut-off), quantised confidences
    (ties in the sort), float coordinates, non-representable cut-offs, empty sides, more GT than predictions."""
    rng = np.random.default_rng(seed)
    integer = seed % 4 != 3
    size = int(rng.choice([20, 50, 120]))
    n_pred, n_gt = int(rng.integers(0, 150)), int(rng.integers(0, 150))
    if seed % 10 == 0:
        n_pred = 0 if seed % 20 == 0 else n_pred
        n_gt = 0 if seed % 20 == 10 else n_gt
    conf = rng.choice([0.5, 0.7, 0.9], n_pred) if seed % 2 else rng.random(n_pred)
    pred = np.concatenate([_random_points(rng, n_pred, size, integer), conf[:, None]], 1)
    gt = _random_points(rng, n_gt, size, integer)
    cutoffs = [0.0, 1.0, 5.0, 15.0, float(np.sqrt(50.0)), float(np.float32(np.sqrt(50.0))),
               3.0 / 0.23, float(rng.uniform(0, 20)), 1e6]
    for cutoff in cutoffs:
        assert _match_one(pred, gt, cutoff) == ref_match_one(pred, gt, cutoff), cutoff


def test_match_one_exact_cutoff_and_ties_by_hand():
    gt = np.array([[3.0, 4.0], [-3.0, 4.0], [0.0, 5.0], [5.0, 0.0]])
    pred = np.array([[0.0, 0.0, 0.9], [0.0, 0.0, 0.8], [0.0, 0.0, 0.8], [1.0, 1.0, 0.1]])
    for cutoff in (4.999, 5.0, 5.001):  # all four GT exactly at distance 5 of the first three predictions
        assert _match_one(pred, gt, cutoff) == ref_match_one(pred, gt, cutoff)
    assert _match_one(pred, gt, 5.0) == (4, 0, 4)


def test_match_one_many_predictions_vs_few_gt():
    """A flat-map prediction set (3-px grid, equal confidences) against 300 GT: same counts as the reference."""
    rng = np.random.default_rng(1)
    grid = np.arange(0, 300, 3, dtype=float)
    gx, gy = np.meshgrid(grid, grid)
    pred = np.stack([gx.ravel(), gy.ravel(), np.full(gx.size, 0.8)], 1)
    gt = rng.uniform(0, 300, (300, 2))
    for cutoff in (2.0, 15.0):
        assert _match_one(pred, gt, cutoff) == ref_match_one(pred, gt, cutoff)
