"""One typed experiment configuration: ``ExperimentConfig`` ⇄ YAML ⇄ ``key=value`` overrides, and grids.

>>> cfg = load_config("configs/default.yaml", ["learning_rate=3e-4", "data.crop_size=128",
...                                            "model.kwargs.width=8"])  # doctest: +SKIP
>>> cfg.save("run/config.yaml")                                            # doctest: +SKIP

* YAML files hold nested mappings mirroring the dataclasses; a file may start from another with
  ``base: other.yaml`` (path relative to the file; mappings are merged key by key; :mod:`util.config_files`).
* Overrides are ``dotted.key=value`` strings. The value is parsed as YAML (``[1, 2]``, ``null``, ``true``) and
  coerced to the field's declared type (``1e-3`` is a float for a float field; ``"3"`` is refused for a bool;
  :mod:`util.config_values`). ``model.kwargs.<anything>=value`` sets a model keyword argument (free-form,
  YAML-typed).
* Unknown keys raise ``ConfigError`` suggesting the nearest valid key (``lerning_rate`` → ``learning_rate``);
  wrong types raise ``ConfigError`` naming the key, the value and the expected type; ranges, choices and sizes
  are checked by :func:`util.config_checks.validate`. Loading a config imports neither torch nor cv2.
* Grids: a ``grid:`` mapping of ``key: [values...]`` (a value may be a mapping, e.g. a whole ``model``)
  expands with :func:`expand_grid` into the Cartesian product (last key varies fastest);
  :func:`grid_point` picks the N-th point (what a Slurm array task runs).

The Comet API key is never part of a config: it comes only from ``COMET_API_KEY`` or Comet's own config file.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import json
import shlex
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence, Union

import yaml

from util.config_checks import CHOICES, EVAL_TRANSFORMS, RANGES, validate  # noqa: F401  (re-exported)
from util.config_files import _deep_merge, _read_yaml  # noqa: F401
from util.config_values import (ConfigError, _coerce, _CoerceError, _hints, _parse_scalar,  # noqa: F401
                                _plain, _type_name)
from util.flatten import flatten_dict  # noqa: F401  (re-exported; used by util.tracking)


@dataclass
class DataConfig:
    """Everything that decides the data a run sees (saved with the run's config)."""

    root: str = "data/synthetic_ocelot"
    preset: str = "flips_rot90"
    crop_size: int | None = 256
    batch_size: int = 4
    num_workers: int = 0
    subset_fraction: float = 1.0
    subset_seed: int = 0
    mask_radius_um: float = 2.0
    with_tissue: bool = False
    manifest_dir: str | None = None


@dataclass
class ModelConfig:
    """Which model to build: ``model.build_model(name, **kwargs)`` (``num_classes`` is always 3)."""

    name: str = "unet"
    kwargs: dict[str, Any] = field(default_factory=lambda: {"width": 16, "depth": 3})


@dataclass
class DetectionConfig:
    """Cell detection from probability maps and the matching cut-off, in µm (converted with each sample's mpp)."""

    min_distance_um: float = 1.6  #: 8 px at 0.2 µm/px
    #: a number in [0, 1], or "auto": the value on ``threshold_grid`` that maximises validation mF1 (chosen after
    #: training with the best checkpoint, stored in metrics.json, used for the test set and every transformed copy)
    threshold: Union[float, str] = "auto"
    threshold_grid: list[float] = field(default_factory=lambda: [round(0.05 * i, 2) for i in range(1, 20)])
    per_class_threshold: bool = False  #: with "auto": one threshold per class (BC, TC), each chosen on validation
    #: with "auto": grid values within this of the best validation mF1 are ties, and ties go to the one closest to 0.5
    threshold_tolerance: float = 0.005
    min_distance_grid_um: list[float] | None = None  #: with "auto": also choose min_distance_um from these values
    sigma_um: float = 0.4  #: 2 px at 0.2 µm/px
    cutoff_um: float = 3.0  #: the OCELOT cut-off: 15 px at 0.2 µm/px


@dataclass
class InferenceConfig:
    """Full-image prediction: sliding window (``tile_size``: None = whole image at once) and TTA."""

    tile_size: int | None = 512
    overlap: float = 0.25
    blend: str = "valid"
    sw_batch_size: int = 4


@dataclass
class ExperimentConfig:
    """Everything one training run needs. Field docs are in ``configs/default.yaml``."""

    name: str = "default"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    # schedule length: max_steps wins when set; otherwise epochs
    epochs: int = 20
    max_steps: int | None = None
    # optimisation
    optimizer: str = "adamw"
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_steps: int = 0
    grad_clip: float | None = 1.0
    loss: str = "dice_ce"
    lambda_dice: float = 1.0
    lambda_ce: float = 1.0
    class_weights: list[float] | None = None
    # reproducibility and hardware
    seed: int = 0
    deterministic: bool = True
    precision: str = "auto"
    accelerator: str = "auto"
    devices: Union[int, str] = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    # evaluation
    val_every_n_epochs: int = 1
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    tta: bool = False
    eval_transforms: list[str] = field(default_factory=lambda: ["rot90", "flip"])
    target_mf1: float | None = 0.6
    # runs, checkpoints, tracking
    runs_dir: str = "runs"
    run_id: str | None = None
    resume: str = "auto"
    checkpoint_every_n_steps: int | None = None
    tracking: str = "auto"
    comet_project: str = "equivariant-ocelot"
    comet_workspace: str | None = None
    log_every_n_steps: int = 10
    progress_bar: bool = True
    grid: dict[str, list] | None = None

    # ------------------------------------------------------------------ conversions
    def to_dict(self) -> dict:
        """Plain nested dict (YAML/JSON-serialisable)."""
        return _plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        """Write the fully resolved config as YAML."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(self.to_yaml())

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "ExperimentConfig":
        cfg = cls()
        _apply_mapping(cfg, d, prefix="", source=source)
        validate(cfg)
        return cfg

    def replace(self, overrides: Iterable[str] = ()) -> "ExperimentConfig":
        """A copy with ``key=value`` overrides applied."""
        new = ExperimentConfig.from_dict(self.to_dict())
        apply_overrides(new, overrides)
        return new

    def config_hash(self) -> str:
        """8 hex digits identifying what the run computes (ignores paths, run id, tracking, UI, workers, devices)."""
        d = self.to_dict()
        for k in ("runs_dir", "run_id", "resume", "tracking", "comet_project", "comet_workspace",
                  "progress_bar", "log_every_n_steps", "grid", "devices", "num_nodes", "strategy", "accelerator",
                  "checkpoint_every_n_steps"):
            d.pop(k, None)
        d["data"].pop("num_workers", None)
        d["data"].pop("manifest_dir", None)
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]


def valid_keys(obj: Any = None, prefix: str = "") -> list[str]:
    """All dotted keys of a config (dataclass fields, recursively)."""
    obj = obj if obj is not None else ExperimentConfig()
    keys: list[str] = []
    for f in dataclasses.fields(obj):
        key = prefix + f.name
        keys.append(key)
        val = getattr(obj, f.name)
        if dataclasses.is_dataclass(val):
            keys.extend(valid_keys(val, key + "."))
    return keys


def _unknown(key: str, candidates: Sequence[str], source: str) -> ConfigError:
    all_keys = valid_keys()
    close = difflib.get_close_matches(key, all_keys, n=3, cutoff=0.6) or \
        difflib.get_close_matches(key.split(".")[-1], list(candidates), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else \
        f"; valid keys here: {', '.join(sorted(candidates))}"
    if "api_key" in key.lower() or "comet_key" in key.lower():
        hint += " (the Comet API key is never a config value: set COMET_API_KEY in the environment)"
    return ConfigError(f"{source}: unknown config key {key!r}{hint}")


def _set(obj: Any, parts: list[str], value: Any, full_key: str, source: str, from_text: bool) -> None:
    """Set ``obj.<parts>`` to ``value`` with type coercion; dict fields accept free-form sub-keys."""
    names = {f.name for f in dataclasses.fields(obj)}
    head = parts[0]
    if head not in names:
        prefix = full_key[: len(full_key) - len(".".join(parts))]
        raise _unknown(full_key, [prefix + n for n in names], source)
    tp = _hints(obj)[head]
    current = getattr(obj, head)
    if len(parts) > 1:
        if dataclasses.is_dataclass(current):
            return _set(current, parts[1:], value, full_key, source, from_text)
        if isinstance(current, dict) or (current is None and typing.get_origin(tp) in (dict,)):
            d = current if isinstance(current, dict) else {}
            target = d
            for p in parts[1:-1]:
                target = target.setdefault(p, {})
            target[parts[-1]] = _parse_scalar(value) if from_text and isinstance(value, str) else value
            setattr(obj, head, d)
            return
        raise ConfigError(f"{source}: {full_key!r}: {head!r} has no sub-keys (it is a {_type_name(tp)})")
    if dataclasses.is_dataclass(current):
        if isinstance(value, str) and from_text:
            value = _parse_scalar(value)
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {full_key!r} is a section; set its keys ({full_key}.<key>=...) "
                              f"or give a mapping, got {value!r}")
        _apply_mapping(current, value, prefix=full_key + ".", source=source)
        return
    raw = value
    if from_text and isinstance(value, str) and tp is not str and typing.get_origin(tp) is None \
            and tp not in (int, float, bool):
        value = _parse_scalar(value)
    try:
        coerced = _coerce(value, tp)
    except _CoerceError:
        raise ConfigError(f"{source}: {full_key}={raw!r} has the wrong type: expected {_type_name(tp)}, "
                          f"got {type(raw).__name__} {raw!r}") from None
    setattr(obj, head, coerced)


def _apply_mapping(obj: Any, mapping: dict, prefix: str, source: str) -> None:
    if not isinstance(mapping, dict):
        raise ConfigError(f"{source}: expected a mapping at {prefix.rstrip('.') or 'top level'}, "
                          f"got {type(mapping).__name__}")
    for k, v in mapping.items():
        key = f"{prefix}{k}"
        head_is_section = dataclasses.is_dataclass(getattr(obj, str(k), None))
        if head_is_section and isinstance(v, dict):
            _apply_mapping(getattr(obj, str(k)), v, key + ".", source)
        else:
            _set(obj, [str(k)], v, key, source, from_text=False)


def apply_overrides(cfg: ExperimentConfig, overrides: Iterable[str] | str, source: str = "override") -> \
        ExperimentConfig:
    """Apply ``key=value`` strings to ``cfg`` in place (and return it); validates the result."""
    if isinstance(overrides, str):
        overrides = shlex.split(overrides)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{source}: {item!r} is not of the form key=value (e.g. learning_rate=1e-3)")
        key, value = item.split("=", 1)
        key = key.strip().lstrip("-")
        if not key:
            raise ConfigError(f"{source}: {item!r} has an empty key")
        _set(cfg, key.split("."), value, key, source, from_text=True)
    validate(cfg)
    return cfg


def load_config(path: str | Path | None = None, overrides: Iterable[str] | str = ()) -> ExperimentConfig:
    """Defaults ← YAML file (if any) ← ``key=value`` overrides; validated."""
    d = _read_yaml(Path(path)) if path else {}
    cfg = ExperimentConfig.from_dict(d, source=str(path) if path else "defaults")
    return apply_overrides(cfg, overrides)


# ------------------------------------------------------------------------------------------------- grids


def _grid_label(value: Any) -> str:
    if isinstance(value, dict):
        parts = [str(value.get("name", ""))] + [f"{k}{v}" for k, v in sorted(value.get("kwargs", {}).items())
                                                if k in ("group", "width", "backend")]
        s = "-".join(p for p in parts if p) or hashlib.sha1(json.dumps(value, sort_keys=True).encode()).hexdigest()[:6]
    else:
        s = str(value)
    return "".join(c if c.isalnum() or c in "._" else "-" for c in s)


def expand_grid(config: ExperimentConfig) -> list[ExperimentConfig]:
    """The Cartesian product of ``config.grid`` (``{dotted key: [values]}``), one config per point.

    A mapping value sets a whole section (e.g. ``model: {name: moment_unet, kwargs: {group: D4}}``; ``kwargs``
    is replaced, not merged). Each point gets ``grid = None`` and ``run_id = "gNNN-<labels>"``; the ``name``
    stays the grid's name so all points live under ``runs/<name>/``. No grid → ``[config]``.
    """
    if not config.grid:
        return [config]
    if not isinstance(config.grid, dict):
        raise ConfigError(f"grid: expected a mapping of key -> list of values, got {config.grid!r}")
    keys = list(config.grid)
    values = []
    for k in keys:
        v = config.grid[k]
        if not isinstance(v, list) or not v:
            raise ConfigError(f"grid.{k}: expected a non-empty list of values, got {v!r}")
        values.append(v)
    base = config.to_dict()
    base["grid"] = None
    points = []
    for i, combo in enumerate(itertools.product(*values)):
        cfg = ExperimentConfig.from_dict(base, source="grid base")
        for k, v in zip(keys, combo):
            if isinstance(v, dict):
                section = getattr(cfg, k, None) if "." not in k else None
                if section is not None and dataclasses.is_dataclass(section):
                    fresh = type(section)()
                    # start from the base section, but replace dict-valued fields given in v
                    for f in dataclasses.fields(section):
                        setattr(fresh, f.name, getattr(section, f.name))
                    for sub, subv in v.items():
                        _set(fresh, [str(sub)], subv, f"grid.{k}.{sub}", "grid", from_text=False)
                    setattr(cfg, k, fresh)
                    continue
            _set(cfg, k.split("."), v, f"grid.{k}", "grid", from_text=False)
        validate(cfg)
        label = "-".join(_grid_label(v) for v in combo)
        cfg.run_id = f"g{i:03d}-{label}"[:120]
        points.append(cfg)
    return points


def grid_point(config: ExperimentConfig, index: int) -> ExperimentConfig:
    """The ``index``-th point (0-based) of :func:`expand_grid` (e.g. ``$SLURM_ARRAY_TASK_ID``)."""
    points = expand_grid(config)
    if not 0 <= index < len(points):
        raise ConfigError(f"grid point {index} out of range: the grid has {len(points)} points (0..{len(points) - 1})")
    return points[index]


__all__ = ["flatten_dict", "ExperimentConfig", "ModelConfig", "DetectionConfig", "InferenceConfig", "DataConfig",
           "ConfigError", "load_config", "apply_overrides", "validate", "valid_keys", "expand_grid", "grid_point",
           "CHOICES"]
