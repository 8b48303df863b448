"""Field types of the moment-kernel layers: scalar and 2-D vector fields, their channel layout, concatenation.

A feature map of type ``FieldType(n_scalar, n_vector)`` is a ``Tensor[B, n_scalar + 2·n_vector, H, W]`` laid out as

    [s_0, s_1, ..., s_{S-1}, v_0x, v_0y, v_1x, v_1y, ..., v_{V-1}x, v_{V-1}y]

scalars first, then the vector fields with their two components adjacent (x then y, display coordinates: x to
the right, y down). Every layer checks its input against its type (the channel count, or the full type when
given a :class:`FieldTensor`) and raises a ``ValueError`` naming both layouts on mismatch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch
from torch import Tensor


@dataclass(frozen=True)
class FieldType:
    """``n_scalar`` scalar channels followed by ``n_vector`` 2-channel vector fields (components x, y).

    >>> t = FieldType(2, 1); t.channels
    4
    >>> t.layout()
    '[s0, s1 | v0x, v0y]'
    """

    n_scalar: int
    n_vector: int

    def __post_init__(self):
        if self.n_scalar < 0 or self.n_vector < 0:
            raise ValueError(f"FieldType needs n_scalar, n_vector >= 0, got {self.n_scalar}, {self.n_vector}")
        if self.n_scalar + self.n_vector == 0:
            raise ValueError("FieldType needs at least one field")

    @property
    def channels(self) -> int:
        """Number of tensor channels: ``n_scalar + 2 * n_vector``."""
        return self.n_scalar + 2 * self.n_vector

    @property
    def n_fields(self) -> int:
        return self.n_scalar + self.n_vector

    @classmethod
    def from_channels(cls, channels: int, vector_fraction: float) -> "FieldType":
        """Split ``channels`` so that about ``vector_fraction`` of them carry vector fields (2 channels each)."""
        if not 0.0 <= vector_fraction <= 1.0:
            raise ValueError(f"vector_fraction must be in [0, 1], got {vector_fraction}")
        n_vector = int(math.floor(vector_fraction * channels / 2 + 0.5))
        n_vector = min(n_vector, channels // 2)
        if n_vector * 2 == channels and channels > 0 and vector_fraction < 1.0:
            n_vector -= 1  # keep at least one scalar unless all-vector is asked for
        return cls(channels - 2 * n_vector, n_vector)

    def __add__(self, other: "FieldType") -> "FieldType":
        """Type of the concatenation (see :func:`cat_fields`)."""
        return FieldType(self.n_scalar + other.n_scalar, self.n_vector + other.n_vector)

    def layout(self, max_items: int = 3) -> str:
        """Short human-readable channel layout, e.g. ``'[s0..s15 | v0x, v0y .. v7x, v7y]'``."""
        def span(prefix: str, n: int, fmt) -> str:
            if n == 0:
                return "-"
            if n <= max_items:
                return ", ".join(fmt(i) for i in range(n))
            return f"{fmt(0)} .. {fmt(n - 1)}"

        s = span("s", self.n_scalar, lambda i: f"s{i}")
        v = span("v", self.n_vector, lambda i: f"v{i}x, v{i}y")
        return f"[{s} | {v}]"

    def describe(self) -> str:
        return (f"FieldType(n_scalar={self.n_scalar}, n_vector={self.n_vector}) = {self.channels} channels "
                f"{self.layout()}")

    def check(self, x: Tensor, where: str) -> None:
        """Raise ``ValueError`` naming both layouts when ``x`` (B, C, H, W) does not have this type's channels."""
        if not isinstance(x, Tensor):
            raise TypeError(f"{where}: expected a Tensor or FieldTensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"{where}: expected a 4-D feature map (B, C, H, W) of {self.describe()}, "
                             f"got shape {tuple(x.shape)}")
        if x.shape[1] != self.channels:
            raise ValueError(
                f"{where}: input layout does not match the layer's field type: expected {self.describe()}, "
                f"got a plain tensor with {x.shape[1]} channels (layout [c0 .. c{x.shape[1] - 1}], no field type "
                f"with {self.n_scalar} scalars + {self.n_vector} vectors fits)"
            )


class FieldTensor(NamedTuple):
    """A feature map with its type. Layers accept it (type checked exactly) or a plain tensor (channels checked)."""

    tensor: Tensor
    type: FieldType


def unwrap(x: Tensor | FieldTensor, expected: FieldType, where: str) -> tuple[Tensor, bool]:
    """``(tensor, was_wrapped)`` of a layer input, checked against the layer's type ``expected``."""
    if isinstance(x, FieldTensor):
        if x.type != expected:
            raise ValueError(f"{where}: input field type {x.type.describe()} does not match the layer's field "
                             f"type {expected.describe()}")
        expected.check(x.tensor, where)
        return x.tensor, True
    expected.check(x, where)
    return x, False


def wrap(y: Tensor, t: FieldType, wrapped: bool) -> Tensor | FieldTensor:
    """A layer output as the input came: a :class:`FieldTensor` of type ``t`` when ``wrapped``, else ``y``."""
    return FieldTensor(y, t) if wrapped else y


def cat_fields(xs: Sequence, types: Sequence[FieldType] | None = None):
    """Concatenate feature maps field-wise: all scalars (in order), then all vectors (in order).

    Accepts :class:`FieldTensor`s (returns one), or plain tensors with their ``types`` (returns
    ``(tensor, type)``). One ``torch.cat`` (a single copy).
    """
    if types is None:
        if not all(isinstance(x, FieldTensor) for x in xs):
            raise ValueError("cat_fields: pass FieldTensors, or plain tensors together with their types")
        t, ts = [x.tensor for x in xs], [x.type for x in xs]
    else:
        if len(types) != len(xs):
            raise ValueError(f"cat_fields: {len(xs)} tensors but {len(types)} types")
        t, ts = list(xs), list(types)
    for x, ft in zip(t, ts):
        ft.check(x, "cat_fields")
    out_t = ts[0]
    for ft in ts[1:]:
        out_t = out_t + ft
    splits = [x.split([ft.n_scalar, 2 * ft.n_vector], dim=1) for x, ft in zip(t, ts)]  # split: cheap backward
    parts = [sp[0] for sp, ft in zip(splits, ts) if ft.n_scalar]
    parts += [sp[1] for sp, ft in zip(splits, ts) if ft.n_vector]
    y = torch.cat(parts, dim=1)
    return FieldTensor(y, out_t) if types is None else (y, out_t)


__all__ = ["FieldType", "FieldTensor", "unwrap", "wrap", "cat_fields"]
