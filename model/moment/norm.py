"""Batch norm of moment-kernel feature maps: scalars normalised, vector fields rescaled by their RMS norm.

Training mode runs a hand-written backward (:class:`_ScalarVectorBatchNormFn`: a few elementwise passes instead of
autograd's dozen); eval mode is one affine map per channel (:meth:`ScalarVectorBatchNorm.eval_scale_shift`), which
:func:`model.moment.fold.fold_conv_norm` folds into the preceding convolution.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .fields import FieldType, unwrap, wrap


class ScalarVectorBatchNorm(nn.Module):
    """BatchNorm on scalars; vectors divided by the root mean squared norm, times a learned factor.

    Scalars: ``(s − mean) / sqrt(var + eps) · γ + β`` (statistics over batch and pixels, running averages for
    eval, like ``nn.BatchNorm2d``). Vector field ``j``: ``v_j · γ_j / sqrt(E|v_j|² + eps)`` with ``E|v_j|²`` the
    mean squared norm over batch and pixels (running average in eval). No mean is subtracted from vectors
    (that would not be equivariant), and ``|v|²`` sums both components, so the statistic is invariant.
    Implemented as one ``var_mean`` over all channels and one fused multiply-add.

    Shapes: ``(B, ftype.channels, H, W) -> same``; also accepts/returns :class:`FieldTensor`. Old name
    ``FieldBatchNorm``. Not :class:`model.field_layers.RegularFieldBatchNorm2d` (old name ``FieldBatchNorm2d``),
    which normalises the permutation (regular) fields of the steerable U-Net with one mean and variance per field.
    """

    def __init__(self, ftype: FieldType, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.type, self.eps, self.momentum = ftype, eps, momentum
        S, V = ftype.n_scalar, ftype.n_vector
        self.weight = nn.Parameter(torch.ones(S + V))  # γ for scalars then vectors
        self.bias = nn.Parameter(torch.zeros(S))  # β for scalars only
        self.register_buffer("running_mean", torch.zeros(S))
        self.register_buffer("running_var", torch.ones(S))
        self.register_buffer("running_sq", torch.ones(V))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x):
        x, wrapped = unwrap(x, self.type, "ScalarVectorBatchNorm")
        S, V = self.type.n_scalar, self.type.n_vector
        if self.training:
            y, mean_s, var_s, sq_v = _ScalarVectorBatchNormFn.apply(x, self.weight, self.bias, S, V, self.eps)
            with torch.no_grad():
                n = x.numel() // x.shape[1]
                m = self.momentum
                self.running_mean.lerp_(mean_s, m)
                self.running_var.lerp_(var_s * (n / max(n - 1, 1)), m)
                self.running_sq.lerp_(sq_v, m)
                self.num_batches_tracked.add_(1)
            return wrap(y, self.type, wrapped)
        scale, shift = self.eval_scale_shift()
        y = torch.addcmul(shift.view(1, -1, 1, 1), x, scale.view(1, -1, 1, 1))
        return wrap(y, self.type, wrapped)

    def eval_scale_shift(self) -> tuple[Tensor, Tensor]:
        """Per-channel ``(scale, shift)`` of the eval-mode map ``y = x·scale + shift`` (shift is 0 on vectors),
        used to fold the normalisation into the preceding convolution for inference."""
        S, V = self.type.n_scalar, self.type.n_vector
        inv = torch.rsqrt(torch.cat([self.running_var, self.running_sq]) + self.eps) * self.weight
        scale_s, scale_v = inv[:S], inv[S:]
        scale = torch.cat([scale_s, scale_v.repeat_interleave(2)])
        shift = torch.cat([self.bias - self.running_mean * scale_s, inv.new_zeros(2 * V)])
        return scale, shift

    def _state_key(self) -> tuple:
        return tuple((t._version, t.data_ptr()) for t in (self.weight, self.bias, self.running_mean,
                                                           self.running_var, self.running_sq))

    def extra_repr(self) -> str:
        return f"{self.type.n_scalar}s+{self.type.n_vector}v, eps={self.eps}, momentum={self.momentum}"


class _ScalarVectorBatchNormFn(torch.autograd.Function):
    """Training-mode :class:`ScalarVectorBatchNorm` with a hand-written backward (a few passes instead of autograd's
    many). With per-channel sums ``G1 = Σ g`` and ``G2 = Σ g·x`` over batch and pixels (``N`` values):

    * scalars (``y = γ (x − μ) / σ + β``): ``∂x = s·g + a·x + c`` with ``s = γ/σ``,
      ``a = −s (G2 − μ G1) / (N σ²)``, ``c = −s G1 / N − a μ``; ``∂γ = (G2 − μ G1)/σ``, ``∂β = G1``.
    * vector field ``j`` (``y = γ v / ρ``, ``ρ² = E|v|² + eps``): ``∂v = s·g + a·v`` with ``s = γ/ρ``,
      ``a = −γ H / (N ρ³)``, ``H = Σ_{both components} G2``; ``∂γ = H / ρ``.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, S: int, V: int, eps: float):
        var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
        mean_s, var_s = mean[:S], var[:S]
        sq_v = (var[S:] + mean[S:].square()).view(V, 2).sum(1)
        inv = torch.rsqrt(torch.cat([var_s, sq_v]) + eps)  # 1/σ (scalars), 1/ρ (vector fields)
        inv_c = torch.cat([inv[:S], inv[S:].repeat_interleave(2)])
        w_c = torch.cat([weight[:S], weight[S:].repeat_interleave(2)])
        scale = w_c * inv_c
        shift = torch.cat([bias - mean_s * scale[:S], x.new_zeros(2 * V)])
        y = torch.addcmul(shift.view(1, -1, 1, 1), x, scale.view(1, -1, 1, 1))
        ctx.save_for_backward(x, weight, inv, mean_s)
        ctx.S, ctx.V = S, V
        return y, mean_s.detach(), var_s.detach(), sq_v.detach()

    @staticmethod
    def backward(ctx, g, *_):
        x, weight, inv, mean_s = ctx.saved_tensors
        S, V = ctx.S, ctx.V
        n = x.numel() // x.shape[1]
        g = g.contiguous()
        G1 = g.sum(dim=(0, 2, 3))
        G2 = (g * x).sum(dim=(0, 2, 3))
        inv_s, inv_v = inv[:S], inv[S:]
        w_s, w_v = weight[:S], weight[S:]
        # scalars
        G1s, G2s = G1[:S], G2[:S]
        cov = G2s - mean_s * G1s  # Σ g (x − μ)
        s_s = w_s * inv_s
        a_s = -s_s * cov * inv_s.square() / n
        c_s = -s_s * G1s / n - a_s * mean_s
        # vectors
        H = G2[S:].view(V, 2).sum(1)
        s_v = w_v * inv_v
        a_v = -w_v * H * inv_v.pow(3) / n
        scale = torch.cat([s_s, s_v.repeat_interleave(2)]).view(1, -1, 1, 1)
        a = torch.cat([a_s, a_v.repeat_interleave(2)]).view(1, -1, 1, 1)
        c = torch.cat([c_s, x.new_zeros(2 * V)]).view(1, -1, 1, 1)
        gx = torch.addcmul(c, g, scale).addcmul_(x, a)
        gw = torch.cat([cov * inv_s, H * inv_v])
        return gx, gw, G1s, None, None, None


#: Old name.
FieldBatchNorm = ScalarVectorBatchNorm

__all__ = ["ScalarVectorBatchNorm", "FieldBatchNorm"]
