"""Colour-threshold + blob-size rule: the non-learned baseline every model must beat clearly.

    python benchmarks/baseline_rule.py [--root data/synthetic_ocelot] [--json out.json]

Rule, per image: (1) colour: haematoxylin optical density by colour deconvolution (Ruifrok & Johnston stain
vectors), thresholded per image with Otsu (``thr_scale`` × Otsu); (2) clean-up: 3×3 opening, holes filled;
(3) blobs: connected components; blobs smaller than ``min_area_um2`` are dropped; a blob is one cell at its
centroid, **tumour (2) when its area ≥ ``split_area_um2``**, else background (1); confidence = 1.
The three parameters are tuned by grid search on the *train* split (best mF1) and the score is reported on
*test* with the OCELOT metric ``util.metrics.cell_detection_scores`` (cut-off 3 µm, i.e. 15 px at 0.2 µm/px).
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from util.ocelot import (cell_csv_path, find_image, list_ids, read_cells_csv, read_image, read_metadata,  # noqa: E402
                         sample_mpp)

# Ruifrok & Johnston H, E, DAB optical-density vectors (RGB); the rows of the stain matrix.
_STAINS = np.array([[0.650, 0.704, 0.286], [0.072, 0.990, 0.105], [0.268, 0.570, 0.776]])
_STAINS = _STAINS / np.linalg.norm(_STAINS, axis=1, keepdims=True)
_UNMIX = np.linalg.inv(_STAINS)


def haematoxylin(image: np.ndarray) -> np.ndarray:
    """Haematoxylin concentration (optical density units) of an RGB uint8 image by colour deconvolution."""
    od = -np.log10((image.astype(np.float32) + 1.0) / 256.0)
    return (od.reshape(-1, 3) @ _UNMIX[:, 0].astype(np.float32)).reshape(image.shape[:2])


def _otsu(h: np.ndarray) -> float:
    lo, hi = float(np.percentile(h, 0.5)), float(np.percentile(h, 99.5))
    u8 = np.clip((h - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
    t, _ = cv2.threshold(u8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return lo + t / 255.0 * (hi - lo)


def blobs(image: np.ndarray, thr_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Centroids (K×2, x y) and areas (K, px) of the thresholded haematoxylin blobs."""
    h = haematoxylin(image)
    fg = (h > thr_scale * _otsu(h)).astype(np.uint8)
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    # fill holes: background not connected to the border becomes foreground
    inv = (1 - fg).astype(np.uint8)
    n, lab = cv2.connectedComponents(inv, connectivity=4)
    border = set(np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])).tolist())
    holes = ~np.isin(lab, list(border)) & (inv > 0)
    fg[holes] = 1
    n, lab, stats, cents = cv2.connectedComponentsWithStats(fg, connectivity=8)
    return cents[1:].astype(np.float64), stats[1:, cv2.CC_STAT_AREA].astype(np.float64)


def rule_predict(cents: np.ndarray, areas: np.ndarray, mpp: float, min_area_um2: float,
                 split_area_um2: float) -> np.ndarray:
    """N×4 predictions (x, y, class, confidence) from blobs."""
    a_um2 = areas * mpp * mpp
    keep = a_um2 >= min_area_um2
    cls = np.where(a_um2[keep] >= split_area_um2, 2, 1)
    return np.column_stack([cents[keep], cls, np.ones(keep.sum())]).reshape(-1, 4)


def _load(root: Path, split: str) -> list[tuple[np.ndarray, np.ndarray, float]]:
    meta = read_metadata(root)
    out = []
    for sid in list_ids(root, split):
        img = read_image(find_image(root, split, sid))
        pts = read_cells_csv(cell_csv_path(root, split, sid), shape=img.shape[:2])
        out.append((img, pts, sample_mpp(meta, sid)))
    return out


def evaluate(data, thr_scale: float, min_area: float, split_area: float, cache: dict) -> dict:
    from util.metrics import cell_detection_scores, cutoff_px

    preds, gts, cutoffs = [], [], []
    for i, (img, pts, mpp) in enumerate(data):
        key = (i, thr_scale)
        if key not in cache:
            cache[key] = blobs(img, thr_scale)
        preds.append(rule_predict(*cache[key], mpp, min_area, split_area))
        gts.append(pts)
        cutoffs.append(cutoff_px(mpp))
    return cell_detection_scores(preds, gts, cutoff=cutoffs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default="data/synthetic_ocelot")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    root = Path(args.root)
    t0 = time.perf_counter()
    train, test = _load(root, "train"), _load(root, "test")
    grid = {"thr_scale": [0.4, 0.5, 0.6, 0.8, 1.0, 1.2], "min_area_um2": [2.0, 5.0, 8.0, 12.0],
            "split_area_um2": [10.0, 14.0, 18.0, 22.0, 26.0, 30.0, 35.0, 40.0, 50.0]}
    cache_tr: dict = {}
    best = None
    for t, a, s in itertools.product(*grid.values()):
        if s <= a:
            continue
        sc = evaluate(train, t, a, s, cache_tr)
        if best is None or sc["mF1"] > best[0]:
            best = (sc["mF1"], t, a, s)
    _, t, a, s = best
    test_scores = evaluate(test, t, a, s, {})
    train_scores = evaluate(train, t, a, s, cache_tr)
    res = {"root": str(root), "params": {"thr_scale": t, "min_area_um2": a, "split_area_um2": s},
           "train_mF1": train_scores["mF1"], "test_mF1": test_scores["mF1"], "test": test_scores,
           "seconds": round(time.perf_counter() - t0, 1)}
    print(f"colour-threshold + blob-size rule on {root}")
    print(f"  tuned on train: thr = {t} × Otsu, min area {a} µm², tumour if area ≥ {s} µm²"
          f" (train mF1 {train_scores['mF1']:.4f})")
    for name in ("BC", "TC"):
        d = test_scores[name]
        print(f"  test {name}: P {d['precision']:.4f} R {d['recall']:.4f} F1 {d['f1']:.4f}")
    print(f"  test mF1 = {test_scores['mF1']:.4f}   ({res['seconds']} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
