"""Nonlinearities of moment-kernel feature maps: ReLU on scalars, a function of the norm on vectors.

Both vector nonlinearities keep a vector's direction, so they commute with D4 pointwise (``|ρ(g)v| = |v|``
exactly: components are permuted/negated). The norm-ReLU has a hand-written backward (:class:`_NormReLUFn`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .fields import FieldType, unwrap, wrap

VECTOR_NONLINEARITIES = ("norm_relu", "gated")


class _NormReLUFn(torch.autograd.Function):
    """ReLU on the first ``S`` channels; ``v ↦ relu(n − b) v / n`` with ``n = sqrt(|v|² + eps)`` on the vector
    fields after them. Backward (active pixels, ``f = 1 − b/n``): ``∂v = f g + (b/n³)(v·g) v``,
    ``∂b = −Σ (v·g)/n``."""

    @staticmethod
    def forward(ctx, x, b, S: int, V: int, eps: float):
        xs, xv = x.split([S, 2 * V], dim=1)
        B, _, H, W = x.shape
        v = xv.reshape(B, V, 2, H, W)
        vx, vy = v.unbind(2)
        n = torch.addcmul(vx * vx, vy, vy).add_(eps).sqrt_()  # (B, V, H, W)
        f = (n - b.view(1, V, 1, 1)).clamp_min_(0).div_(n)
        y = torch.empty_like(x)
        ys, yv = y.split([S, 2 * V], dim=1)
        torch.clamp_min(xs, 0, out=ys)
        torch.mul(v, f.unsqueeze(2), out=yv.unflatten(1, (V, 2)))
        ctx.save_for_backward(x, b, n, f)
        ctx.S, ctx.V = S, V
        return y

    @staticmethod
    def backward(ctx, g):
        x, b, n, f = ctx.saved_tensors
        S, V = ctx.S, ctx.V
        B, _, H, W = x.shape
        xs, xv = x.split([S, 2 * V], dim=1)
        gs, gv = g.split([S, 2 * V], dim=1)
        v = xv.reshape(B, V, 2, H, W)
        gv = gv.reshape(B, V, 2, H, W)
        vg = (v * gv).sum(2)  # (B, V, H, W)
        active = f > 0
        vg_n = torch.where(active, vg / n, vg.new_zeros(()))  # (v·g)/n on active pixels
        gb = -vg_n.sum(dim=(0, 2, 3))
        coef = vg_n.mul_(b.view(1, V, 1, 1)).div_(n.square())  # (b/n³)(v·g)
        gx = torch.empty_like(x)
        gxs, gxv = gx.split([S, 2 * V], dim=1)
        gxv = gxv.unflatten(1, (V, 2))
        torch.mul(gv, f.unsqueeze(2), out=gxv)
        gxv.addcmul_(v, coef.unsqueeze(2))
        torch.where(xs > 0, gs, gs.new_zeros(()), out=gxs)
        return gx, gb, None, None, None


class FieldNonlinearity(nn.Module):
    """ReLU on scalars; on vectors a function of the norm only, so the direction is kept.

    ``vector="norm_relu"``: ``v ↦ relu(|v| − b) · v/|v|`` with a learned threshold ``b`` per vector field
    (initialised to ``threshold``).
    ``vector="gated"``: ``v_j ↦ sigmoid(s_j) · v_j``, gated by the pre-activation of scalar channel ``j``
    (requires ``n_scalar >= n_vector``; the scalars themselves still pass through ReLU, so channel counts are
    unchanged).
    Both are invariant/equivariant pointwise: ``|ρ(g)v| = |v|`` exactly (components are permuted/negated).
    """

    def __init__(self, ftype: FieldType, vector: str = "norm_relu", threshold: float = 0.5, eps: float = 1e-8):
        super().__init__()
        if vector not in VECTOR_NONLINEARITIES:
            raise ValueError(f"unknown vector nonlinearity {vector!r}; expected one of {VECTOR_NONLINEARITIES}")
        if vector == "gated" and ftype.n_scalar < ftype.n_vector:
            raise ValueError(f"gated nonlinearity needs n_scalar >= n_vector (one gate per vector), got "
                             f"{ftype.describe()}")
        self.type, self.vector, self.eps = ftype, vector, eps
        self.threshold = (nn.Parameter(torch.full((ftype.n_vector,), float(threshold)))
                          if vector == "norm_relu" and ftype.n_vector else None)

    def forward(self, x):
        x, wrapped = unwrap(x, self.type, "FieldNonlinearity")
        S, V = self.type.n_scalar, self.type.n_vector
        if V == 0:
            return wrap(F.relu(x), self.type, wrapped)
        if self.vector == "norm_relu":
            return wrap(_NormReLUFn.apply(x, self.threshold, S, V, self.eps), self.type, wrapped)
        xs, xv = x.split([S, 2 * V], dim=1)
        v = xv.unflatten(1, (V, 2))  # (B, V, 2, H, W)
        factor = torch.sigmoid(xs[:, :V])
        y_v = (v * factor.unsqueeze(2)).flatten(1, 2)
        y = torch.cat([F.relu(xs), y_v], dim=1)
        return wrap(y, self.type, wrapped)

    def extra_repr(self) -> str:
        return f"{self.type.n_scalar}s+{self.type.n_vector}v, vector={self.vector}"


__all__ = ["FieldNonlinearity", "VECTOR_NONLINEARITIES"]
