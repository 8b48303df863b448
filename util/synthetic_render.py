"""One synthetic sample in memory (:func:`make_sample`; what is drawn and why: see :mod:`util.synthetic`): smooth
noise fields, dart-thrown cell centres, nuclei painted into haematoxylin/eosin density maps, the optical model
to RGB, and the sample's OCELOT-like metadata entry.

Every sample draws from its own ``numpy`` generator seeded by ``(seed, index)``, in a fixed order, so it is the
same for the same arguments.
"""
from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

#: Default resolution of the cell patches (µm/px); the tissue patches are at ``TISSUE_FACTOR`` × this.
DEFAULT_MPP = 0.2
TISSUE_FACTOR = 4
# Ruifrok & Johnston stain optical-density vectors (RGB order).
_H_VEC = np.array([0.650, 0.704, 0.286])
_E_VEC = np.array([0.072, 0.990, 0.105])


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise scaled to zero mean, unit std (float32).

    Wide filters are applied on a coarser grid and upsampled (same statistics, a fraction of the cost).
    """
    h, w = shape
    f = max(1, int(sigma // 3))
    hs, ws = -(-h // f), -(-w // f)
    n = rng.standard_normal((hs, ws), dtype=np.float32)
    n = cv2.GaussianBlur(n, (0, 0), sigmaX=max(sigma / f, 0.3), borderType=cv2.BORDER_REFLECT)
    if f > 1:
        n = cv2.resize(n, (ws * f, hs * f), interpolation=cv2.INTER_LINEAR)[:h, :w]
    return (n - n.mean()) / (n.std() + 1e-8)


def _place(rng: np.random.Generator, n_try: int, allowed: np.ndarray, radii_fn, gap_fn,
           existing: list[tuple[float, float, float]], margin: float) -> list[tuple[float, float, float]]:
    """Dart throwing: accept candidate centres inside ``allowed`` that keep their distance to all others."""
    h, w = allowed.shape
    out: list[tuple[float, float, float]] = []
    pts = np.array([(x, y, r) for x, y, r in existing], dtype=np.float64).reshape(-1, 3)
    for _ in range(n_try):
        x, y = rng.uniform(-margin, w - 1 + margin), rng.uniform(-margin, h - 1 + margin)
        xi, yi = int(round(min(max(x, 0), w - 1))), int(round(min(max(y, 0), h - 1)))
        if not allowed[yi, xi]:
            continue
        r = radii_fn()
        if len(pts):
            d = np.hypot(pts[:, 0] - x, pts[:, 1] - y)
            if np.any(d < pts[:, 2] + r + gap_fn()):
                continue
        out.append((x, y, r))
        pts = np.vstack([pts, [x, y, r]])
    return out


def _render_nucleus(H: np.ndarray, E: np.ndarray, grain: np.ndarray, rng: np.random.Generator, cx: float,
                    cy: float, a: float, b: float, phi: float, dens: float, vesicular: bool,
                    nucleoli: float, centre: float = 0.38) -> None:
    """Paint one nucleus (semi-axes a ≥ b px, angle phi) into the haematoxylin/eosin density maps in place."""
    hgt, wid = H.shape
    R = int(math.ceil(a * 1.25 + 2))
    x0, x1 = max(int(cx) - R, 0), min(int(cx) + R + 1, wid)
    y0, y1 = max(int(cy) - R, 0), min(int(cy) + R + 1, hgt)
    if x0 >= x1 or y0 >= y1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    c, s = math.cos(phi), math.sin(phi)
    u, v = (dx * c + dy * s) / a, (-dx * s + dy * c) / b
    rho = np.sqrt(u * u + v * v)
    theta = np.arctan2(v, u)
    k = int(rng.integers(2, 5))
    rho = rho * (1.0 + rng.uniform(0.03, 0.09) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)))
    edge = max(0.6 / b, 0.04)  # soft edge ~0.6 px
    alpha = np.clip((1.0 - rho) / edge + 0.5, 0.0, 1.0)
    g = grain[y0:y1, x0:x1]
    if vesicular:
        rim = np.clip((rho - 0.55) / 0.35, 0.0, 1.0)
        prof = dens * (centre + (0.93 - centre) * rim * rim) * (1.0 + 0.30 * g)
        for _ in range(int(nucleoli)):
            ang, rr = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.45)
            nx, ny = cx + rr * a * math.cos(ang), cy + rr * b * math.sin(ang)
            nr = max(0.14 * b, 1.2)
            prof = prof + dens * 0.75 * np.exp(-((xx - nx) ** 2 + (yy - ny) ** 2) / (2 * nr * nr))
    else:
        prof = dens * (0.92 + 0.08 * np.clip(1 - rho, 0, 1)) * (1.0 + 0.10 * g)
    Hs, Es = H[y0:y1, x0:x1], E[y0:y1, x0:x1]
    Hs[...] = Hs * (1 - alpha) + alpha * prof
    Es[...] = Es * (1 - 0.55 * alpha)


def _render_cell_patch(rng: np.random.Generator, size: int, mpp: float, cancer: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """One H&E-like cell patch (uint8 H×W×3) and its N×3 (x, y, class) cell points."""
    um = 1.0 / mpp  # px per µm
    S = size
    # ---- stroma and cytoplasm densities
    E = (0.30 + 0.06 * _smooth_noise(rng, (S, S), 6 * um) + 0.03 * _smooth_noise(rng, (S, S), 0.8 * um))
    H = 0.03 + 0.015 * _smooth_noise(rng, (S, S), 3 * um)
    fib = np.zeros((S, S), np.float32)
    theta0 = rng.uniform(0, np.pi)
    n_fib = int(rng.integers(25, 45) * (S / 512) ** 2 * (0.2 / mpp) ** 2) + 5
    for _ in range(n_fib):
        th = theta0 + rng.normal(0, 0.25)
        L = rng.uniform(15, 60) * um
        x, y = rng.uniform(0, S), rng.uniform(0, S)
        p0 = (int(round(x - L / 2 * math.cos(th))), int(round(y - L / 2 * math.sin(th))))
        p1 = (int(round(x + L / 2 * math.cos(th))), int(round(y + L / 2 * math.sin(th))))
        cv2.line(fib, p0, p1, float(rng.uniform(0.10, 0.25)), max(1, int(round(rng.uniform(0.6, 1.6) * um))),
                 cv2.LINE_AA)
    fib = cv2.GaussianBlur(fib, (0, 0), 0.5 * um)
    stroma = ~cancer
    E = E + fib * stroma
    E = E.astype(np.float32)
    H = H.astype(np.float32)
    grain = _smooth_noise(rng, (S, S), 0.35 * um)

    # ---- cells
    area_scale = (S * mpp / (512 * 0.2)) ** 2
    cells: list[tuple[float, float, int]] = []
    placed: list[tuple[float, float, float]] = []
    # tumour nests: dense, nuclei often touching, pale cytoplasm halo
    t_radius = lambda: rng.uniform(2.3, 4.0) * um  # noqa: E731
    tum = _place(rng, int(900 * area_scale), cancer, t_radius, lambda: rng.uniform(-0.3, 1.4) * um, [],
                 margin=2 * um)
    lymph_cluster = []
    # lymphocytes: some in small clusters (stroma), a few infiltrating the nests
    n_clusters = int(rng.integers(0, 3))
    for _ in range(n_clusters):
        lymph_cluster.append((rng.uniform(0, S), rng.uniform(0, S), rng.uniform(8, 14) * um))
    for (x, y, r) in tum:
        placed.append((x, y, r))
    bc_specs = []
    n_lym = int(rng.integers(8, 22) * area_scale)
    n_fibro = int(rng.integers(12, 26) * area_scale)
    lym = _place(rng, n_lym * 6, stroma, lambda: rng.uniform(2.1, 2.9) * um, lambda: 0.8 * um, placed,
                 margin=2 * um)[:n_lym]
    placed += lym
    for (lx, ly, lr) in lymph_cluster:
        ok = (np.arange(S)[None, :] - lx) ** 2 + (np.arange(S)[:, None] - ly) ** 2 < lr * lr
        got = _place(rng, 60, ok, lambda: rng.uniform(2.1, 2.9) * um, lambda: 0.5 * um, placed, margin=0)
        placed += got
        lym += got
    infil = _place(rng, int(rng.integers(5, 40) * area_scale), cancer, lambda: rng.uniform(2.1, 2.8) * um,
                   lambda: 0.3 * um, placed, margin=0)[: int(rng.integers(0, 7))]
    placed += infil
    lym += infil
    fibro = _place(rng, n_fibro * 6, stroma, lambda: rng.uniform(4.0, 7.0) * um, lambda: -1.5 * um, placed,
                   margin=2 * um)[:n_fibro]
    placed += fibro
    # large solid stromal nuclei (endothelial/macrophage-like): as big as tumour nuclei, but solid, no halo
    n_big = int(rng.integers(4, 12) * area_scale)
    big = _place(rng, n_big * 6, stroma, lambda: rng.uniform(3.0, 4.4) * um, lambda: 0.5 * um, placed,
                 margin=2 * um)[:n_big]
    placed += big

    # cytoplasm halos of tumour cells (drawn before nuclei)
    halo = np.zeros((S, S), np.float32)
    for (x, y, r) in tum:
        cv2.circle(halo, (int(round(x)), int(round(y))), int(round(r * rng.uniform(1.5, 1.9))),
                   float(rng.uniform(0.7, 1.0)), -1, cv2.LINE_AA)
    halo = cv2.GaussianBlur(halo, (0, 0), 0.7 * um)
    H += 0.10 * halo * (1 + 0.3 * grain)
    E = E * (1 - 0.35 * halo) + 0.12 * halo

    for (x, y, r) in tum:
        ratio = rng.uniform(0.72, 1.0)
        a, b = r / math.sqrt(ratio), r * math.sqrt(ratio)
        _render_nucleus(H, E, grain, rng, x, y, a, b, rng.uniform(0, np.pi), rng.uniform(0.85, 1.3), True,
                        int(rng.integers(1, 3)), centre=rng.uniform(0.35, 0.65))
        cells.append((x, y, 2))
    for (x, y, r) in big:
        ratio = rng.uniform(0.6, 0.9)
        a, b = r / math.sqrt(ratio), r * math.sqrt(ratio)
        _render_nucleus(H, E, grain, rng, x, y, a, b, rng.uniform(0, np.pi), rng.uniform(0.8, 1.2), False, 0)
        cells.append((x, y, 1))
    for (x, y, r) in lym:
        ratio = rng.uniform(0.85, 1.0)
        _render_nucleus(H, E, grain, rng, x, y, r / math.sqrt(ratio), r * math.sqrt(ratio), rng.uniform(0, np.pi),
                        rng.uniform(1.15, 1.55), False, 0)
        cells.append((x, y, 1))
    for (x, y, r) in fibro:
        ratio = rng.uniform(0.28, 0.45)
        a, b = r, r * ratio
        _render_nucleus(H, E, grain, rng, x, y, a, b, rng.uniform(0, np.pi), rng.uniform(0.95, 1.35), False, 0)
        cells.append((x, y, 1))

    # ---- stain variation and optical model
    h_vec = _unit(_H_VEC + rng.normal(0, 0.06, 3).clip(-0.15, 0.15))
    e_vec = _unit(np.abs(_E_VEC + rng.normal(0, 0.06, 3).clip(-0.15, 0.15)))
    h_vec = np.abs(h_vec)
    h_scale, e_scale = rng.uniform(0.65, 1.35), rng.uniform(0.6, 1.4)
    od = (H[..., None] * h_scale) * h_vec.astype(np.float32) + (E[..., None] * e_scale) * e_vec.astype(np.float32)
    light = rng.uniform(225, 252) * (1 + rng.normal(0, 0.02, 3))
    img = light.astype(np.float32) * np.power(10.0, -od, dtype=np.float32)
    img = cv2.GaussianBlur(img, (0, 0), max(0.15 * um, 0.4))  # optical blur ~0.15 µm
    img += 2.5 * rng.standard_normal(img.shape, dtype=np.float32)
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)

    pts = np.array([(int(round(x)), int(round(y)), c) for x, y, c in cells], dtype=np.int64).reshape(-1, 3)
    inside = (pts[:, 0] >= 0) & (pts[:, 0] < S) & (pts[:, 1] >= 0) & (pts[:, 1] < S)
    pts = pts[inside]
    order = np.lexsort((pts[:, 0], pts[:, 1]))
    return img, pts[order]


def _render_tissue_patch(rng: np.random.Generator, cancer: np.ndarray, mpp_t: float) -> np.ndarray:
    """A low-magnification H&E-like tissue patch for a cancer map (uint8 H×W×3)."""
    S = cancer.shape[0]
    um = 1.0 / mpp_t
    E = 0.32 + 0.06 * _smooth_noise(rng, cancer.shape, 10 * um) + 0.03 * _smooth_noise(rng, cancer.shape, 1.0)
    dots = (rng.random(cancer.shape, dtype=np.float32) < np.where(cancer, 0.20, 0.025)).astype(np.float32)
    nuc = cv2.GaussianBlur(dots, (0, 0), max(0.7 * um * 4 * 0.25, 0.8))
    nuc = nuc / (nuc.max() + 1e-6)
    H = 0.04 + 0.9 * nuc + 0.10 * cancer
    od = H[..., None].astype(np.float32) * _H_VEC.astype(np.float32) + \
        (E * np.where(cancer, 0.85, 1.0))[..., None].astype(np.float32) * _E_VEC.astype(np.float32)
    img = rng.uniform(230, 250) * np.power(10.0, -od)
    img += 2.0 * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def make_sample(seed: int, index: int, size: int, mpp: float = DEFAULT_MPP) -> dict[str, Any]:
    """Draw one synthetic sample (in memory): cell/tissue images, points, tissue mask, metadata entry."""
    rng = np.random.default_rng([int(seed), int(index)])
    S = int(size)
    mpp_t = mpp * TISSUE_FACTOR
    field = _smooth_noise(rng, (S, S), S / 18)
    frac = rng.uniform(0.3, 0.5)
    thr = float(np.quantile(field, 1 - frac))
    tissue_cancer = field > thr
    # window of the cell patch in tissue pixels: pick the candidate whose cancer fraction is nearest a target
    w = S / TISSUE_FACTOR
    target = rng.uniform(0.05, 0.9)
    best = None
    for _ in range(24):
        cx, cy = rng.uniform(w / 2, S - w / 2), rng.uniform(w / 2, S - w / 2)
        x0, y0 = int(round(cx - w / 2)), int(round(cy - w / 2))
        f = tissue_cancer[y0:y0 + int(w), x0:x0 + int(w)].mean()
        if best is None or abs(f - target) < best[0]:
            best = (abs(f - target), cx, cy)
    _, cx, cy = best
    # the field around the window, upsampled to the cell resolution (+ finer nest borders)
    mapx = (np.arange(S, dtype=np.float32) + 0.5) / TISSUE_FACTOR + (cx - w / 2) - 0.5
    mapy = (np.arange(S, dtype=np.float32) + 0.5) / TISSUE_FACTOR + (cy - w / 2) - 0.5
    fx, fy = np.meshgrid(mapx, mapy)
    cell_field = cv2.remap(field, fx, fy, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    cell_field = cell_field + 0.25 * _smooth_noise(rng, (S, S), 4.0 / mpp)
    cancer = cell_field > thr
    cell_img, pts = _render_cell_patch(rng, S, mpp, cancer)
    tissue_img = _render_tissue_patch(rng, tissue_cancer, mpp_t)
    tissue_mask = np.where(tissue_cancer, 2, 1).astype(np.uint8)
    # a slide position in level-0 (= cell resolution) pixels, for an OCELOT-like metadata entry
    sx, sy = int(rng.integers(5_000, 60_000)), int(rng.integers(5_000, 60_000))
    cell_x0 = sx + int(round((cx - w / 2) * TISSUE_FACTOR))
    cell_y0 = sy + int(round((cy - w / 2) * TISSUE_FACTOR))
    entry = {
        "organ": "synthetic",
        "slide_name": f"synthetic-s{seed}-{index:04d}",
        "mpp_x": mpp, "mpp_y": mpp,
        "cell": {"x_start": cell_x0, "y_start": cell_y0, "x_end": cell_x0 + S, "y_end": cell_y0 + S,
                 "resized_mpp_x": mpp, "resized_mpp_y": mpp},
        "tissue": {"x_start": sx, "y_start": sy, "x_end": sx + S * TISSUE_FACTOR, "y_end": sy + S * TISSUE_FACTOR,
                   "resized_mpp_x": mpp_t, "resized_mpp_y": mpp_t},
        "patch_x_offset": round(cx / S, 6), "patch_y_offset": round(cy / S, 6),
        "n_cells": {"1": int((pts[:, 2] == 1).sum()), "2": int((pts[:, 2] == 2).sum())},
    }
    return {"cell_image": cell_img, "points": pts, "tissue_image": tissue_img, "tissue_mask": tissue_mask,
            "meta": entry}


__all__ = ["DEFAULT_MPP", "TISSUE_FACTOR", "make_sample"]
