"""What a config check needs to know about the models, without importing torch: the registered names and each
model's default ``depth``.

Until ``model`` is imported, both are read from the source of the ``model`` package (the ``_REGISTRY`` literal in
``model/__init__.py`` and the constructor defaults in the module each entry names), so loading a config does not
import torch. Once ``model`` is imported (torch is loaded then anyway) its live registry answers, which also knows
models added with ``model.register_model``. Whatever the source cannot answer (no registry literal, a default that
is not a literal, ``**kwargs`` passed to a parent) is asked of ``model`` itself (``list_models``,
``model_keywords``), as before this module existed.
"""
from __future__ import annotations

import ast
import importlib.util
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

_UNKNOWN = object()


def _model_package_dir() -> Path:
    spec = importlib.util.find_spec("model")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the 'model' package is not importable (run from the repository or install it)")
    return Path(list(spec.submodule_search_locations)[0])


@lru_cache(maxsize=None)
def _source_registry() -> dict[str, str] | None:
    """``name -> "module:attribute"`` as written in ``model/__init__.py``; None when it holds no such literal."""
    path = _model_package_dir() / "__init__.py"
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        target = node.target if isinstance(node, ast.AnnAssign) else \
            node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None
        if isinstance(target, ast.Name) and target.id == "_REGISTRY" and node.value is not None:
            try:
                return dict(ast.literal_eval(node.value))
            except (ValueError, TypeError, SyntaxError):
                return None
    return None


def _source_file(module: str) -> Path | None:
    """The file of ``model.<...>`` (a module or a package's ``__init__.py``), without importing it."""
    parts = module.split(".")
    if parts[0] != "model":
        return None
    base = _model_package_dir().joinpath(*parts[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@lru_cache(maxsize=None)
def _source_default(target: str, keyword: str) -> Any:
    """The literal default of ``keyword`` in the ``__init__`` of ``"module:Class"``; ``None`` when the constructor
    has no such keyword, ``_UNKNOWN`` when the source cannot tell (no literal, ``**kwargs``, not a class)."""
    module, _, attr = target.partition(":")
    path = _source_file(module)
    if path is None:
        return _UNKNOWN
    classes = [n for n in ast.parse(path.read_text(encoding="utf-8")).body
               if isinstance(n, ast.ClassDef) and n.name == attr]
    inits = [n for n in (classes[0].body if classes else []) if isinstance(n, ast.FunctionDef) and n.name == "__init__"]
    if not inits:
        return _UNKNOWN
    args = inits[0].args
    positional = args.posonlyargs + args.args
    defaults = dict(zip([a.arg for a in positional[len(positional) - len(args.defaults):]], args.defaults))
    defaults.update({a.arg: d for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None})
    if keyword not in defaults:  # a keyword without a default, or none here: only **kwargs leaves it open
        named = {a.arg for a in positional + args.kwonlyargs}
        return _UNKNOWN if keyword not in named and args.kwarg is not None else None
    try:
        return ast.literal_eval(defaults[keyword])
    except (ValueError, TypeError, SyntaxError):
        return _UNKNOWN


def model_names() -> list[str]:
    """The names ``model.build_model`` accepts, sorted (``model.list_models()``)."""
    registry = None if "model" in sys.modules else _source_registry()
    if registry is None:
        from model import list_models

        return list_models()
    return sorted(registry)


def default_depth(name: str) -> int | None:
    """The default ``depth`` of model ``name``'s constructor; None when it has none or it is not an int."""
    registry = None if "model" in sys.modules else _source_registry()
    if registry is not None and isinstance(registry.get(name), str):
        value = _source_default(registry[name], "depth")
        if value is not _UNKNOWN:
            return value if isinstance(value, int) else None
    from model import model_keywords

    p = (model_keywords(name) or {}).get("depth")
    return p.default if p is not None and isinstance(p.default, int) else None


__all__ = ["model_names", "default_depth"]
