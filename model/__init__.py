"""Model library: one registry, the same keyword names across every model.

>>> from model import build_model, count_parameters, width_for_params
>>> net = build_model("unet", in_channels=3, num_classes=3, width=32, depth=4)
>>> count_parameters(net)  # doctest: +SKIP

Every model takes ``in_channels, num_classes, width, depth`` (plus its own options: ``group=`` for
equivariant models, ``backend=`` for the escnn/e2cnn one) and maps ``(B, C, H, W)`` to logits
``(B, num_classes, H, W)``. Models are imported lazily, so building a plain U-Net never imports escnn.
"""
from __future__ import annotations

import importlib
import math
from typing import Callable

from torch import nn

#: name -> "module:attribute" of the model class (imported on first use).
_REGISTRY: dict[str, str] = {
    "unet": "model.unet:UNet",
    "moment_unet": "model.equivariantUnet:MomentUNet",
    "escnn_unet": "model.escnnUnet:EscnnUNet",
}


def register_model(name: str, target: str | Callable[..., nn.Module]) -> None:
    """Add a model to the registry: ``target`` is a class/factory or a ``"module:attribute"`` string."""
    _REGISTRY[name] = target  # type: ignore[assignment]


def list_models() -> list[str]:
    """Names accepted by :func:`build_model`, sorted."""
    return sorted(_REGISTRY)


def get_model_class(name: str) -> Callable[..., nn.Module]:
    """The class (or factory) registered under ``name``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    target = _REGISTRY[name]
    if isinstance(target, str):
        module, attr = target.split(":")
        target = getattr(importlib.import_module(module), attr)
    return target


def build_model(name: str, **kwargs) -> nn.Module:
    """Build the model registered as ``name`` with keyword arguments ``kwargs``."""
    return get_model_class(name)(**kwargs)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def width_for_params(name: str, target_params: int, tolerance: float = 0.05, **kwargs) -> float:
    """The ``width`` for which ``build_model(name, width=..., **kwargs)`` has about ``target_params`` parameters.

    Parameter counts of these U-Nets grow like ``a·w² + b·w + c`` in the width ``w``. The quadratic is fitted
    through three builds and solved for the target; a few secant steps on the real count then correct the
    rounding of channels per level (``width`` may be fractional, see :func:`model.contract.level_channels`;
    a class attribute ``width_multiple``, e.g. the group order of a regular-field escnn model, sets the scale
    of the first trial widths). Returns the width rounded to 0.01. Raises ``ValueError`` when no width within
    ``tolerance`` (relative) is found.
    """
    if target_params <= 0:
        raise ValueError(f"target_params must be > 0, got {target_params}")
    cls = get_model_class(name)
    step = float(getattr(cls, "width_multiple", 1))
    count = _cached_counter(name, kwargs)
    (x0, x1, x2) = ws = [step * k for k in (4.0, 8.0, 16.0)]
    (y0, y1, y2) = [count(w) for w in ws]
    d0, d1, d2 = (x0 - x1) * (x0 - x2), (x1 - x0) * (x1 - x2), (x2 - x0) * (x2 - x1)
    a = y0 / d0 + y1 / d1 + y2 / d2
    b = -(y0 * (x1 + x2) / d0 + y1 * (x0 + x2) / d1 + y2 * (x0 + x1) / d2)
    c = y0 * x1 * x2 / d0 + y1 * x0 * x2 / d1 + y2 * x0 * x1 / d2 - target_params
    w = (-b + math.sqrt(max(b * b - 4 * a * c, 0.0))) / (2 * a) if a > 0 else -c / b
    w = max(round(w, 2), 0.01)
    best = w
    for _ in range(6):  # secant-like correction using the local slope of the fitted quadratic
        err = count(w) - target_params
        if abs(err) < abs(count(best) - target_params):
            best = w
        if abs(err) <= 0.5 * tolerance * target_params:
            best = w
            break
        slope = 2 * a * w + b
        w = max(round(w - err / slope, 2), 0.01)
    rel = abs(count(best) - target_params) / target_params
    if rel > tolerance:
        raise ValueError(
            f"width_for_params({name!r}, {target_params}): closest width {best} gives {count(best)} parameters "
            f"({rel:.1%} off, tolerance {tolerance:.0%})"
        )
    return best


def _cached_counter(name: str, kwargs: dict) -> Callable[[int], int]:
    cache: dict[float, int] = {}

    def count(width: float) -> int:
        if width not in cache:
            cache[width] = count_parameters(build_model(name, width=width, **kwargs))
        return cache[width]

    return count


__all__ = ["build_model", "list_models", "get_model_class", "register_model", "count_parameters", "width_for_params"]
