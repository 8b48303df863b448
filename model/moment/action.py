"""The pixel-grid group D4 acting on scalar and vector fields.

Images are ``Tensor[B, C, H, W]``; ``x`` grows to the right (columns) and ``y`` grows **down** (rows), as
displayed. D4 acts as in :mod:`model.equivariance`: ``g = r_θ ∘ f^m`` flips left↔right first (``m = 1``), then
rotates counter-clockwise *as displayed* by ``θ ∈ {0, 90, 180, 270}``. On a position ``u = (u_x, u_y)``
(relative to the image centre, display coordinates, y down) these are the matrices

    ρ(r_90) = [[0, 1], [-1, 0]]   ((x, y) -> (y, -x): "right" becomes "up" = (0, -1))
    ρ(f)    = [[-1, 0], [0, 1]]   ((x, y) -> (-x, y))

A **vector field** has two components ``(v_x, v_y)`` in the same display coordinates and transforms like a
displacement: ``(g·v)(p) = ρ(g) v(g⁻¹p)`` (the pixels move with :func:`model.equivariance.act`, the components
are rotated/reflected with the matrix that moves positions). A **scalar field** only moves: ``(g·s)(p) = s(g⁻¹p)``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..equivariance import GroupElement, act
from .fields import FieldTensor, FieldType

Matrix2 = tuple[tuple[int, int], tuple[int, int]]

_R90: Matrix2 = ((0, 1), (-1, 0))
_FLIP: Matrix2 = ((-1, 0), (0, 1))


def _matmul2(a: Matrix2, b: Matrix2) -> Matrix2:
    return tuple(tuple(sum(a[i][k] * b[k][j] for k in range(2)) for j in range(2)) for i in range(2))


def vector_matrix(g: GroupElement) -> Matrix2:
    """The 2×2 integer matrix ``ρ(g) = ρ(r_90)^k ρ(f)^m`` acting on vector components (and positions)."""
    if not g.exact:
        raise ValueError(f"vector_matrix: {g.name} is not an element of D4 (angle must be a multiple of 90°)")
    m = ((1, 0), (0, 1))
    if g.reflect:
        m = _FLIP
    for _ in range(int(round(g.angle / 90.0)) % 4):
        m = _matmul2(_R90, m)
    return m


def act_field(x: Tensor | FieldTensor, g: GroupElement, ftype: FieldType | None = None):
    """Apply a D4 element to a feature map: ``(g·s)(p) = s(g⁻¹p)``, ``(g·v)(p) = ρ(g) v(g⁻¹p)``.

    Args:
        x: ``Tensor[B, C, H, W]`` with the layout of ``ftype``, or a :class:`FieldTensor` (then ``ftype`` may be
            omitted).
        g: a D4 element (:class:`model.equivariance.GroupElement` with a multiple of 90°).
        ftype: the field type of ``x``.
    """
    if isinstance(x, FieldTensor):
        ftype = ftype or x.type
        return FieldTensor(act_field(x.tensor, g, ftype), ftype)
    if ftype is None:
        raise ValueError("act_field needs the field type of a plain tensor")
    ftype.check(x, "act_field")
    m = vector_matrix(g)
    y = act(x, g)  # moves pixels of every channel
    if ftype.n_vector == 0:
        return y
    s = ftype.n_scalar
    v = y[:, s:].unflatten(1, (ftype.n_vector, 2))
    vx, vy = v[:, :, 0], v[:, :, 1]

    def comb(a: int, b: int) -> Tensor:  # exact: coefficients are 0 / ±1
        if a == 0:
            return vy * b
        if b == 0:
            return vx * a
        return vx * a + vy * b

    new = torch.stack([comb(*m[0]), comb(*m[1])], dim=2).flatten(1, 2)
    return torch.cat([y[:, :s], new], dim=1)


__all__ = ["vector_matrix", "act_field"]
