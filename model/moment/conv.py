"""The moment-kernel convolution :class:`MomentConv2d`: one learned kernel assembled from the basis, one ``conv2d``.

The layer computes a true convolution ``out(p) = Σ_u K(u) in(p − u)`` (its impulse response *is* the kernel ``K``)
with a moment kernel (:mod:`model.moment.basis`). All kernels of a layer are linear in the weights: the dense
kernel is

    W[c_out, c_in, :, :] = Σ_b  C[c_out, c_in, b] · Φ[b]          (one einsum)

where the coefficient tensor ``C`` is the flat weight vector scattered to its (channel pair, b) slots with a
precomputed index (±1 signs for the C4 terms). Biases exist only on scalar output channels (a constant vector is
not equivariant).

Cost: one ``index_select`` of the weights, one ``index_copy_`` into a zeroed coefficient tensor and the einsum (a
GEMM with inner dimension ``6·n_radii``), once per step, independent of batch and image size. In eval mode, when
no gradient is needed, the assembled kernel is cached until a parameter changes (the cache key is each
parameter's in-place version counter and storage pointer, so an optimizer step, ``load_state_dict`` or ``.to()``
invalidates it); :meth:`MomentConv2d.export` returns the equivalent plain ``nn.Conv2d``.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..groups import MOMENT_GROUPS, check_group
from .basis import N_ANGULAR, block_terms, moment_dictionary, radial_grid
from .fields import FieldType, unwrap, wrap


class MomentConv2d(nn.Module):
    """Equivariant ``k×k`` convolution between field types with moment kernels (see the module docstring).

    Args:
        in_type, out_type: :class:`FieldType` of input and output.
        kernel_size: odd; zero padding ``k // 2`` keeps H, W (and exact D4 equivariance).
        group: ``"D4"`` (O(2) moment kernels: rotations and reflections) or ``"C4"`` (adds the ``x̂⊥``/``J``
            terms: rotations only).
        bias: add a learned bias to the **scalar** output channels (vectors never get one).

    Parameters: one flat ``weight`` vector holding, per block and per (out field, in field), one number per
    radius for every term of the table in the module docstring; ``bias`` of length ``out_type.n_scalar``.

    Shapes: ``(B, in_type.channels, H, W) -> (B, out_type.channels, H, W)``; also accepts/returns
    :class:`FieldTensor`.
    """

    def __init__(self, in_type: FieldType, out_type: FieldType, kernel_size: int = 3, group: str = "D4",
                 bias: bool = False):
        super().__init__()
        if not isinstance(in_type, FieldType) or not isinstance(out_type, FieldType):
            raise TypeError("MomentConv2d needs FieldType in_type and out_type")
        group = check_group(group, MOMENT_GROUPS, "MomentConv2d")
        terms = block_terms(group)
        self.in_type, self.out_type, self.kernel_size, self.group = in_type, out_type, int(kernel_size), group
        self.padding = self.kernel_size // 2
        ridx, _, _, radii = radial_grid(self.kernel_size)
        n_r = len(radii)
        self.n_radii = n_r
        nb = n_r * N_ANGULAR
        self.register_buffer("basis", moment_dictionary(self.kernel_size).to(torch.get_default_dtype()),
                             persistent=False)

        # ---- index bookkeeping (vectorised over field pairs; loops only over the few terms) ----
        c_in = in_type.channels
        S_i, V_i, S_o, V_o = in_type.n_scalar, in_type.n_vector, out_type.n_scalar, out_type.n_vector
        fields = {"ss": (S_o, S_i), "sv": (V_o, S_i), "vs": (S_o, V_i), "vv": (V_o, V_i)}

        # block names read "<in><out>": "sv" maps scalars to vectors
        def out_chan(block, o, comp):
            return o if block[1] == "s" else S_o + 2 * o + comp

        def in_chan(block, i, comp):
            return i if block[0] == "s" else S_i + 2 * i + comp

        src, dst, sign = [], [], []
        offset = 0
        self.block_slices: dict[str, slice] = {}
        for block in ("ss", "sv", "vs", "vv"):
            n_o, n_i = fields[block]
            radii_per_term = [n_r if r0 else n_r - 1 for r0, _ in terms[block]]
            per_pair = sum(radii_per_term)
            size = n_o * n_i * per_pair
            self.block_slices[block] = slice(offset, offset + size)
            if size == 0:
                continue
            o = np.arange(n_o)[:, None, None]
            i = np.arange(n_i)[None, :, None]
            t0 = 0
            for (r0, entries), n_t in zip(terms[block], radii_per_term):
                a = np.arange(n_t)[None, None, :] + (0 if r0 else 1)  # radius index
                p = offset + (o * n_i + i) * per_pair + t0 + np.arange(n_t)[None, None, :]
                for oc, ic, m, sg in entries:
                    d = (out_chan(block, o, oc) * c_in + in_chan(block, i, ic)) * nb + a * N_ANGULAR + m
                    p_b, d_b = np.broadcast_arrays(p, d)
                    src.append(p_b.ravel())
                    dst.append(d_b.ravel())
                    sign.append(np.full(p_b.size, sg, dtype=np.float64))
                t0 += n_t
            offset += size
        self.n_weights = offset
        src_a = np.concatenate(src) if src else np.zeros(0, dtype=np.int64)
        dst_a = np.concatenate(dst) if dst else np.zeros(0, dtype=np.int64)
        sign_a = np.concatenate(sign) if sign else np.zeros(0)
        # Order by destination: the scatter then writes memory sequentially; slots must be unique.
        order = np.argsort(dst_a, kind="stable")
        src_a, dst_a, sign_a = src_a[order], dst_a[order], sign_a[order]
        if dst_a.size > 1 and not (dst_a[1:] != dst_a[:-1]).all():
            raise AssertionError("moment basis slots must be unique")
        self.register_buffer("_src", torch.from_numpy(src_a.astype(np.int64)), persistent=False)
        self.register_buffer("_dst", torch.from_numpy(dst_a.astype(np.int64)), persistent=False)
        self._has_signs = bool((sign_a < 0).any())
        sign_t = torch.from_numpy(sign_a) if self._has_signs else torch.zeros(0, dtype=torch.float64)
        self.register_buffer("_sign", sign_t.to(torch.get_default_dtype()), persistent=False)
        self.weight = nn.Parameter(torch.empty(self.n_weights))
        self.bias = nn.Parameter(torch.zeros(S_o)) if (bias and S_o > 0) else None
        self._cache: tuple | None = None
        self.reset_parameters()

    # -- parameters ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def reset_parameters(self, gain: float = math.sqrt(2.0)) -> None:
        """Random normal weights, rescaled so each output channel's kernel energy is ``gain² / fan_in``-like.

        The dense kernel ``W`` is rescaled so that ``mean_o Σ_{c,u} W[o, c, u]² = gain²``: a unit-variance input
        gives outputs of variance about ``gain²`` (He initialisation for ReLU when ``gain = √2``).
        """
        if self.n_weights == 0:
            return
        self.weight.normal_()
        w = self._assemble(self.weight)
        energy = float(w.square().sum() / w.shape[0])
        if energy > 0:
            self.weight.mul_(gain / math.sqrt(energy))
        if self.bias is not None:
            self.bias.zero_()
        self._cache = None

    # -- assembly ------------------------------------------------------------------------------------------
    def _assemble(self, weight: Tensor) -> Tensor:
        c_out, c_in = self.out_type.channels, self.in_type.channels
        nb = self.basis.shape[0]
        vals = weight.index_select(0, self._src)  # backward: index_add (no sort)
        if self._has_signs:
            vals = vals * self._sign
        coef = weight.new_zeros(c_out * c_in * nb)
        coef.index_copy_(0, self._dst, vals)  # in place on a fresh buffer (no extra copy); slots are unique
        return torch.einsum("oib,bkl->oikl", coef.view(c_out, c_in, nb), self.basis)

    def kernel(self) -> Tensor:
        """The dense ``(C_out, C_in, k, k)`` conv2d weight, assembled now (differentiable)."""
        return self._assemble(self.weight)

    def _cache_key(self) -> tuple:
        ps = [self.weight, self.basis]
        return tuple((p._version, p.data_ptr(), p.dtype, p.device) for p in ps)

    def cached_kernel(self) -> Tensor:
        """The assembled kernel, reused while the weights are unchanged (detached; for inference)."""
        key = self._cache_key()
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, self._assemble(self.weight))
        return self._cache[1]

    def _full_bias(self) -> Tensor | None:
        if self.bias is None:
            return None
        n_pad = 2 * self.out_type.n_vector
        if n_pad == 0:
            return self.bias
        return torch.cat([self.bias, self.bias.new_zeros(n_pad)])

    def forward(self, x):
        x, wrapped = unwrap(x, self.in_type, f"MomentConv2d({self.in_type.channels}->{self.out_type.channels})")
        use_cache = not self.training and not (torch.is_grad_enabled() and self.weight.requires_grad)
        w = self.cached_kernel() if use_cache else self._assemble(self.weight)
        b = self._full_bias()
        if use_cache and b is not None:
            b = b.detach()
        y = F.conv2d(x, w, b, padding=self.padding)
        return wrap(y, self.out_type, wrapped)

    @torch.no_grad()
    def export(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` with the assembled kernel (identical outputs on plain tensors)."""
        conv = nn.Conv2d(self.in_type.channels, self.out_type.channels, self.kernel_size, padding=self.padding,
                         bias=self.bias is not None).to(self.weight.device, self.weight.dtype)
        conv.weight.copy_(self._assemble(self.weight))
        if self.bias is not None:
            conv.bias.copy_(self._full_bias())
        return conv

    def extra_repr(self) -> str:
        return (f"{self.in_type.n_scalar}s+{self.in_type.n_vector}v -> {self.out_type.n_scalar}s+"
                f"{self.out_type.n_vector}v, kernel_size={self.kernel_size}, group={self.group}, "
                f"radii={self.n_radii}, bias={self.bias is not None}")


__all__ = ["MomentConv2d"]
