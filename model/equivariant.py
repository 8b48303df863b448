"""Moment-kernel equivariant layers: field types, convolutions, normalisation, nonlinearities, resampling.

Written from the maths of moment kernels (Schlamowitz, Bennecke & Tward, 2025); no code is copied.

Coordinates and the group action
--------------------------------
Images are ``Tensor[B, C, H, W]``; ``x`` grows to the right (columns) and ``y`` grows **down** (rows), as
displayed. The pixel-grid group D4 acts as in :mod:`model.equivariance`: ``g = r_θ ∘ f^m`` flips left↔right
first (``m = 1``), then rotates counter-clockwise *as displayed* by ``θ ∈ {0, 90, 180, 270}``. On a
position ``u = (u_x, u_y)`` (relative to the image centre, display coordinates, y down) these are the
matrices

    ρ(r_90) = [[0, 1], [-1, 0]]   ((x, y) -> (y, -x): "right" becomes "up" = (0, -1))
    ρ(f)    = [[-1, 0], [0, 1]]   ((x, y) -> (-x, y))

A **vector field** has two components ``(v_x, v_y)`` in the same display coordinates and transforms like a
displacement: ``(g·v)(p) = ρ(g) v(g⁻¹p)`` — the pixels move with :func:`model.equivariance.act` and the
components are rotated/reflected with the same matrix that moves positions (:func:`act_field`). A **scalar
field** only moves: ``(g·s)(p) = s(g⁻¹p)``.

Field types and channel layout
------------------------------
A feature map of type ``FieldType(n_scalar, n_vector)`` has ``n_scalar + 2·n_vector`` channels laid out as

    [s_0, s_1, ..., s_{S-1}, v_0x, v_0y, v_1x, v_1y, ..., v_{V-1}x, v_{V-1}y]

scalars first, then the vector fields with their two components adjacent (x then y). Every layer checks its
input against its type (channel count, or the full type when given a :class:`FieldTensor`) and raises a
``ValueError`` naming both layouts on mismatch.

Moment kernels (:class:`MomentConv2d`)
--------------------------------------
The layer computes a true convolution ``out(p) = Σ_u K(u) in(p − u)`` (the impulse response of the layer *is*
the kernel ``K``), with a matrix-valued kernel that satisfies ``K(g u) = ρ_out(g) K(u) ρ_in(g)⁻¹``. Writing
``r = |u|`` and ``x̂ = u/|u|`` (``x̂ = 0`` at the centre), the blocks are built from learned radial profiles:

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

**Assembly.** All kernels of a layer are linear in the weights. With the fixed dictionary
``Φ[b = (radius a, angular m)](u) = [|u| = r_a] · A_m(x̂)``, ``A ∈ {1, x̂_x, x̂_y, x̂_x², x̂_x x̂_y, x̂_y²}``
(which spans every entry of every block above, D4 and C4), the dense kernel is

    W[c_out, c_in, :, :] = Σ_b  C[c_out, c_in, b] · Φ[b]          (one einsum)

where the coefficient tensor ``C`` is the flat weight vector scattered to its (channel pair, b) slots with a
precomputed index (±1 signs for the C4 terms). The layer then applies **one** ``conv2d``. In eval mode, when
no gradient is needed, the assembled kernel is cached and reused until a parameter changes (the cache key is
each parameter's in-place version counter and storage pointer, so an optimizer step, ``load_state_dict`` or
``.to()`` invalidates it); :meth:`MomentConv2d.export` returns the equivalent plain ``nn.Conv2d``.

Biases exist only on scalar output channels (a constant vector is not equivariant).

Cost
----
Kernel assembly is one ``index_select`` of the weights, one ``index_copy_`` into a zeroed coefficient tensor and
the einsum (a GEMM with inner dimension ``6·n_radii``); it is paid once per step, independent of batch and
image size. ``FieldBatchNorm`` (train mode) and the norm-ReLU have hand-written backward passes (a few
elementwise passes instead of autograd's dozen), and in eval mode without gradients
:class:`model.equivariantUnet.MomentTwoConv` folds each normalisation into the cached kernel of its
convolution (:func:`fold_conv_norm`).

Numerics
--------
All of the above is exactly equivariant in exact arithmetic; in float32 the only deviations are rounding,
which differs between ``f(g·x)`` and ``g·f(x)`` because sums run in another order. oneDNN's (CPU) and cuDNN's
(GPU) fp32 convolutions round several times more than an im2col + GEMM convolution, so equivariance checks
run inside :func:`exact_arithmetic` (TF32 off on CUDA, oneDNN off on CPU).

Exact D4 equivariance of networks built from these layers needs odd kernels (centred on pixels, zero padding
``k//2``), even spatial sizes at every 2× pooling, and statistics that are invariant (means over batch and
all pixels). All layers here satisfy this; see :mod:`model.equivariantUnet`.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .equivariance import GroupElement, act

MOMENT_GROUPS = ("D4", "C4")
VECTOR_NONLINEARITIES = ("norm_relu", "gated")
UPSAMPLE_MODES = ("nearest", "bilinear")


@contextlib.contextmanager
def exact_arithmetic():
    """Switch off reduced-precision convolution paths for equivariance checks; restores the settings after.

    On CUDA: TF32 off for cuDNN and matmul (TF32 keeps 10 mantissa bits: errors ~1e-3). On CPU: oneDNN
    (mkldnn) off, so ``conv2d`` uses im2col + BLAS GEMM; oneDNN's fp32 convolution is measured ~6× less
    accurate here (2.7e-6 vs 4.3e-7 relative for a 512-channel 5×5 conv), which puts a depth-4 U-Net's
    float32 noise (and so its measured equivariance error) at ~1e-5 instead of a few 1e-6. Nothing else changes:
    the model's maths is the same, only the rounding of the convolution.
    """
    cuda_mm = torch.backends.cuda.matmul.allow_tf32
    cudnn_tf32 = torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        with torch.backends.mkldnn.flags(enabled=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = cuda_mm
        torch.backends.cudnn.allow_tf32 = cudnn_tf32


# --------------------------------------------------------------------------------------------------------
# Field types
# --------------------------------------------------------------------------------------------------------
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


def _unwrap(x, expected: FieldType, where: str) -> tuple[Tensor, bool]:
    if isinstance(x, FieldTensor):
        if x.type != expected:
            raise ValueError(f"{where}: input field type {x.type.describe()} does not match the layer's field "
                             f"type {expected.describe()}")
        expected.check(x.tensor, where)
        return x.tensor, True
    expected.check(x, where)
    return x, False


def _wrap(y: Tensor, t: FieldType, wrapped: bool):
    return FieldTensor(y, t) if wrapped else y


# --------------------------------------------------------------------------------------------------------
# Group action on fields
# --------------------------------------------------------------------------------------------------------
_R90 = ((0, 1), (-1, 0))
_FLIP = ((-1, 0), (0, 1))


def _matmul2(a, b):
    return tuple(tuple(sum(a[i][k] * b[k][j] for k in range(2)) for j in range(2)) for i in range(2))


def vector_matrix(g: GroupElement) -> tuple[tuple[int, int], tuple[int, int]]:
    """The 2×2 integer matrix ``ρ(g) = ρ(r_90)^k ρ(f)^m`` acting on vector components (and positions)."""
    if not g.exact:
        raise ValueError(f"vector_matrix: {g.name} is not an element of D4 (angle must be a multiple of 90°)")
    m = ((1, 0), (0, 1))
    if g.reflect:
        m = _FLIP
    for _ in range(int(round(g.angle / 90.0)) % 4):
        m = _matmul2(_R90, m)
    return m


def compose(g2: GroupElement, g1: GroupElement) -> GroupElement:
    """``g2 ∘ g1`` (apply ``g1`` first). Uses ``f ∘ r_θ = r_{−θ} ∘ f``."""
    a1 = -g1.angle if g2.reflect else g1.angle
    return GroupElement((g2.angle + a1) % 360.0, bool(g2.reflect) != bool(g1.reflect))


def inverse(g: GroupElement) -> GroupElement:
    """``g⁻¹``: for ``r_θ f`` it is itself (an involution); for ``r_θ`` it is ``r_{−θ}``."""
    if g.reflect:
        return GroupElement(g.angle % 360.0, True)
    return GroupElement((-g.angle) % 360.0, False)


def act_field(x, g: GroupElement, ftype: FieldType | None = None):
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


# --------------------------------------------------------------------------------------------------------
# Moment kernel basis
# --------------------------------------------------------------------------------------------------------
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
    if group == "D4":
        return _TERMS_D4
    if group == "C4":
        return {b: _TERMS_D4[b] + _TERMS_C4_EXTRA[b] for b in _TERMS_D4}
    raise ValueError(f"unknown group {group!r} for moment kernels; expected one of {MOMENT_GROUPS}")


# --------------------------------------------------------------------------------------------------------
# Convolution
# --------------------------------------------------------------------------------------------------------
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
        group = str(group).upper()
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
        x, wrapped = _unwrap(x, self.in_type, f"MomentConv2d({self.in_type.channels}->{self.out_type.channels})")
        use_cache = not self.training and not (torch.is_grad_enabled() and self.weight.requires_grad)
        w = self.cached_kernel() if use_cache else self._assemble(self.weight)
        b = self._full_bias()
        if use_cache and b is not None:
            b = b.detach()
        y = F.conv2d(x, w, b, padding=self.padding)
        return _wrap(y, self.out_type, wrapped)

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


# --------------------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------------------
class FieldBatchNorm(nn.Module):
    """BatchNorm on scalars; vectors divided by the root mean squared norm, times a learned factor.

    Scalars: ``(s − mean) / sqrt(var + eps) · γ + β`` (statistics over batch and pixels, running averages for
    eval, like ``nn.BatchNorm2d``). Vector field ``j``: ``v_j · γ_j / sqrt(E|v_j|² + eps)`` with ``E|v_j|²`` the
    mean squared norm over batch and pixels (running average in eval). No mean is subtracted from vectors
    (that would not be equivariant), and ``|v|²`` sums both components, so the statistic is invariant.
    Implemented as one ``var_mean`` over all channels and one fused multiply-add.
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
        x, wrapped = _unwrap(x, self.type, "FieldBatchNorm")
        S, V = self.type.n_scalar, self.type.n_vector
        if self.training:
            y, mean_s, var_s, sq_v = _FieldBatchNormFn.apply(x, self.weight, self.bias, S, V, self.eps)
            with torch.no_grad():
                n = x.numel() // x.shape[1]
                m = self.momentum
                self.running_mean.lerp_(mean_s, m)
                self.running_var.lerp_(var_s * (n / max(n - 1, 1)), m)
                self.running_sq.lerp_(sq_v, m)
                self.num_batches_tracked.add_(1)
            return _wrap(y, self.type, wrapped)
        scale, shift = self.eval_scale_shift()
        y = torch.addcmul(shift.view(1, -1, 1, 1), x, scale.view(1, -1, 1, 1))
        return _wrap(y, self.type, wrapped)

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


class _FieldBatchNormFn(torch.autograd.Function):
    """Training-mode :class:`FieldBatchNorm` with a hand-written backward (a few passes instead of autograd's
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


# --------------------------------------------------------------------------------------------------------
# Nonlinearities
# --------------------------------------------------------------------------------------------------------
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
        x, wrapped = _unwrap(x, self.type, "FieldNonlinearity")
        S, V = self.type.n_scalar, self.type.n_vector
        if V == 0:
            return _wrap(F.relu(x), self.type, wrapped)
        if self.vector == "norm_relu":
            return _wrap(_NormReLUFn.apply(x, self.threshold, S, V, self.eps), self.type, wrapped)
        xs, xv = x.split([S, 2 * V], dim=1)
        v = xv.unflatten(1, (V, 2))  # (B, V, 2, H, W)
        factor = torch.sigmoid(xs[:, :V])
        y_v = (v * factor.unsqueeze(2)).flatten(1, 2)
        y = torch.cat([F.relu(xs), y_v], dim=1)
        return _wrap(y, self.type, wrapped)

    def extra_repr(self) -> str:
        return f"{self.type.n_scalar}s+{self.type.n_vector}v, vector={self.vector}"


def fold_conv_norm(conv: MomentConv2d, norm: FieldBatchNorm) -> tuple[Tensor, Tensor]:
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


# --------------------------------------------------------------------------------------------------------
# Resampling and concatenation
# --------------------------------------------------------------------------------------------------------
class FieldAvgPool2d(nn.Module):
    """2×2 average pooling of every channel (linear and per-channel, so it commutes with the component
    rotation; commutes with D4 on even H, W)."""

    def __init__(self, ftype: FieldType):
        super().__init__()
        self.type = ftype

    def forward(self, x):
        x, wrapped = _unwrap(x, self.type, "FieldAvgPool2d")
        if x.shape[-1] % 2 or x.shape[-2] % 2:
            raise ValueError(f"FieldAvgPool2d needs even H and W for exact equivariance, got {tuple(x.shape[-2:])}")
        return _wrap(F.avg_pool2d(x, 2), self.type, wrapped)


class FieldUpsample(nn.Module):
    """2× up-sampling of every channel, ``nearest`` or ``bilinear`` (align_corners=False: symmetric, so it
    commutes with flips and 90° rotations)."""

    def __init__(self, ftype: FieldType, mode: str = "nearest"):
        super().__init__()
        if mode not in UPSAMPLE_MODES:
            raise ValueError(f"unknown upsample mode {mode!r}; expected one of {UPSAMPLE_MODES}")
        self.type, self.mode = ftype, mode

    def forward(self, x):
        x, wrapped = _unwrap(x, self.type, "FieldUpsample")
        kw = {"align_corners": False} if self.mode == "bilinear" else {}
        return _wrap(F.interpolate(x, scale_factor=2, mode=self.mode, **kw), self.type, wrapped)


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


__all__ = [
    "FieldType", "FieldTensor", "MomentConv2d", "FieldBatchNorm", "FieldNonlinearity", "FieldAvgPool2d",
    "FieldUpsample", "cat_fields", "act_field", "vector_matrix", "compose", "inverse", "moment_dictionary",
    "radial_grid", "MOMENT_GROUPS", "exact_arithmetic", "fold_conv_norm",
]
