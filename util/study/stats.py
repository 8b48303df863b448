"""Statistics of the report: mF1 from counts, bootstrap intervals over (seed, test image), curves.

OCELOT rule on summed counts, per class c ∈ {BC, TC} (the official epsilons, ε = 1e-7, no rounding)::

    P = TP / (TP + FP + ε),  R = TP / (TP + FN + ε),  F1 = 2PR / (P + R + ε),  mF1 = (F1_BC + F1_TC) / 2

Counts of one test set are an array ``(S seeds, I images, 2 classes, 3)`` (last axis TP, FP, FN).

Bootstrap (percentile, ``B`` replicates, fixed RNG seed): a replicate draws ``S`` seeds and ``I`` test images
with replacement, the same images for every drawn seed (all seeds are scored on the same test set). With image
weights ``w_i`` (how often image i was drawn) and seed weights ``v_s``::

    value = Σ_s v_s · mF1( Σ_i w_i · counts[s, i] ) / S

The interval is the 2.5 and 97.5 percentiles of the replicates; the point estimate is the plain mean over
seeds of each seed's mF1 on the whole test set. A paired difference (contrast) uses the same draws for both
arms (same seed, same images) and bootstraps ``mF1_A − mF1_B``.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Mapping, Sequence

import numpy as np

from util.metrics import _EPS as OCELOT_EPS
from util.ocelot.classes import CELL_CLASSES

CLASSES = tuple(CELL_CLASSES.values())  #: ("BC", "TC"), in label order


def f1_from_counts(counts: np.ndarray) -> np.ndarray:
    """F1 per class from ``(..., 3)`` counts (TP, FP, FN) by the OCELOT rule (see the module docstring)."""
    counts = np.asarray(counts, dtype=np.float64)
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    p = tp / (tp + fp + OCELOT_EPS)
    r = tp / (tp + fn + OCELOT_EPS)
    return 2 * p * r / (p + r + OCELOT_EPS)


def mf1_from_counts(counts: np.ndarray) -> np.ndarray:
    """mF1 from ``(..., 2, 3)`` counts: the mean over the class axis of :func:`f1_from_counts`."""
    return f1_from_counts(counts).mean(axis=-1)


def counts_array(records: Sequence[Mapping[str, Any]], test_set: str = "test",
                 ids: Sequence[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """``(S, I, 2, 3)`` counts of ``test_set`` from points records (one per seed), over ``ids`` (default: the
    image ids every record has)."""
    tables = [r["test_sets"][test_set] for r in records]
    if ids is None:
        ids = sorted(set.intersection(*(set(t["ids"]) for t in tables))) if tables else []
    ids = list(ids)
    out = np.zeros((len(tables), len(ids), len(CLASSES), 3))
    for s, t in enumerate(tables):
        pos = {i: k for k, i in enumerate(t["ids"])}
        for j, image in enumerate(ids):
            for c, name in enumerate(CLASSES):
                out[s, j, c] = t[name][pos[image]]
    return out, ids


def _draws(n_seeds: int, n_images: int, replicates: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seed weights ``(B, S)`` and image weights ``(B, I)``: multinomial counts of draws with replacement."""
    rng = np.random.default_rng(seed)
    v = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=replicates)
    w = rng.multinomial(n_images, np.full(n_images, 1.0 / n_images), size=replicates)
    return v, w


def _replicate_mf1(counts: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``(B, S)`` mF1 of each seed on each replicate's image draw."""
    return mf1_from_counts(np.einsum("bi,sick->bsck", w, counts))


def interval(replicates: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates."""
    a = (1 - level) / 2 * 100
    lo, hi = np.percentile(replicates, [a, 100 - a])
    return float(lo), float(hi)


def bootstrap_mf1(counts: np.ndarray, replicates: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Mean over seeds of mF1 and its 95 % bootstrap interval over (seed, test image)."""
    s, i = counts.shape[:2]
    if s == 0 or i == 0:
        return {"estimate": math.nan, "low": math.nan, "high": math.nan, "replicates": np.array([])}
    v, w = _draws(s, i, replicates, seed)
    reps = (v * _replicate_mf1(counts, w)).sum(axis=1) / s
    lo, hi = interval(reps)
    return {"estimate": float(mf1_from_counts(counts.sum(axis=1)).mean()), "low": lo, "high": hi,
            "replicates": reps}


def bootstrap_paired(counts_a: np.ndarray, counts_b: np.ndarray, replicates: int = 2000,
                     seed: int = 0) -> dict[str, Any]:
    """Paired difference ``mF1_A − mF1_B`` (same seeds, same images, same draws) with its 95 % interval."""
    if counts_a.shape != counts_b.shape:
        raise ValueError(f"paired counts must have the same shape, got {counts_a.shape} and {counts_b.shape}")
    s, i = counts_a.shape[:2]
    if s == 0 or i == 0:
        return {"estimate": math.nan, "low": math.nan, "high": math.nan, "replicates": np.array([])}
    v, w = _draws(s, i, replicates, seed)
    diff = _replicate_mf1(counts_a, w) - _replicate_mf1(counts_b, w)
    reps = (v * diff).sum(axis=1) / s
    lo, hi = interval(reps)
    est = mf1_from_counts(counts_a.sum(axis=1)) - mf1_from_counts(counts_b.sum(axis=1))
    return {"estimate": float(est.mean()), "low": lo, "high": hi, "replicates": reps}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``; NaN for fewer than two values) of the finite values."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if len(x) == 0:
        return math.nan, math.nan
    return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else math.nan


# ============================================================================================ curves
def first_reach(history: Mapping[str, Sequence[float]], target: float | None, key: str = "elapsed_s") -> float:
    """``key`` (seconds or steps) of the first validation with ``val_mF1 >= target`` (NaN: never reached)."""
    if target is None:
        return math.nan
    for x, m in zip(history.get(key, []), history.get("val_mF1", [])):
        if m is not None and np.isfinite(m) and m >= target:
            return float(x)
    return math.nan


def median_curve_by_step(histories: Sequence[Mapping[str, Sequence[float]]]) -> tuple[np.ndarray, np.ndarray]:
    """Validation steps present in every history and the median val mF1 over histories at each."""
    if not histories:
        return np.array([]), np.array([])
    steps = sorted(set.intersection(*(set(h["step"]) for h in histories)))
    values = [[dict(zip(h["step"], h["val_mF1"]))[s] for s in steps] for h in histories]
    return np.asarray(steps, dtype=float), np.median(np.asarray(values, dtype=float), axis=0)


def step_value(history: Mapping[str, Sequence[float]], t: np.ndarray) -> np.ndarray:
    """The latest validation's mF1 at each time ``t`` (a step function: NaN before the first validation, the
    last value after the run ended)."""
    x = np.asarray(history["elapsed_s"], dtype=float)
    y = np.asarray(history["val_mF1"], dtype=float)
    if len(y) == 0:
        return np.full(len(t), np.nan)
    idx = np.searchsorted(x, t, side="right") - 1
    return np.where(idx >= 0, y[np.maximum(idx, 0)], np.nan)


def median_curve_by_time(histories: Sequence[Mapping[str, Sequence[float]]], n: int = 200
                         ) -> tuple[np.ndarray, np.ndarray]:
    """A time grid up to the longest history and the median over histories of :func:`step_value`."""
    hs = [h for h in histories if len(h.get("elapsed_s", []))]
    if not hs:
        return np.array([]), np.array([])
    t = np.linspace(0.0, max(max(h["elapsed_s"]) for h in hs), n)
    values = np.stack([step_value(h, t) for h in hs])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns before any first validation
        return t, np.nanmedian(values, axis=0)
