"""The escnn / e2cnn side of :class:`model.escnnUnet.EscnnUNet`: the library's namespace, its gspaces, the wrapper
that runs a plain-torch field layer on GeometricTensors, the invariant projector of a representation, He init.

Nothing here imports escnn or e2cnn at module import: :func:`backend` does, on first use, so the exported
plain-torch network (:mod:`model.escnn_export`) runs without them. On import the escnn fix of
:mod:`model.escnn_compat` is applied when escnn is installed.
"""
from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from . import escnn_compat as _compat
from .groups import parse_group

try:  # apply the escnn fix on import (see model/escnn_compat.py); escnn itself stays optional
    _compat.patch_escnn()
except ImportError:  # escnn missing: exported models still work; EscnnUNet(backend="escnn") names the package
    pass

_BACKEND_CACHE: dict[str, dict[str, Any]] = {}


def backend(name: str) -> dict[str, Any]:
    """Backend namespace: ``gspaces``, ``nn`` and ``TorchOnFields``, the wrapper of a plain-torch field layer
    (:mod:`model.field_layers`) for the library's GeometricTensors. Built once per backend."""
    if name not in _BACKEND_CACHE:
        gspaces, enn = _compat.import_backend(name)

        class TorchOnFields(enn.EquivariantModule):
            """A plain-torch layer of :mod:`model.field_layers` on the tensor of a ``GeometricTensor``.

            The layer must be equivariant for ``in_type`` (each field layer says for which fields it is); its
            exported counterpart is a copy of the layer itself. Shapes: ``(B, C, H, W) -> (B, C, H/stride, W/stride)``.
            """

            def __init__(self, in_type, module: nn.Module, stride: int = 1):
                super().__init__()
                self.space, self.in_type, self.out_type = in_type.gspace, in_type, in_type
                self.module, self.stride = module, stride

            def forward(self, input):  # noqa: A002 - escnn's signature
                assert input.type == self.in_type
                return enn.GeometricTensor(self.module(input.tensor), self.out_type)

            def evaluate_output_shape(self, input_shape):
                b, c, *spatial = input_shape
                return (b, c, *(size // self.stride for size in spatial))

            def export(self) -> nn.Module:
                return copy.deepcopy(self.module).eval()

        _BACKEND_CACHE[name] = {"gspaces": gspaces, "nn": enn, "TorchOnFields": TorchOnFields}
    return _BACKEND_CACHE[name]


def gspace(backend_name: str, group: str, max_frequency: int = 3):
    """The library's gspace of ``group`` acting on the plane (flips mirror left↔right, as model.equivariance)."""
    kind, n = parse_group(group)
    gs = backend(backend_name)["gspaces"]
    if n == 0:  # SO2 / O2: kernels and fields band-limited; the kernel basis needs frequencies up to 2L
        if backend_name != "escnn":
            raise ValueError(f"group {group} needs backend='escnn' (e2cnn has no Fourier non-linearity); "
                             f"got backend={backend_name!r}")
        if kind == "C":
            return gs.rot2dOnR2(-1, maximum_frequency=2 * max_frequency)
        return gs.flipRot2dOnR2(-1, maximum_frequency=2 * max_frequency, axis=math.pi / 2)
    if backend_name == "escnn":
        return gs.rot2dOnR2(n) if kind == "C" else gs.flipRot2dOnR2(n, axis=math.pi / 2)
    return gs.Rot2dOnR2(n) if kind == "C" else gs.FlipRot2dOnR2(n, axis=math.pi / 2)


def invariant_projector(rep) -> torch.Tensor:
    """``P = Q diag(trivial) Qᵀ`` (``d × d``, float64): the projector onto the invariant subspace of an escnn
    representation of size ``d``."""
    group = rep.group
    mask = torch.cat([torch.full((group.irrep(*i).size,), float(group.irrep(*i).is_trivial())) for i in rep.irreps])
    q = torch.as_tensor(rep.change_of_basis, dtype=torch.float64)
    return (q * mask) @ q.T


@torch.no_grad()
def he_init_(conv: nn.Module, gain: float = 2.0) -> None:
    """He-style init of an ``R2Conv``'s basis coefficients, from one expansion of the basis.

    Draw ``w ~ N(0, 1)``, expand the filter ``K = Σ_b w_b B_b`` (``C_out × C_in × k × k``) and rescale ``w`` so
    that ``mean(K²) = gain / fan_in`` with ``fan_in = C_in·k²`` (He et al.: ``Var(K) = 2 / fan_in`` keeps the
    second moment of ReLU activations constant through depth). escnn's ``generalized_he_init`` aims at the same
    per-output variance but counts basis elements per irrep pair, which is slow for wide layers.
    Biases are set to zero.
    """
    w = conv.weights
    w.normal_()
    kernel, _ = conv.expand_parameters()
    fan_in = conv.in_type.size * conv.kernel_size**2
    w.mul_(math.sqrt(gain / fan_in) / kernel.pow(2).mean().sqrt().clamp_min(1e-12))
    if getattr(conv, "bias", None) is not None:
        conv.bias.zero_()


__all__ = ["backend", "gspace", "invariant_projector", "he_init_"]
