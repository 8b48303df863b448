"""Cell points → disk masks of a given radius in µm."""
from __future__ import annotations

import math

import numpy as np


def radius_px(radius_um: float, mpp: float) -> float:
    """A radius in µm as pixels at ``mpp`` µm/px."""
    if not (radius_um > 0 and mpp > 0):
        raise ValueError(f"radius_um ({radius_um}) and mpp ({mpp}) must be positive")
    return radius_um / mpp



def points_to_mask(points: np.ndarray, shape: tuple[int, int], radius_um: float, mpp: float) -> np.ndarray:
    """Per-class disk mask (int64 H×W: 0 no cell, else the class) from N×3 (x, y, class) points.

    A disk holds the pixels whose centre lies within ``radius_um / mpp`` pixels of the point. Overlaps are
    resolved deterministically: classes are drawn in ascending order, so a higher class (tumour, 2) wins over a
    lower one (background cell, 1); within a class the result does not depend on the order of the points.
    Points outside the image still paint the part of their disk that falls inside.
    """
    h, w = int(shape[0]), int(shape[1])
    mask = np.zeros((h, w), dtype=np.int64)
    pts = np.asarray(points).reshape(-1, 3)
    if len(pts) == 0:
        return mask
    r = radius_px(radius_um, mpp)
    R = int(math.ceil(r))
    dy, dx = np.mgrid[-R:R + 1, -R:R + 1]
    keep = dx * dx + dy * dy <= r * r + 1e-9
    dx, dy = dx[keep], dy[keep]
    xy = np.rint(pts[:, :2].astype(np.float64)).astype(np.int64)
    cls = pts[:, 2].astype(np.int64)
    for c in np.unique(cls):
        sel = xy[cls == c]
        xs = (sel[:, 0:1] + dx[None]).ravel()
        ys = (sel[:, 1:2] + dy[None]).ravel()
        inside = (xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)
        mask[ys[inside], xs[inside]] = c
    return mask
