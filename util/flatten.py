"""Nested mappings as one flat mapping of joined keys (for flat tables, tracker parameters and logged scores)."""
from __future__ import annotations

import json
from typing import Any, Mapping


def flatten_dict(d: Mapping, prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": [1, 2]}`` -> ``{"a.b": 1, "c": "[1, 2]"}``: nested keys joined with ``sep`` after
    ``prefix``, lists and tuples as JSON text."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten_dict(v, key + sep, sep))
        elif isinstance(v, (list, tuple)):
            out[key] = json.dumps(list(v), default=str)
        else:
            out[key] = v
    return out


__all__ = ["flatten_dict"]
