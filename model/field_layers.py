"""Plain-torch layers on feature fields: used inside the steerable U-Net (wrapped for escnn's GeometricTensors) and,
unchanged, in its exported plain-torch copy.

A tensor ``x[B, F·d, H, W]`` holds ``F`` fields of ``d`` channels each, all of one orthogonal representation
``ρ`` of the group (``ρ(g)ᵀ = ρ(g)⁻¹``): a group element ``g`` moves the pixels and maps each field's ``d``-vector
by ``ρ(g)``. Regular fields of a finite group (``d = |G|``) are permutations of their channels; band-limited
("Fourier") fields of SO(2)/O(2) are direct sums of irreducible representations up to a frequency ``L``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _register_norm_state(module: nn.Module, num_fields: int, affine: bool, field_shape: tuple[int, ...]) -> None:
    """Affine ``weight`` (one scale a field) and ``bias``, ``running_mean`` (both ``(num_fields, *field_shape)``),
    ``running_var`` (one a field) and ``num_batches_tracked``, as ``nn.BatchNorm2d`` has them."""
    if affine:
        module.weight = nn.Parameter(torch.ones(num_fields))
        module.bias = nn.Parameter(torch.zeros(num_fields, *field_shape))
    else:
        module.register_parameter("weight", None)
        module.register_parameter("bias", None)
    module.register_buffer("running_mean", torch.zeros(num_fields, *field_shape))
    module.register_buffer("running_var", torch.ones(num_fields))
    module.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))


@torch.no_grad()
def _update_running_stats(module: nn.Module, mean: Tensor, var: Tensor, count: int) -> None:
    """``running ← (1 − momentum)·running + momentum·batch``, the variance made unbiased with ``count`` samples."""
    module.running_mean.lerp_(mean.to(module.running_mean.dtype), module.momentum)
    module.running_var.lerp_((var * (count / max(count - 1, 1))).to(module.running_var.dtype), module.momentum)
    module.num_batches_tracked.add_(1)


class RegularFieldBatchNorm2d(nn.Module):
    """Batch norm with statistics and affine shared within each field of ``field_size`` channels (regular fields).

    Input ``x[B, F·N, H, W]`` holds ``F`` fields of ``N`` channels (regular fields: ``N = |G|``). For field ``f``
    with channels ``c ∈ f``, from per-channel moments ``μ_c, σ²_c`` (over ``B, H, W``)::

        μ_f = mean_{c∈f} μ_c,     σ²_f = mean_{c∈f} (σ²_c + (μ_c − μ_f)²)     (moments over B, N, H, W)
        y_c = γ_f (x_c − μ_f) / sqrt(σ²_f + ε) + β_f  =  x_c · s_f + t_f           (one fused affine)

    This is the maths of escnn's ``InnerBatchNorm`` (a ``BatchNorm3d`` over the ``(B, F, N, H, W)`` view), with the
    same running-statistics update (momentum, unbiased running variance, ``n = B·N·H·W``). Two kernels compute it:
    on CPUs (and in eval mode) the native batch norm over the ``(B, F, N·H·W)`` view; on GPUs in train mode the
    per-channel moments above (C-way parallel reductions, then one fused affine), which is much faster there when a
    field has few channels over a large image (the native kernel parallelises over the ``F`` fields only).
    Equivariance is exact: a group element permutes the channels of a field and the pixels, which changes
    neither ``μ_f`` nor ``σ²_f``, and the affine is the same for every channel of a field.

    Args:
        num_fields: ``F``.
        field_size: ``N`` channels per field.
        eps: added to the variance.
        momentum: running-statistics momentum (as ``nn.BatchNorm2d``).
        affine: learn ``γ_f, β_f``.

    Shapes: ``(B, F·N, H, W) -> same``. Old name ``FieldBatchNorm2d``. Not
    :class:`model.moment.norm.ScalarVectorBatchNorm` (old name ``FieldBatchNorm``), which normalises the scalar
    channels of a moment-kernel feature map one by one and rescales each 2-D vector field by its RMS norm.
    """

    def __init__(self, num_fields: int, field_size: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True):
        super().__init__()
        self.num_fields, self.field_size, self.eps, self.momentum = num_fields, field_size, eps, momentum
        _register_norm_state(self, num_fields, affine, ())

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        nf, n = self.num_fields, self.field_size
        if c != nf * n:
            raise ValueError(f"RegularFieldBatchNorm2d: expected {nf}·{n} = {nf * n} channels, got {c}")
        if self.training and x.is_cuda:
            return self._moments_forward(x)
        # The (B, F, N·H·W) view puts each field on one batch-norm channel: the native kernel computes exactly the
        # statistics above (fast on CPUs, and in eval mode everywhere; slow on GPUs in train mode, few channels).
        if self.training:
            self.num_batches_tracked.add_(1)
        y = F.batch_norm(x.reshape(b, nf, n * h * w), self.running_mean, self.running_var, self.weight, self.bias,
                         self.training, self.momentum, self.eps)
        return y.view(b, c, h, w)

    def _moments_forward(self, x: Tensor) -> Tensor:
        """Train mode from per-channel moments (C-way parallel reductions) and one fused affine: fast on GPUs."""
        b, c, h, w = x.shape
        nf, n = self.num_fields, self.field_size
        var_c, mean_c = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)  # (C,)
        mean_c, var_c = mean_c.view(nf, n), var_c.view(nf, n)
        mean = mean_c.mean(1)
        var = (var_c + (mean_c - mean[:, None]) ** 2).mean(1)
        _update_running_stats(self, mean, var, count=b * n * h * w)
        scale = torch.rsqrt(var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight
        shift = -mean * scale
        if self.bias is not None:
            shift = shift + self.bias
        scale = scale.repeat_interleave(n).view(1, c, 1, 1).to(x.dtype)
        shift = shift.repeat_interleave(n).view(1, c, 1, 1).to(x.dtype)
        return torch.addcmul(shift, x, scale)

    def extra_repr(self) -> str:
        return f"{self.num_fields}, field_size={self.field_size}, eps={self.eps}, momentum={self.momentum}"


class AntialiasedPool2d(nn.Module):
    """2×2 max (``mode="max"``, escnn's anti-aliased max pool) or mean (``mode="avg"``) at stride 1, then a
    depth-wise Gaussian blur (σ) at stride 2.

    ``(B, C, H, W) -> (B, C, H/2, W/2)``; the blur has ``2·round(4σ)+1`` taps, normalised to sum 1. Output pixel
    ``j`` is centred on input position ``2j + ½`` (as a plain 2×2 pool), so the image centre stays the centre and
    90° rotations and flips commute with the pool exactly. The ``avg`` pool is linear and acts alike on every
    channel, so it is equivariant for fields of any representation; ``max`` only for permutation (regular) fields.
    """

    def __init__(self, channels: int, kernel_size: int = 2, sigma: float = 0.6, mode: str = "max"):
        super().__init__()
        if mode not in ("max", "avg"):
            raise ValueError(f"AntialiasedPool2d: mode must be 'max' or 'avg', got {mode!r}")
        self.kernel_size, self.sigma, self.mode = kernel_size, sigma, mode
        size = 2 * int(round(4 * sigma)) + 1
        grid = torch.stack(torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij"), dim=-1)
        r = -torch.sum((grid - (size - 1) / 2.0) ** 2.0, dim=-1, dtype=torch.get_default_dtype())
        g = torch.exp(r / (2 * sigma**2))
        g = g / g.sum()
        self.register_buffer("filter", g.view(1, 1, size, size).repeat(channels, 1, 1, 1))
        self.pad = (size - 1) // 2

    def forward(self, x: Tensor) -> Tensor:
        pool = F.max_pool2d if self.mode == "max" else F.avg_pool2d
        y = pool(x, self.kernel_size, 1)
        return F.conv2d(y, self.filter, stride=self.kernel_size, padding=self.pad, groups=y.shape[1])

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, sigma={self.sigma}"


#: Old name (max mode).
AntialiasedMaxPool2d = AntialiasedPool2d
#: Old name.
FieldBatchNorm2d = RegularFieldBatchNorm2d


class GroupMaxPool(nn.Module):
    """Max over the ``field_size`` channels of every field: ``(B, F·N, H, W) -> (B, F, H, W)`` invariants of
    permutation (regular) fields (escnn's ``GroupPooling``)."""

    def __init__(self, field_size: int):
        super().__init__()
        self.field_size = field_size

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        return self.reduce(x.view(b, c // self.field_size, self.field_size, h, w))

    @staticmethod
    def reduce(fields: Tensor) -> Tensor:
        """``(B, F, d, H, W) -> (B, F, H, W)``."""
        return fields.amax(dim=2)


class FieldNormPool(GroupMaxPool):
    """Euclidean norm of every field, ``(B, F·d, H, W) -> (B, F, H, W)``: invariants of orthogonal fields
    (escnn's ``NormPool``)."""

    @staticmethod
    def reduce(fields: Tensor) -> Tensor:
        return fields.norm(dim=2)


class IrrepBatchNorm2d(nn.Module):
    """Batch norm for fields of an orthogonal representation that mixes irreducible ones.

    With ``P`` (``d × d``, buffer ``invariant_projector``) the projector onto the field's invariant subspace (the
    trivial irreps: ``ρ(g) P = P`` for every ``g``), per-channel means ``m_c`` and variances ``v_c`` over ``B, H, W``::

        μ_f = P m_f                                  (only the invariant part of the mean is removed)
        σ²_f = mean_{c∈f} (v_c + (m_c − μ_c)²)       (= E‖x_f − μ_f‖² / d: invariant, ρ is orthogonal)
        y_f = γ_f (x_f − μ_f) / sqrt(σ²_f + ε) + P β_f

    ``γ_f`` is one scale per field and ``P β_f`` a bias in the invariant subspace, so ``y`` transforms like ``x``.
    escnn's ``IIDBatchNorm2d`` removes the same invariant mean but divides by the mean per-channel variance (each
    channel about its own mean, which leaves out the non-invariant part of the mean) and detaches both statistics
    from autograd; here, as in ``nn.BatchNorm2d``, the output has unit second moment per field and gradients flow
    through the statistics.
    Running statistics: ``running_mean`` (``F × d``, invariant means), ``running_var`` (``F``, unbiased with
    ``n = B·H·W·d``), updated with ``momentum`` as ``nn.BatchNorm2d``.

    Args:
        num_fields: ``F``.
        field_size: ``d``.
        invariant_projector: ``P`` (``d × d``); zeros when the representation has no trivial component.
        eps, momentum, affine: as ``nn.BatchNorm2d``.
    """

    def __init__(self, num_fields: int, field_size: int, invariant_projector: Tensor | None = None,
                 eps: float = 1e-5, momentum: float = 0.1, affine: bool = True):
        super().__init__()
        self.num_fields, self.field_size, self.eps, self.momentum = num_fields, field_size, eps, momentum
        p = torch.zeros(field_size, field_size) if invariant_projector is None else invariant_projector.float()
        if p.shape != (field_size, field_size):
            raise ValueError(f"IrrepBatchNorm2d: projector must be {field_size}×{field_size}, got {tuple(p.shape)}")
        self.register_buffer("invariant_projector", p.clone())
        _register_norm_state(self, num_fields, affine, (field_size,))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        nf, d = self.num_fields, self.field_size
        if c != nf * d:
            raise ValueError(f"IrrepBatchNorm2d: expected {nf}·{d} = {nf * d} channels, got {c}")
        p = self.invariant_projector.to(x.dtype)
        if self.training:
            var_c, mean_c = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
            mean_c, var_c = mean_c.view(nf, d), var_c.view(nf, d)
            mean = mean_c @ p.T
            var = (var_c + (mean_c - mean) ** 2).mean(1)
            _update_running_stats(self, mean, var, count=b * h * w * d)
        else:
            mean, var = self.running_mean.to(x.dtype), self.running_var.to(x.dtype)
        scale = torch.rsqrt(var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight
        shift = -mean * scale[:, None]
        if self.bias is not None:
            shift = shift + self.bias @ p.T
        scale = scale.repeat_interleave(d).view(1, c, 1, 1).to(x.dtype)
        return torch.addcmul(shift.reshape(1, c, 1, 1).to(x.dtype), x, scale)

    def extra_repr(self) -> str:
        return f"{self.num_fields}, field_size={self.field_size}, eps={self.eps}, momentum={self.momentum}"


class FourierReLU(nn.Module):
    """Point-wise ReLU of a band-limited field sampled on ``S`` group elements (escnn's ``FourierPointwise``).

    Each field ``x_f ∈ R^d`` holds Fourier coefficients of a function on the group; ``A`` (``S × d``) samples it
    at ``S`` elements ``g_1 … g_S`` (``(A x)_s = ⟨ρ(g_s) k, x⟩`` for a fixed unit vector ``k``), and ``A⁺`` (``d × S``,
    a regularised pseudo-inverse) maps back::

        y_f = A⁺ relu(A x_f)

    Equivariant to the sampled elements exactly (they permute the samples: with ``S`` a multiple of 4 that covers
    the 90° rotations, and the flips for O(2)), and approximately to the others (band-limit ``L``, ``S`` samples).
    ``A`` and ``A⁺`` are buffers, copied from escnn's ``FourierPointwise`` when ``EscnnUNet`` is built.
    """

    def __init__(self, field_size: int, samples: int):
        super().__init__()
        self.field_size, self.samples = field_size, samples
        self.register_buffer("A", torch.zeros(samples, field_size))
        self.register_buffer("Ainv", torch.zeros(field_size, samples))

    def forward(self, x: Tensor) -> Tensor:
        # A and A⁺ on every field at once: two grouped 1×1 convolutions (one group per field), faster on CPU than
        # escnn's einsum and the same maths up to float rounding.
        nf = x.shape[1] // self.field_size
        to_samples = self.A.to(x.dtype).repeat(nf, 1)[:, :, None, None]  # (F·S, d, 1, 1)
        to_fields = self.Ainv.to(x.dtype).repeat(nf, 1)[:, :, None, None]  # (F·d, S, 1, 1)
        return F.conv2d(torch.relu(F.conv2d(x, to_samples, groups=nf)), to_fields, groups=nf)

    def extra_repr(self) -> str:
        return f"field_size={self.field_size}, samples={self.samples}"


__all__ = ["RegularFieldBatchNorm2d", "FieldBatchNorm2d", "AntialiasedPool2d", "AntialiasedMaxPool2d", "GroupMaxPool", "FieldNormPool",
           "IrrepBatchNorm2d", "FourierReLU"]
