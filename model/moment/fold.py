"""Folding a batch norm into the convolution before it, for inference (eval-mode maths, one ``conv2d``)."""
from __future__ import annotations

from torch import Tensor

from .conv import MomentConv2d
from .norm import ScalarVectorBatchNorm


def fold_conv_norm(conv: MomentConv2d, norm: ScalarVectorBatchNorm) -> tuple[Tensor, Tensor]:
    """Kernel and bias of ``norm(conv(x))`` in eval mode as one convolution (``W·scale``, ``b·scale + shift``).

    Exactly equivariant: the scale is shared by both components of a vector field and the shift is zero there.
    """
    if conv.out_type != norm.type:
        raise ValueError(f"fold_conv_norm: conv output {conv.out_type.describe()} != norm {norm.type.describe()}")
    scale, shift = norm.eval_scale_shift()
    w = conv.cached_kernel() * scale.view(-1, 1, 1, 1)
    b = conv._full_bias()
    bias = shift if b is None else b.detach() * scale + shift
    return w, bias


__all__ = ["fold_conv_norm"]
