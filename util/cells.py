"""Cells from a trained model on an image at any resolution, and detection thresholds chosen on validation.

One path serves validation, test evaluation, ``util.evaluate --data-root`` and ``util.predict``:

1. :func:`probabilities` — the image is resampled to the resolution the model was trained at (``model_mpp``,
   µm/px) when its own ``mpp`` differs by more than ``RESAMPLE_TOLERANCE`` (10 %), predicted with the exact
   sliding window (``util.inference.predict_logits``), and the logits are resampled back to the image's own
   size before the softmax. Images within the tolerance are used as they are (detection and matching work in
   µm per image anyway), so evaluation on the training set's own resolution is unchanged.
2. :func:`detect` — cells (x, y, class, confidence) from the probability maps with the config's µm settings and a
   threshold that is one number or one per class (``{"BC": t1, "TC": t2}``).
3. :func:`choose_threshold` — the threshold (optionally per class) that maximises mF1 over a grid, on the
   validation split only.

Why a threshold sweep needs one detection only: a candidate peak is a maximum of its ``(2d+1)²`` window, so
two candidates closer than ``d`` have equal confidence; thinning therefore acts within groups of equal
confidence, and raising the threshold removes whole groups. Detecting once at the lowest threshold and keeping
the cells with ``confidence >= t`` gives exactly what detecting at ``t`` gives (a test checks it).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from util.inference import predict_logits
from util.metrics import CLASS_NAMES, cell_detection_scores, detect_cells

#: A detection threshold: one number for every class, or one per class name (``{"BC": 0.4, "TC": 0.6}``).
Threshold = Union[float, Mapping[str, float]]
#: Images whose µm/px is within this fraction of the model's training resolution are not resampled.
RESAMPLE_TOLERANCE = 0.10
#: The default grid of thresholds searched on validation.
DEFAULT_THRESHOLD_GRID: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))


# ------------------------------------------------------------------------------------------- thresholds
def class_thresholds(threshold: Threshold) -> dict[int, float]:
    """``0.5`` or ``{"BC": .., "TC": ..}`` -> ``{1: .., 2: ..}`` (class index -> threshold), checked in [0, 1]."""
    if isinstance(threshold, Mapping):
        missing = [n for n in CLASS_NAMES.values() if n not in threshold]
        if missing:
            raise ValueError(f"per-class threshold {dict(threshold)!r} lacks {', '.join(missing)}")
        out = {c: float(threshold[n]) for c, n in CLASS_NAMES.items()}
    elif isinstance(threshold, (int, float)) and not isinstance(threshold, bool):
        out = {c: float(threshold) for c in CLASS_NAMES}
    else:
        raise ValueError(f"detection threshold {threshold!r}: expected a number in [0, 1] or a mapping "
                         f"{{'BC': t, 'TC': t}} (resolve 'auto' with the run's chosen threshold first)")
    for c, t in out.items():
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"detection threshold for {CLASS_NAMES[c]} is {t}; expected a value in [0, 1]")
    return out


def apply_threshold(cells: np.ndarray, threshold: Threshold) -> np.ndarray:
    """The rows of ``cells`` (N×4: x, y, class, confidence) whose confidence reaches their class's threshold."""
    cells = np.asarray(cells, dtype=np.float64).reshape(-1, 4)
    per = class_thresholds(threshold)
    need = np.full(len(cells), np.inf)
    for c, t in per.items():
        need[cells[:, 2] == c] = t
    return cells[cells[:, 3] >= need]


def lowest_threshold(threshold: Threshold) -> float:
    return min(class_thresholds(threshold).values())


def detect(probs: Tensor, mpp: float, detection: Any, threshold: Threshold | None = None,
           min_distance_um: float | None = None) -> np.ndarray:
    """Cells (N×4: x, y, class, confidence) in one probability map ``(K, H, W)`` at ``mpp`` µm/px.

    ``detection`` is a :class:`util.config.DetectionConfig` (µm settings); ``threshold`` overrides its threshold
    (needed when that is ``"auto"``); ``min_distance_um`` overrides its minimum distance.
    """
    thr = detection.threshold if threshold is None else threshold
    md = detection.min_distance_um if min_distance_um is None else min_distance_um
    cells = detect_cells(probs.detach().float().cpu(), min_distance=max(1, int(round(md / mpp))),
                         threshold=lowest_threshold(thr), sigma=detection.sigma_um / mpp)
    return cells if isinstance(thr, (int, float)) else apply_threshold(cells, thr)


def choose_threshold(cells: Sequence[np.ndarray], ground_truth: Sequence[np.ndarray], cutoffs: Sequence[float],
                     grid: Sequence[float] = DEFAULT_THRESHOLD_GRID, per_class: bool = False,
                     tolerance: float = 0.0) -> tuple[Threshold, dict[str, Any]]:
    """The threshold on ``grid`` that maximises mF1 of ``cells`` (detected at a threshold <= min(grid)).

    With ``per_class`` the BC and TC thresholds are chosen separately (mF1 is the mean of the two per-class F1,
    and each class's F1 depends on its own threshold only, so the joint optimum is the pair of per-class optima).
    Values within ``tolerance`` of the best score count as ties, and ties go to the value closest to 0.5: on a small
    validation set a flat curve's maximum is noise, and moving away from 0.5 should buy more than that.
    Returns ``(threshold, {"mF1": score at the choice, "best_mF1": max, "curve": [[t, mF1, F1_BC, F1_TC]]})``.
    """
    grid = sorted(float(t) for t in grid)
    if not grid:
        raise ValueError("choose_threshold: empty threshold grid")
    curve = []
    for t in grid:
        s = cell_detection_scores([apply_threshold(c, t) for c in cells], ground_truth, cutoff=list(cutoffs))
        curve.append([t, s["mF1"], s["BC"]["f1"], s["TC"]["f1"]])
    arr = np.array(curve)

    def best(col: int) -> float:
        top = arr[:, col].max()
        ties = arr[arr[:, col] >= top - max(float(tolerance), 1e-12), 0]
        return float(ties[np.argmin(np.abs(ties - 0.5))])

    if per_class:
        chosen: Threshold = {"BC": best(2), "TC": best(3)}
        s = cell_detection_scores([apply_threshold(c, chosen) for c in cells], ground_truth, cutoff=list(cutoffs))
        score = s["mF1"]
    else:
        chosen = best(1)
        score = float(arr[arr[:, 0] == chosen, 1][0])
    return chosen, {"mF1": score, "best_mF1": float(arr[:, 1].max()), "curve": curve}


def resolve_threshold(detection: Any, chosen: Threshold | None) -> Threshold:
    """The threshold to use: the config's number, or for ``"auto"`` the one chosen on validation (``chosen``)."""
    if detection.threshold != "auto":
        return detection.threshold
    if chosen is None:
        raise ValueError("detection.threshold is 'auto' but no threshold was chosen on validation for this run "
                         "(metrics.json has no detection.threshold); pass a number, e.g. --threshold 0.5")
    return chosen


# ------------------------------------------------------------------------------------------- resolution
def resample_scale(mpp: float, model_mpp: float | None, tolerance: float = RESAMPLE_TOLERANCE) -> float:
    """Factor by which an image at ``mpp`` µm/px is resized for a model trained at ``model_mpp`` (1.0 = as is)."""
    if model_mpp is None:
        return 1.0
    if not (mpp > 0 and np.isfinite(mpp)):
        raise ValueError(f"image resolution {mpp!r} µm/px: expected a positive number")
    s = float(mpp) / float(model_mpp)
    return 1.0 if abs(s - 1.0) <= tolerance else s


@torch.no_grad()
def probabilities(model: nn.Module, image: Tensor, mpp: float, model_mpp: float | None = None,
                  **inference: Any) -> Tensor:
    """Softmax probabilities ``(K, H, W)`` for one image ``(C, H, W)`` (float in [0, 1]) at its own size
    (the softmax of :func:`logits_at`)."""
    return logits_at(model, image, mpp, model_mpp, **inference).softmax(0)


@torch.no_grad()
def logits_at(model: nn.Module, image: Tensor, mpp: float, model_mpp: float | None = None,
              **inference: Any) -> Tensor:
    """Logits ``(K, H, W)`` for one image ``(C, H, W)`` (float in [0, 1]) at its own size.

    The image is resized by :func:`resample_scale` (bilinear, anti-aliased when shrinking) before the model sees
    it and the logits are resized back (bilinear); ``inference`` goes to :func:`util.inference.predict_logits`.
    """
    if image.dim() != 3:
        raise ValueError(f"logits_at: expected one image (C, H, W), got shape {tuple(image.shape)}")
    device = next(model.parameters()).device
    x = image.unsqueeze(0).float().to(device)
    h, w = x.shape[-2:]
    s = resample_scale(mpp, model_mpp)
    if s != 1.0:
        size = (max(1, round(h * s)), max(1, round(w * s)))
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=s < 1)
    logits = predict_logits(model, x, **inference)
    if s != 1.0:
        logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
    return logits[0]


def training_mpp(mpps: Sequence[float]) -> float:
    """The resolution a model was trained at: the median µm/px of its training patches."""
    if len(mpps) == 0:
        raise ValueError("training_mpp: no training patches")
    return float(np.median(np.asarray(mpps, dtype=np.float64)))


# ------------------------------------------------------------------------------------------- agnostic
def class_agnostic(points: np.ndarray) -> np.ndarray:
    """Points with every cell class set to 1 (any class > 0 is a cell), for class-agnostic detection scores."""
    p = np.array(points, dtype=np.float64, copy=True)
    if p.size:
        p = p[p[:, 2] > 0]
        p[:, 2] = 1
    return p


def detection_scores(predictions: Sequence[np.ndarray], ground_truth: Sequence[np.ndarray],
                     cutoffs: Sequence[float]) -> dict[str, float]:
    """Class-agnostic cell detection precision/recall/F1 (the OCELOT matching with one class)."""
    s = cell_detection_scores([class_agnostic(p) for p in predictions], [class_agnostic(g) for g in ground_truth],
                              cutoff=list(cutoffs))["BC"]
    return {k: s[k] for k in ("precision", "recall", "f1", "tp", "fp", "fn")}


__all__ = ["Threshold", "RESAMPLE_TOLERANCE", "DEFAULT_THRESHOLD_GRID", "class_thresholds", "apply_threshold",
           "detect", "choose_threshold", "resolve_threshold", "resample_scale", "probabilities", "logits_at", "training_mpp",
           "class_agnostic", "detection_scores"]
