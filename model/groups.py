"""The one group vocabulary of the model library: names, parsing and validation.

A group acts on the image plane: ``CN`` are the rotations by multiples of ``360°/N``, ``DN`` those and the
left↔right flip (``2N`` elements), ``SO2``/``O2`` every rotation (and the flips). Names are case-insensitive and
surrounding white space is ignored (``" d4 "`` is ``"D4"``). Every module of :mod:`model` parses group names here:
:func:`parse_group` for any ``CN``/``DN``/``SO2``/``O2``, :func:`check_group` for a model that supports only a few.
"""
from __future__ import annotations

import re
from typing import Sequence

#: The continuous groups (all rotations, and for O2 the flips); they parse to ``N = 0``.
CONTINUOUS_GROUPS = ("SO2", "O2")
#: Named groups, built and tested by the steerable U-Net; any other ``CN``/``DN`` with ``N >= 1`` is accepted
#: too (e.g. ``D16``, whose regular fields have 32 channels).
GROUPS = ("C1", "C2", "C4", "C8", "C16", "D1", "D2", "D4", "D8", *CONTINUOUS_GROUPS)
#: The groups of the moment-kernel layers (:mod:`model.moment`).
MOMENT_GROUPS = ("D4", "C4")


def normalize_group(group: object) -> str:
    """``" d4 "`` -> ``"D4"``: the spelling every check compares."""
    return str(group).strip().upper()


def parse_group(group: object) -> tuple[str, int]:
    """``"D4"`` -> ``("D", 4)``: a cyclic (``C``, rotations by ``360°/N``) or dihedral (``D``, also flips) group.

    The continuous groups map to ``N = 0``: ``"SO2"`` -> ``("C", 0)``, ``"O2"`` -> ``("D", 0)``. Raises
    ``ValueError`` naming the value and the supported groups.
    """
    name = normalize_group(group)
    if name in CONTINUOUS_GROUPS:
        return ("C" if name == "SO2" else "D"), 0
    m = re.fullmatch(r"([CD])(\d+)", name)
    if m is None or int(m.group(2)) < 1:
        raise ValueError(
            f"unknown group {group!r}; supported groups: {', '.join(GROUPS)} (and any CN or DN with N >= 1)"
        )
    return m.group(1), int(m.group(2))


def group_name(kind: str, n: int) -> str:
    """Inverse of :func:`parse_group`: ``("D", 4)`` -> ``"D4"``, ``("C", 0)`` -> ``"SO2"``."""
    if n == 0:
        return "SO2" if kind == "C" else "O2"
    return f"{kind}{n}"


def group_order(group: object) -> int:
    """``|G|``: ``N`` for ``CN``, ``2N`` for ``DN`` (a ValueError for the infinite SO2/O2)."""
    kind, n = parse_group(group)
    if n == 0:
        raise ValueError(f"{group} is infinite: its (Fourier) fields have EscnnUNet.field_size channels")
    return n if kind == "C" else 2 * n


def check_group(group: object, allowed: Sequence[str], where: str) -> str:
    """The normalised name of ``group`` when it is one of ``allowed``; else a ``ValueError`` naming ``where``,
    the value and the allowed groups."""
    name = normalize_group(group)
    if name not in allowed:
        raise ValueError(f"{where}: unknown group {group!r}; supported groups: {', '.join(allowed)}")
    return name


__all__ = ["CONTINUOUS_GROUPS", "GROUPS", "MOMENT_GROUPS", "normalize_group", "parse_group", "group_name",
           "group_order", "check_group"]
