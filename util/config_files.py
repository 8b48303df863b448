"""Config files: a YAML mapping per file, and ``base: other.yaml`` inheritance (merged key by key)."""
from __future__ import annotations

from pathlib import Path

import yaml

from util.config_values import ConfigError


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'base:' chain loops back to itself")
    try:
        d = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(d).__name__}")
    base = d.pop("base", None)
    if base:
        base_d = _read_yaml((path.parent / base), seen + (path.resolve(),))
        d = _deep_merge(base_d, d)
    return d


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "grid":
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out
