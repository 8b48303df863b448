"""Model library: one registry, the same keyword names across every model.

>>> from model import build_model, count_parameters, width_for_params
>>> net = build_model("unet", in_channels=3, num_classes=3, width=32, depth=4)
>>> count_parameters(net)  # doctest: +SKIP

Every model takes ``in_channels, num_classes, width, depth`` (plus its own options: ``group=`` for
equivariant models, ``backend=`` for the escnn/e2cnn one) and maps ``(B, C, H, W)`` to logits
``(B, num_classes, H, W)``. Models are imported lazily, so building a plain U-Net never imports escnn.

:func:`build_model` checks the keyword arguments against the constructor's signature first: an unknown keyword
(``widht=4``) or a value of the wrong type for its annotation (``width="a"``, ``depth=2.5``, ``group=5``) raises
:class:`ModelArgumentError` naming the model, the keyword, the value, a "did you mean" and the valid keywords.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import math
import numbers
import types
import typing
from typing import Any, Callable, Union

from torch import nn


class ModelArgumentError(TypeError, ValueError):
    """A keyword argument a model does not take, or of the wrong type; the message names model, keyword, value.

    A ``TypeError`` (what Python raises for a bad keyword) and a ``ValueError`` (what configuration errors are
    here), so either ``except`` catches it.
    """

#: name -> "module:attribute" of the model class (imported on first use).
_REGISTRY: dict[str, str] = {
    "unet": "model.unet:UNet",
    "moment_unet": "model.moment.unet:MomentUNet",
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


def model_keywords(name: str) -> dict[str, inspect.Parameter] | None:
    """The keyword parameters of model ``name``'s constructor, or None when it takes ``**kwargs`` that cannot be
    followed (a factory function); a subclass passing ``**kwargs`` on adds its parents' parameters."""
    target = get_model_class(name)
    if not isinstance(target, type):
        return _keywords_of(target)
    out: dict[str, inspect.Parameter] = {}
    for cls in target.__mro__:
        if "__init__" not in vars(cls):
            continue
        if cls in (nn.Module, object):
            return out
        params = _keywords_of(cls.__init__, skip_first=True)
        if params is None:
            return None
        for k, p in params.items():
            out.setdefault(k, p)
        if not _has_var_keyword(cls.__init__):
            return out
    return out


def _has_var_keyword(fn: Callable) -> bool:
    return any(p.kind is p.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())


def _keywords_of(fn: Callable, skip_first: bool = False) -> dict[str, inspect.Parameter] | None:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    if skip_first:
        params = params[1:]
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable annotations: names are still checked, types are not
        hints = {}
    out = {p.name: p.replace(annotation=hints.get(p.name, inspect.Parameter.empty)) for p in params
           if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if not skip_first and _has_var_keyword(fn):
        return None
    return out


def _matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits a type annotation (unknown kinds of annotation are not judged)."""
    if hint is inspect.Parameter.empty or hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if origin is not None and isinstance(origin, type):
        return isinstance(value, origin)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _hint_name(hint: Any) -> str:
    if typing.get_origin(hint) in (Union, types.UnionType):
        return " | ".join(_hint_name(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "None"
    return getattr(hint, "__name__", str(hint))


def check_model_kwargs(name: str, kwargs: dict[str, Any]) -> None:
    """Raise :class:`ModelArgumentError` for a keyword model ``name`` does not take or a value whose type does
    not fit the constructor's annotation (ranges are checked by the models themselves)."""
    params = model_keywords(name)
    if params is None:
        return
    valid = sorted(params)
    for key, value in kwargs.items():
        if key not in params:
            close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ModelArgumentError(f"model {name!r} has no keyword argument {key!r} (= {value!r}){hint} "
                                     f"Valid keywords: {', '.join(valid)}")
        hint_tp = params[key].annotation
        if not _matches(value, hint_tp):
            raise ModelArgumentError(f"model {name!r}: {key}={value!r} has the wrong type "
                                     f"{type(value).__name__}, expected {_hint_name(hint_tp)}")


def build_model(name: str, **kwargs) -> nn.Module:
    """Build the model registered as ``name`` with keyword arguments ``kwargs`` (checked first, see
    :func:`check_model_kwargs`)."""
    check_model_kwargs(name, kwargs)
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


__all__ = ["build_model", "list_models", "get_model_class", "register_model", "count_parameters", "width_for_params",
           "ModelArgumentError", "check_model_kwargs", "model_keywords"]
