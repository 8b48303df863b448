"""Config checks: the fixed choices of string fields, value ranges, and sizes the configured model can take.

:func:`validate` raises :class:`~util.config_values.ConfigError` naming the key, the value and what is expected
(with a "did you mean" for a misspelt choice or model name). It needs no torch: model names and default depths
come from :mod:`util.model_registry`.
"""
from __future__ import annotations

import difflib
import math
import typing
from typing import TYPE_CHECKING, Any

from util.config_values import ConfigError
from util.model_registry import default_depth, model_names

if TYPE_CHECKING:
    from util.config import ExperimentConfig

#: allowed values of string fields with a fixed vocabulary
CHOICES: dict[str, tuple[str, ...]] = {
    "optimizer": ("adam", "adamw", "sgd"),
    "schedule": ("none", "cosine", "onecycle", "step"),
    "loss": ("dice_ce", "ce", "dice"),
    "precision": ("auto", "32-true", "32", "16-mixed", "bf16-mixed", "64-true"),
    "accelerator": ("auto", "cpu", "gpu", "cuda", "mps"),
    "resume": ("auto", "never"),  # or a checkpoint path (checked in validate)
    "tracking": ("auto", "csv", "online", "offline"),
    "inference.blend": ("valid", "gaussian", "constant"),
    "data.preset": ("none", "flips_rot90", "rotate_any", "full"),
}
EVAL_TRANSFORMS = ("rot90", "rot180", "rot270", "flip", "rot45")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _positive(v: Any) -> bool:
    return _finite(v) and v > 0


def _fraction(v: Any) -> bool:
    return _finite(v) and 0 <= v <= 1


#: Range checks of single values: dotted key → (test, what is expected). ``None`` passes where the type allows it.
RANGES: dict[str, tuple[typing.Callable[[Any], bool], str]] = {
    "learning_rate": (lambda v: _positive(v) and v <= 1, "a finite number > 0 and <= 1"),
    "epochs": (_positive, "an integer > 0"),
    "max_steps": (lambda v: v is None or v > 0, "an integer > 0 or null"),
    "weight_decay": (lambda v: _finite(v) and v >= 0, "a finite number >= 0"),
    "momentum": (lambda v: _finite(v) and 0 <= v < 1, "a number in [0, 1)"),
    "warmup_steps": (lambda v: v >= 0, "an integer >= 0"),
    "grad_clip": (lambda v: v is None or _positive(v), "null or a finite number > 0"),
    "lambda_dice": (lambda v: _finite(v) and v >= 0, "a finite number >= 0"),
    "lambda_ce": (lambda v: _finite(v) and v >= 0, "a finite number >= 0"),
    "class_weights": (lambda v: v is None or (len(v) == 3 and all(_finite(w) and w >= 0 for w in v)),
                      "null or 3 finite weights >= 0 (none, BC, TC)"),
    "seed": (lambda v: v >= 0, "an integer >= 0"),
    "num_nodes": (lambda v: v >= 1, "an integer >= 1"),
    "val_every_n_epochs": (_positive, "an integer > 0"),
    "log_every_n_steps": (_positive, "an integer > 0"),
    "checkpoint_every_n_steps": (lambda v: v is None or v > 0, "null or an integer > 0"),
    "target_mf1": (lambda v: v is None or _fraction(v), "null or a number in [0, 1]"),
    "data.root": (lambda v: bool(str(v).strip()), "a folder path"),
    "data.crop_size": (lambda v: v is None or v > 0, "null or an integer > 0"),
    "data.batch_size": (_positive, "an integer > 0"),
    "data.num_workers": (lambda v: v >= 0, "an integer >= 0"),
    "data.subset_fraction": (lambda v: _finite(v) and 0 < v <= 1, "a number in (0, 1]"),
    "data.mask_radius_um": (_positive, "a finite number > 0 (µm)"),
    "inference.tile_size": (lambda v: v is None or v > 0, "null or an integer > 0"),
    "inference.overlap": (lambda v: _finite(v) and 0 <= v < 1, "a number in [0, 1)"),
    "inference.sw_batch_size": (_positive, "an integer > 0"),
    "detection.cutoff_um": (_positive, "a finite number > 0 (µm)"),
    "detection.min_distance_um": (_positive, "a finite number > 0 (µm)"),
    "detection.sigma_um": (lambda v: _finite(v) and v >= 0, "a finite number >= 0 (µm)"),
    "detection.threshold": (lambda v: v == "auto" or _fraction(v), "a number in [0, 1] or 'auto'"),
    "detection.threshold_tolerance": (lambda v: _finite(v) and 0 <= v < 1, "a number in [0, 1)"),
    "detection.threshold_grid": (lambda v: bool(v) and all(_fraction(t) for t in v),
                                 "a non-empty list of values in [0, 1]"),
    "detection.min_distance_grid_um": (lambda v: v is None or (bool(v) and all(_positive(d) for d in v)),
                                       "null or a non-empty list of distances > 0 (µm)"),
}


def _value(cfg: ExperimentConfig, key: str) -> Any:
    obj: Any = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def _model_multiple(cfg: ExperimentConfig) -> tuple[int, str] | None:
    """``(2**depth, where depth comes from)`` of the configured model; None when the model has no depth.

    The depth is ``model.kwargs.depth``, else the default of the model's constructor (read by
    :func:`util.model_registry.default_depth`, only then).
    """
    depth = cfg.model.kwargs.get("depth")
    where = "model.kwargs.depth"
    if depth is None:
        default = default_depth(cfg.model.name)
        if default is None:
            return None
        depth, where = default, f"the default depth of {cfg.model.name!r}"
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ConfigError(f"model.kwargs.depth={depth!r}: expected an integer >= 1")
    return 2 ** depth, f"2**depth, depth={depth} from {where}"


def validate(cfg: ExperimentConfig) -> None:
    """Check value ranges and choices; raise ``ConfigError`` naming the key, the value and what is expected."""
    def bad(key: str, val: Any, why: str) -> ConfigError:
        return ConfigError(f"{key}={val!r}: {why}")

    for key, choices in CHOICES.items():
        val = _value(cfg, key)
        if key == "resume" and val not in choices:
            continue  # a checkpoint path, checked when used
        if val not in choices:
            close = difflib.get_close_matches(str(val), choices, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise bad(key, val, f"expected one of {', '.join(choices)}{hint}")
    for key, (ok, expected) in RANGES.items():
        val = _value(cfg, key)
        if not ok(val):
            raise bad(key, val, f"expected {expected}")
    for t in cfg.eval_transforms:
        if t not in EVAL_TRANSFORMS:
            raise bad("eval_transforms", t, f"expected items from {', '.join(EVAL_TRANSFORMS)}")
    if isinstance(cfg.devices, str) and cfg.devices != "auto":
        raise bad("devices", cfg.devices, "expected an integer or 'auto'")
    if isinstance(cfg.devices, int) and cfg.devices < 1:
        raise bad("devices", cfg.devices, "must be >= 1")
    if not isinstance(cfg.model.kwargs, dict):
        raise bad("model.kwargs", cfg.model.kwargs, "expected a mapping of model keyword arguments")
    if "num_classes" in cfg.model.kwargs and cfg.model.kwargs["num_classes"] != 3:
        raise bad("model.kwargs.num_classes", cfg.model.kwargs["num_classes"], "OCELOT has 3 classes (0, BC, TC)")
    for k in cfg.model.kwargs:
        if "key" in k.lower() and "api" in k.lower():
            raise ConfigError(f"model.kwargs.{k}: secrets do not belong in a config")
    names = model_names()
    if cfg.model.name not in names:
        close = difflib.get_close_matches(cfg.model.name, names, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise bad("model.name", cfg.model.name, f"unknown model; {hint}expected one of {', '.join(names)}")
    mult = _model_multiple(cfg)
    if mult is not None:
        m, why = mult
        if cfg.data.crop_size is not None and cfg.data.crop_size % m:
            lo = max(m, cfg.data.crop_size // m * m)
            raise bad("data.crop_size", cfg.data.crop_size,
                      f"expected a multiple of {m} ({why}), e.g. {lo} or {lo + m}, or null")
        if cfg.inference.tile_size is not None and cfg.inference.tile_size < m:
            raise bad("inference.tile_size", cfg.inference.tile_size,
                      f"expected null or at least {m} ({why})")


__all__ = ["CHOICES", "EVAL_TRANSFORMS", "RANGES", "validate"]
