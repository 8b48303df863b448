"""Config values: :class:`ConfigError`, and YAML / ``key=value`` text turned into a field's declared type.

``_coerce(value, tp)`` converts or raises ``_CoerceError`` (the caller names the key): ``1e-3`` is a float for a
float field, ``"3"`` is refused for a bool, ``"[1, 2]"`` or ``"1,2"`` is a list, ``null``/``none`` fits an
optional field.
"""
from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml


class ConfigError(ValueError):
    """A bad configuration key or value; the message names it."""


# ------------------------------------------------------------------------------------------ typing helpers


def _hints(obj) -> dict[str, Any]:
    return typing.get_type_hints(type(obj) if not isinstance(obj, type) else obj)


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "None"
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(tp))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return getattr(tp, "__name__", str(tp))


class _CoerceError(Exception):
    pass


def _coerce_number(value: Any, tp: type) -> int | float:
    """``value`` as an int or a float: a number, or a string that parses as one (no bools; an int accepts
    only whole floats such as ``2.0``)."""
    if isinstance(value, bool):
        raise _CoerceError
    if isinstance(value, str):
        try:
            return tp(value.strip())
        except ValueError:
            raise _CoerceError from None
    if tp is int and isinstance(value, int):
        return value
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if tp is float and isinstance(value, (int, float)):
        return float(value)
    raise _CoerceError


def _coerce(value: Any, tp) -> Any:
    """``value`` converted to type ``tp`` or ``_CoerceError``. Strings are parsed when the type asks for it."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "~")):
            if type(None) in args:
                return None
        for a in args:  # first match wins, in declaration order
            if a is type(None):
                continue
            try:
                return _coerce(value, a)
            except _CoerceError:
                continue
        raise _CoerceError
    if tp is type(None):
        if value is None:
            return None
        raise _CoerceError
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "false", "no", "off"):
            return value.lower() in ("true", "yes", "on")
        raise _CoerceError
    if tp in (int, float):
        return _coerce_number(value, tp)
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. a run name "1"
        raise _CoerceError
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if isinstance(value, str):
            value = _parse_scalar(value)
            if isinstance(value, str):
                value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise _CoerceError
        return [_coerce(v, item_tp) for v in value]
    if origin is dict:
        if isinstance(value, str):
            value = _parse_scalar(value)
        if not isinstance(value, dict):
            raise _CoerceError
        return dict(value)
    raise _CoerceError


def _parse_scalar(text: str) -> Any:
    """YAML-parse an override value; plain text stays text."""
    try:
        return yaml.safe_load(text) if text.strip() != "" else ""
    except yaml.YAMLError:
        return text


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj
