"""The moment-kernel basis: radii and directions of the kernel pixels, the fixed dictionary, the terms per block.

A moment kernel is matrix valued and satisfies ``K(g u) = ρ_out(g) K(u) ρ_in(g)⁻¹``. Writing ``r = |u|`` and
``x̂ = u/|u|`` (``x̂ = 0`` at the centre), its blocks are built from learned radial profiles:

=================  ==========================  ======================================================
block              D4 (= O(2) moments)         C4 adds (SO(2); breaks reflections)
=================  ==========================  ======================================================
scalar → scalar    ``f(r)``                    —
scalar → vector    ``f(r) x̂``                  ``g(r) x̂⊥``
vector → scalar    ``f(r) x̂ᵀ``                 ``g(r) x̂⊥ᵀ``
vector → vector    ``f₁(r) I + f₂(r) x̂x̂ᵀ``     ``f₃(r) J + f₄(r) x̂x̂⊥ᵀ``
=================  ==========================  ======================================================

with ``J = ρ(r_90)`` and ``x̂⊥ = J x̂``. The O(2) kernels are exactly equivariant to D4 on the pixel grid (the
grid is D4-invariant, so ``r`` and ``x̂`` are permuted exactly); the extra terms commute with rotations but
anticommute with the flip, giving C4.

**Radial basis.** ``f(r)`` is one learned number per *distinct pixel radius* of the full ``k×k`` square
(``r² ∈ {0, 1, 2, 4, 5, 8, …}``: 3 radii for ``k=3``, 6 for ``k=5``, 10 for ``k=7``). Terms with ``x̂`` have no
weight at ``r = 0``. A radial profile is therefore exact on the grid (no interpolation) and every D4 orbit of
pixels shares one value.

**Dictionary.** ``Φ[b = (radius a, angular m)](u) = [|u| = r_a] · A_m(x̂)`` with
``A ∈ {1, x̂_x, x̂_y, x̂_x², x̂_x x̂_y, x̂_y²}`` spans every entry of every block above, D4 and C4.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..groups import MOMENT_GROUPS, check_group

N_ANGULAR = 6  # A_m: 1, x̂x, x̂y, x̂x², x̂x x̂y, x̂y²
_ONE, _X, _Y, _XX, _XY, _YY = range(N_ANGULAR)


def radial_grid(kernel_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per kernel pixel ``[i, j]`` of a conv2d weight: ``(radius index, x̂_x, x̂_y, distinct radii)``.

    ``conv2d`` computes a cross-correlation, so weight pixel ``[i, j]`` multiplies ``in(p + (j−c, i−c))``;
    for the true convolution ``Σ_u K(u) in(p − u)`` it therefore holds ``K(u)`` at ``u = (c − j, c − i)``.
    """
    k = int(kernel_size)
    if k < 1 or k % 2 != 1:
        raise ValueError(f"kernel_size must be odd and >= 1 (centred on a pixel), got {kernel_size}")
    c = k // 2
    jj, ii = np.meshgrid(np.arange(k), np.arange(k), indexing="xy")
    ux, uy = (c - jj).astype(np.float64), (c - ii).astype(np.float64)
    r2 = (ux**2 + uy**2).round().astype(np.int64)
    radii2 = np.unique(r2)
    ridx = np.searchsorted(radii2, r2)
    r = np.sqrt(r2.astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        hx = np.where(r2 > 0, ux / np.where(r > 0, r, 1.0), 0.0)
        hy = np.where(r2 > 0, uy / np.where(r > 0, r, 1.0), 0.0)
    return ridx, hx, hy, np.sqrt(radii2.astype(np.float64))


def moment_dictionary(kernel_size: int) -> Tensor:
    """``Φ[a·6 + m, i, j] = [radius(i,j) = r_a] · A_m(x̂(i,j))`` as a float64 tensor ``(n_radii·6, k, k)``."""
    ridx, hx, hy, radii = radial_grid(kernel_size)
    ang = np.stack([np.ones_like(hx), hx, hy, hx * hx, hx * hy, hy * hy])  # (6, k, k)
    onehot = (ridx[None] == np.arange(len(radii))[:, None, None]).astype(np.float64)  # (n_r, k, k)
    phi = onehot[:, None] * ang[None]  # (n_r, 6, k, k)
    return torch.from_numpy(phi.reshape(len(radii) * N_ANGULAR, kernel_size, kernel_size).copy())


# A term is a list of (out component, in component, angular index, sign) entries sharing one weight per radius;
# ``r0`` says whether the term has a weight at r = 0.
_TERMS_D4 = {
    "ss": [(True, [(0, 0, _ONE, 1)])],
    "sv": [(False, [(0, 0, _X, 1), (1, 0, _Y, 1)])],  # f x̂
    "vs": [(False, [(0, 0, _X, 1), (0, 1, _Y, 1)])],  # f x̂ᵀ
    "vv": [(True, [(0, 0, _ONE, 1), (1, 1, _ONE, 1)]),  # f1 I
           (False, [(0, 0, _XX, 1), (0, 1, _XY, 1), (1, 0, _XY, 1), (1, 1, _YY, 1)])],  # f2 x̂x̂ᵀ
}
# x̂⊥ = J x̂ = (x̂_y, −x̂_x) with J = ρ(r_90) = [[0, 1], [−1, 0]].
_TERMS_C4_EXTRA = {
    "ss": [],
    "sv": [(False, [(0, 0, _Y, 1), (1, 0, _X, -1)])],  # g x̂⊥
    "vs": [(False, [(0, 0, _Y, 1), (0, 1, _X, -1)])],  # g x̂⊥ᵀ
    "vv": [(True, [(0, 1, _ONE, 1), (1, 0, _ONE, -1)]),  # f3 J
           # x̂ x̂⊥ᵀ = [[x̂x x̂y, −x̂x²], [x̂y², −x̂x x̂y]]
           (False, [(0, 0, _XY, 1), (0, 1, _XX, -1), (1, 0, _YY, 1), (1, 1, _XY, -1)])],
}


def block_terms(group: str) -> dict[str, list]:
    """The terms of each block (``"ss"``, ``"sv"``, ``"vs"``, ``"vv"``: ``<in><out>``) for ``"D4"`` or ``"C4"``."""
    if check_group(group, MOMENT_GROUPS, "moment kernels") == "D4":
        return _TERMS_D4
    return {b: _TERMS_D4[b] + _TERMS_C4_EXTRA[b] for b in _TERMS_D4}


__all__ = ["N_ANGULAR", "radial_grid", "moment_dictionary", "block_terms"]
