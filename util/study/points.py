"""The points a study expands to, and the full training configuration of each.

A *point* is one training run: an arm (model + augmentation preset) at a training-data fraction and a seed,
with a learning rate. Learning-rate search points (stage ``lr``) come first; main points (stage ``main``) get
the learning rate their arm's search chose, and a main point whose configuration equals a finished search
point's (same fraction, seed and learning rate) reuses that run instead of training it again.
"""
from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import yaml

from util.config import ConfigError, ExperimentConfig, load_config
from util.study.spec import Arm, Study


@dataclass
class Point:
    """One run of the study. ``learning_rate`` is None while the arm's search is unfinished; ``source`` names
    the search point whose finished run this main point reuses (same configuration)."""

    id: str
    index: int
    stage: str
    arm: Arm
    fraction: float
    seed: int
    width: float | None
    learning_rate: float | None = None
    config: ExperimentConfig | None = None
    source: str | None = None


# ========================================================================================== configs
def base_config(study: Study) -> ExperimentConfig:
    """The study's recipe: ``base`` with the study-wide ``overrides`` (validated)."""
    return _base_config(str(study.base), yaml.safe_dump(study.overrides))


@lru_cache(maxsize=8)
def _base_config(base: str, overrides_yaml: str) -> ExperimentConfig:
    d = deep_merge(load_config(base).to_dict(), yaml.safe_load(overrides_yaml) or {})
    return ExperimentConfig.from_dict(d, source=f"{base} + study overrides")


def deep_merge(a: dict, b: Mapping) -> dict:
    """``a`` updated with ``b`` key by key (nested mappings merged, everything else replaced)."""
    out = copy.deepcopy(a)
    for k, v in b.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


#: keywords every model shares (model/contract.py): inherited from the recipe by an arm with another model
SHARED_KWARGS = ("in_channels", "width", "depth", "pad")


def arm_model(study: Study, arm: Arm) -> tuple[str, dict[str, Any]]:
    """The arm's model name and keyword arguments: its ``kwargs`` over the recipe's (only the shared ones,
    :data:`SHARED_KWARGS`, when the arm names another model than the recipe)."""
    base = base_config(study).model
    name = arm.model or base.name
    kwargs = {k: v for k, v in base.kwargs.items() if name == base.name or k in SHARED_KWARGS}
    kwargs.update(arm.kwargs)
    return name, kwargs


def arm_width(study: Study, arm: Arm) -> float:
    """The arm's ``width``: its own, or for ``match_params`` the width whose parameter count matches that arm's
    (:func:`model.width_for_params`)."""
    name, kwargs = arm_model(study, arm)
    if arm.match_params is None:
        return float(kwargs.get("width", 32))
    tname, tkwargs = arm_model(study, study.arm(arm.match_params))
    target = parameter_count(tname, _freeze(tkwargs))
    rest = {k: v for k, v in kwargs.items() if k != "width"}
    return _matched_width(name, target, _freeze(rest))


def _freeze(kwargs: Mapping[str, Any]) -> tuple:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items()))


@lru_cache(maxsize=64)
def parameter_count(name: str, frozen_kwargs: tuple) -> int:
    """Trainable parameters of ``build_model(name, **kwargs)`` (num_classes 3), cached per process."""
    from model import build_model, count_parameters

    return count_parameters(build_model(name, **{**dict(frozen_kwargs), "num_classes": 3}))


@lru_cache(maxsize=64)
def _matched_width(name: str, target: int, frozen_rest: tuple) -> float:
    from model import width_for_params

    return width_for_params(name, target, **{**dict(frozen_rest), "num_classes": 3})


@lru_cache(maxsize=32)
def _train_ids(root: str) -> tuple[str, ...]:
    from util.ocelot import list_ids

    return tuple(list_ids(root, "train"))


def val_every_epochs(study: Study, cfg: ExperimentConfig, fraction: float, seed: int) -> int:
    """``val_every_n_epochs`` that validates about every ``budget.val_every_steps`` steps at this fraction:
    ``max(1, round(val_every_steps / ceil(n_train / batch)))`` (the same schedule in steps at every fraction)."""
    from util.dataloader import select_subset

    root = cfg.data.root
    if not Path(root).is_dir():
        raise ConfigError(f"data root {root} not found (OCELOT: bash setup.sh --ocelot; see README, Studies)")
    n = len(select_subset(list(_train_ids(str(root))), fraction, seed))
    steps_per_epoch = max(1, math.ceil(n / cfg.data.batch_size))
    return max(1, round(study.val_every_steps / steps_per_epoch))


def point_config(study: Study, arm: Arm, fraction: float, seed: int, lr: float, point_id: str,
                 width: float) -> ExperimentConfig:
    """The full :class:`ExperimentConfig` of one point; ``run_id`` is ``<point id>-<config hash>``.

    On top of the recipe: the arm's model (``width`` resolved) and preset, ``data.subset_fraction``, seed
    (``seed`` and ``data.subset_seed``: each seed also draws its own training subset), learning rate, the
    budget's ``max_steps`` and validation interval, the study's ``target_mf1``, the arm's overrides,
    ``name`` = study, ``runs_dir``."""
    base = base_config(study)
    name, kwargs = arm_model(study, arm)
    d = base.to_dict()
    d["model"] = {"name": name, "kwargs": {**kwargs, "width": int(width) if float(width).is_integer() else width}}
    d["data"]["subset_fraction"] = fraction
    d["data"]["subset_seed"] = seed
    if arm.preset:
        d["data"]["preset"] = arm.preset
    d.update(seed=seed, learning_rate=lr, max_steps=study.max_steps, name=study.name,
             runs_dir=str(study.runs_dir), run_id=None, progress_bar=False, grid=None)
    if study.target_mf1 is not None:
        d["target_mf1"] = study.target_mf1
    d = deep_merge(d, arm.overrides)
    cfg = ExperimentConfig.from_dict(d, source=f"study {study.name}, point {point_id}")
    if study.val_every_steps:
        cfg.val_every_n_epochs = val_every_epochs(study, cfg, fraction, seed)
    cfg.run_id = f"{point_id}-{cfg.config_hash()}"
    return cfg


# =========================================================================================== points
def lr_point_id(arm: str, lr: float) -> str:
    return f"lr-{arm}-{lr:g}"


def main_point_id(arm: str, fraction: float, seed: int) -> str:
    return f"{arm}-f{fraction:g}-s{seed}"


def choose_lr(study: Study, arm: str, rows: Mapping[str, Mapping[str, Any]]) -> tuple[float | None, dict]:
    """The learning rate of ``arm``: the search value with the highest validation mF1 (``val_mF1`` of its
    finished row, i.e. at the threshold chosen on validation; ties go to the value listed first). Returns
    ``(lr, {value: score})``; lr is None while a search point is unfinished. No search: the arm's
    ``overrides.learning_rate`` if it sets one, else the recipe's rate."""
    if not study.lr_values:
        fixed = study.arm(arm).overrides.get("learning_rate")
        return (float(fixed) if fixed is not None else base_config(study).learning_rate), {}
    scores: dict[float, float] = {}
    for v in study.lr_values:
        row = rows.get(lr_point_id(arm, v))
        if row is None:
            return None, scores
        scores[v] = _float(row.get("val_mF1"))
    best = max(study.lr_values, key=lambda v: (scores[v], -study.lr_values.index(v)))
    return best, scores


def fixed_lr_words(study: Study) -> str:
    """How a study without a search sets its learning rates, in words (for the plan and the report)."""
    own = [a.label for a in study.arms if a.overrides.get("learning_rate") is not None]
    recipe = f"{base_config(study).learning_rate:g}"
    if not own:
        return f"every arm uses the recipe's learning rate {recipe} (no search)"
    if len(own) == len(study.arms):
        return "every arm sets its own learning rate in the study file (the lr column; no search)"
    return (f"the recipe's learning rate {recipe}, except {', '.join(own)}, which set their own in the study "
            f"file (the lr column; no search)")


def _float(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return float("-inf")
    return f if math.isfinite(f) else float("-inf")


def expand_points(study: Study, rows: Mapping[str, Mapping[str, Any]] | None = None) -> list[Point]:
    """Every point of the study, search points first (arm, then value), then main points (arm, fraction, seed).

    ``rows``: finished rows by point id (from ``runs.csv``), used to choose each arm's learning rate. The
    index of a point in this list decides its shard (``index mod n``); it does not depend on ``rows``.
    """
    rows = rows or {}
    points: list[Point] = []
    widths = {a.label: arm_width(study, a) for a in study.arms}
    for arm in study.arms if study.lr_values else []:
        for v in study.lr_values:
            pid = lr_point_id(arm.label, v)
            cfg = point_config(study, arm, study.lr_fraction, study.lr_seed, v, pid, widths[arm.label])
            points.append(Point(pid, len(points), "lr", arm, study.lr_fraction, study.lr_seed, widths[arm.label],
                                v, cfg))
    by_hash = {p.config.config_hash(): p.id for p in points}
    for arm in study.arms:
        lr, _ = choose_lr(study, arm.label, rows)
        for f in study.fractions:
            for s in study.seeds:
                pid = main_point_id(arm.label, f, s)
                cfg = point_config(study, arm, f, s, lr, pid, widths[arm.label]) if lr is not None else None
                source = by_hash.get(cfg.config_hash()) if cfg is not None else None
                if cfg is None and (f, s) == (study.lr_fraction, study.lr_seed):
                    source = f"lr-{arm.label}-*"  # will equal the winning search point
                points.append(Point(pid, len(points), "main", arm, f, s, widths[arm.label], lr, cfg, source))
    return points


def in_shard(point: Point, shard: tuple[int, int] | None) -> bool:
    """Point k belongs to shard ``i/n`` when ``k mod n == i``."""
    return shard is None or point.index % shard[1] == shard[0]


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/n"`` → ``(i, n)`` with ``0 <= i < n``."""
    if not text:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or not int(m.group(1)) < int(m.group(2)):
        raise ValueError(f"--shard expects i/n with 0 <= i < n (e.g. 3/10), got {text!r}")
    return int(m.group(1)), int(m.group(2))
