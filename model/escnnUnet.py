"""Steerable U-Net on escnn (or its predecessor e2cnn, chosen by ``backend=``), exportable to plain PyTorch.

Diagram for ``depth=4``, ``width=32``, ``group="D4"`` (``|G| = 8``; ``f_i`` regular fields at level ``i``,
``f_i = round(width·2^i / |G|)``, i.e. ``4, 8, 16, 32, 64`` fields = ``32 … 512`` channels, as the plain U-Net)::

    x (3 trivial fields) ─ TwoConv(3·triv → 4·reg) ─────────────────────────── UpCat(4 ⊕ 4 → 4) ─ GroupPool ─ 1×1 → logits
                            └ Down(4 → 8) ─────────────────────────── UpCat(8 ⊕ 8 → 8) ┘                (num_classes
                                └ Down(8 → 16) ───────────── UpCat(16 ⊕ 16 → 16) ┘                       trivial fields)
                                    └ Down(16 → 32) ── UpCat(32 ⊕ 32 → 32) ┘
                                        └ Down(32 → 64) ┘

Every map between feature fields is equivariant: for an element ``g`` of the group ``G`` acting on the image
plane and on the fibres by ``ρ(g)``, each layer ``Φ`` satisfies ``Φ(g·x) = g·Φ(x)``, where
``(g·x)(p) = ρ_in(g) x(g⁻¹p)``. Convolutions are escnn's ``R2Conv`` with kernels ``K`` in the steerable basis
(``K(g p) = ρ_out(g) K(p) ρ_in(g)⁻¹``); normalisation is a per-field batch norm (:class:`RegularFieldBatchNorm2d`);
the non-linearity is a point-wise ReLU (it commutes with the permutation matrices of regular fields); down-
sampling is a point-wise 2×2 max pool (optionally anti-aliased), up-sampling a 1×1 ``R2Conv`` followed by a 2×
bilinear (or nearest) interpolation (both are linear and act on different axes, so they commute: the 1×1 runs at
the coarse level, a quarter of the cost, on the already halved channels); skips join with the direct sum ``skip ⊕ up`` of field types; the
head pools each regular field to an invariant (max over the group, ``GroupPooling``) and maps these trivial
fields to ``num_classes`` trivial fields: invariant per-pixel class scores form an equivariant segmentation map.

Exactness. On the pixel grid the equivariance to 90° rotations and flips (``C4``, ``D4`` and their subgroups)
is exact when ``H`` and ``W`` are divisible by ``2**depth`` (poolings tile the image the same way after the
transformation); for ``C8, C16, D8, …`` the other angles act on the grid only approximately (interpolation),
so their equivariance is approximate; it is still much better than a plain U-Net's (see the tests).

SO2 and O2 (escnn only) use band-limited Fourier fields instead of regular ones (``fields="fourier"``, see
:class:`EscnnUNet`): the same diagram with ``f_i = round(width·2^i / d)`` fields of ``d`` channels (7 for SO2, 14 for
O2 at frequency ≤ 3), a sampled ReLU (:class:`FourierReLU` with escnn's ``FourierPointwise`` sampling matrices),
:class:`IrrepBatchNorm2d`, anti-aliased average
pooling and field norms as invariants. Exact on the grid for 90° rotations and flips, and much closer to
equivariant at other angles than the finite groups.

Both backends build the same network; ``export()`` gives a :class:`ExportedEscnnUNet` (:mod:`model.escnn_export`),
plain ``torch.nn`` layers with the expanded filters, equal outputs, no escnn needed to run it or to load its
``state_dict``. What talks to the library (its namespace, gspaces, the wrapper of plain-torch field layers, the
He init) is in :mod:`model.escnn_backend`; group names are parsed by :mod:`model.groups`.

Build time: escnn computes kernel bases when a layer is built (cached in memory per process and partly on disk,
see :mod:`model.escnn_compat`). escnn's default weight initialisation (``generalized_he_init``) is slow for wide
layers; ``init="he"`` (default) draws the basis coefficients from a normal distribution and rescales each layer
once so that the *expanded* filter has He's variance ``2 / fan_in`` (``fan_in = C_in·k²``): the same
variance-preserving intent at the cost of one filter expansion. ``init="escnn"`` keeps escnn's own.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .contract import UNetBase, level_channels, same_padding
from .escnn_backend import backend as _backend, gspace as _gspace, he_init_, invariant_projector as _invariant_projector
from .escnn_export import ExportedEscnnUNet, ExportedUp, copy_into as _copy_into  # noqa: F401  (ExportedUp: old name)
from .field_layers import (  # noqa: F401  (old names re-exported)
    AntialiasedMaxPool2d, AntialiasedPool2d, FieldBatchNorm2d, FieldNormPool, FourierReLU, GroupMaxPool,
    IrrepBatchNorm2d, RegularFieldBatchNorm2d,
)
from .groups import CONTINUOUS_GROUPS, GROUPS, group_name, group_order, parse_group  # noqa: F401

BACKENDS = ("escnn", "e2cnn")
FIELDS = ("regular", "fourier")
POOLS = ("max", "antialiased")
UPSAMPLE_MODES = ("bilinear", "nearest")
#: The ``norm=`` choices: ``"field"`` (the batch norms of :mod:`model.field_layers`) or ``"inner"`` (the library's
#: ``InnerBatchNorm``, regular fields only; the same maths).
FIELD_NORMS = ("field", "inner")
#: Old name.
NORMS = FIELD_NORMS
INITS = ("he", "escnn")


def level_fields(width: float, depth: int, order: int) -> list[int]:
    """Fields per level, ``f_i = max(1, round(width·2^i / d))`` for ``i = 0 … depth``, with ``d`` channels per field
    (``|G|`` for regular fields; ``width`` may be fractional; see :func:`model.contract.level_channels`)."""
    return [c // order for c in level_channels(width, depth, order)]


class EscnnUNet(UNetBase):
    """Steerable U-Net with regular (finite groups) or band-limited Fourier (SO2/O2) feature fields, on escnn or e2cnn.

    Args:
        in_channels: image channels, each entering as a trivial (invariant) field (3 for RGB).
        num_classes: output classes (background included), returned as trivial fields (logits).
        width: channels at the top level, as the plain U-Net's ``width`` (may be fractional); level ``i`` has
            ``f_i = max(1, round(width·2^i / |G|))`` regular fields of ``|G|`` channels each.
        depth: number of 2× down-samplings; H, W must be divisible by ``2**depth`` (or set ``pad``).
        group: ``CN`` (rotations by multiples of 360°/N) or ``DN`` (and flips), see :data:`GROUPS`; or ``SO2``
            (every rotation) / ``O2`` (and flips), escnn only.
        backend: ``"escnn"`` or ``"e2cnn"`` (same network, same parameter count).
        fields: feature-field type. ``"regular"`` (finite groups; permutation fields: point-wise ReLU and max
            pooling). ``"fourier"`` (SO2/O2, the default there): each field holds the Fourier coefficients, up to
            frequency ``max_frequency``, of a function on the group (escnn's band-limited regular representation,
            irreps 0…L: 7 channels for SO2 and 14 for O2 at L = 3); the non-linearity is a ReLU of that function
            sampled on ``fourier_samples`` rotations (escnn's ``FourierPointwise``, :class:`FourierReLU`), batch
            norm is :class:`IrrepBatchNorm2d`, pooling anti-aliased averaging, and the head takes field norms.
        max_frequency: band limit ``L`` of Fourier fields (kernels use frequencies up to ``2L``).
        fourier_samples: rotations (a multiple of 4, ``>= 2L+2``; ×2 with the flips of O2) the Fourier ReLU samples:
            exact for those, approximate in between.
        kernel_size: odd size of the steerable kernels (3, as the plain U-Net).
        pool: ``"max"`` (2×2 point-wise max pool, as the plain U-Net) or ``"antialiased"`` (2×2 max at stride 1,
            Gaussian blur σ=0.6 at stride 2: better equivariance to non-grid angles, a little slower). Default
            (``None``): ``"max"`` for groups of 90° rotations (C1, C2, C4, D1, D2, D4: exact either way),
            ``"antialiased"`` for the others (C8's 45° error on smooth input drops from 0.47× to 0.36× the plain
            U-Net's, relative max; see ``tests/test_escnn_unet.py::test_non_grid_rotations_beat_the_plain_unet``).
            Fourier fields only allow ``"antialiased"`` (2×2 mean at stride 1, then the blur: linear, so
            equivariant for any field).
        upsample: ``"bilinear"`` (default) or ``"nearest"`` 2× interpolation after a 1×1 steerable conv.
        norm: ``"field"`` (:class:`RegularFieldBatchNorm2d` for regular fields, :class:`IrrepBatchNorm2d` for Fourier
            fields) or ``"inner"`` (regular fields: the library's ``InnerBatchNorm``, the same maths).
        init: ``"he"`` (fast He-style init, see :func:`he_init_`) or ``"escnn"`` (the library's
            ``generalized_he_init``; slow for wide nets).
        pad: pad symmetrically to a multiple of ``2**depth`` and crop the logits back.
        conv_kwargs: extra arguments of the library's ``R2Conv`` for the k×k convolutions (``frequencies_cutoff``,
            ``rings``, ``sigma``, ``maximum_offset``). For groups with rotations other than multiples of 90°
            (``N ∉ {1, 2, 4}``) the default is ``frequencies_cutoff=1.0`` (angular frequency ≤ radius in pixels): it
            removes kernel components a 3×3 grid cannot rotate by 45°, which lowers the 45° error of a C8 net on
            smooth input from ≈0.47 to ≈0.30 (relative L2; plain U-Net ≈0.82). C4/D4 nets are exact without it.

    Shapes: ``(B, in_channels, H, W) -> (B, num_classes, H, W)`` (plain tensors; GeometricTensors inside).
    Exact equivariance to the group's elements that are multiples of 90° (and the flip), where H and W are
    divisible by ``2**depth``; approximate for other angles (for SO2/O2: every other angle).
    """

    #: Width grid step for :func:`model.width_for_params`: the default group's order (D4: 8 channels per field).
    width_multiple = 8

    def __init__(self, in_channels: int = 3, num_classes: int = 3, width: float = 32, depth: int = 4,
                 group: str = "D4", backend: str = "escnn", fields: str | None = None, kernel_size: int = 3,
                 pool: str | None = None, upsample: str = "bilinear", norm: str = "field", init: str = "he",
                 pad: bool = False, conv_kwargs: dict | None = None, max_frequency: int = 3,
                 fourier_samples: int = 16):
        super().__init__()
        kind, n = parse_group(group)
        continuous = n == 0
        grid_exact = n in (1, 2, 4)  # every rotation of the group is a multiple of 90°
        if fields is None:
            fields = "fourier" if continuous else "regular"
        if pool is None:
            pool = "max" if grid_exact else "antialiased"
        for name, value, allowed in (("backend", backend, BACKENDS), ("fields", fields, FIELDS),
                                     ("pool", pool, POOLS), ("upsample", upsample, UPSAMPLE_MODES),
                                     ("norm", norm, FIELD_NORMS), ("init", init, INITS)):
            if value not in allowed:
                raise ValueError(f"EscnnUNet: unknown {name} {value!r}; supported: {', '.join(allowed)}")
        if continuous != (fields == "fourier"):
            raise ValueError(f"EscnnUNet: group {group} needs fields='{'fourier' if continuous else 'regular'}' "
                             f"(regular fields for finite groups CN/DN, fourier fields for SO2/O2), got {fields!r}")
        if fields == "fourier":
            if pool != "antialiased" or norm != "field":
                raise ValueError("EscnnUNet: fourier fields need pool='antialiased' and norm='field' (max pooling "
                                 f"and InnerBatchNorm need permutation fields), got pool={pool!r}, norm={norm!r}")
            if max_frequency < 1 or fourier_samples % 4 or fourier_samples < 2 * max_frequency + 2:
                raise ValueError(f"EscnnUNet: need max_frequency >= 1 and fourier_samples a multiple of 4 and >= "
                                 f"2·max_frequency + 2, got {max_frequency}, {fourier_samples}")
        if depth < 1:
            raise ValueError(f"EscnnUNet: depth must be >= 1, got {depth}")
        if not width > 0 or in_channels < 1 or num_classes < 1:
            raise ValueError(f"EscnnUNet: width must be > 0, in_channels and num_classes >= 1, got "
                             f"{width}, {in_channels}, {num_classes}")
        same_padding(kernel_size)
        self.group = group_name(kind, n)
        self.backend, self.fields_kind, self.kernel_size = backend, fields, kernel_size
        self.max_frequency, self.fourier_samples = max_frequency, fourier_samples
        self.in_channels, self.num_classes, self.width, self.depth, self.pad = in_channels, num_classes, width, depth, pad
        self.pool_kind, self.upsample_mode, self.norm_kind, self.init_kind = pool, upsample, norm, init
        self.conv_kwargs = dict(conv_kwargs or {})
        if not grid_exact:  # non-grid angles: band-limit the kernels (max angular frequency = radius in pixels)
            self.conv_kwargs.setdefault("frequencies_cutoff", 1.0)

        lib = _backend(backend)
        enn = lib["nn"]
        gspace = _gspace(backend, self.group, max_frequency)
        self.gspace = gspace
        if fields == "fourier":
            self._irreps = gspace.fibergroup.bl_irreps(max_frequency)
            field_repr = gspace.fibergroup.spectral_regular_representation(*self._irreps)
        else:
            field_repr = gspace.regular_repr
        self.field_size = field_repr.size
        self.level_fields = level_fields(width, depth, self.field_size)
        self._projector = _invariant_projector(field_repr) if fields == "fourier" else None
        triv = gspace.trivial_repr
        ftypes = [enn.FieldType(gspace, [field_repr] * f) for f in self.level_fields]
        self.in_type = enn.FieldType(gspace, [triv] * in_channels)
        self._convs: list[tuple[nn.Module, float]] = []  # (conv, He gain) for the fast init

        self.inc = self._two_conv(self.in_type, ftypes[0])
        self.downs = nn.ModuleList(
            enn.SequentialModule(self._pool(ftypes[i]), self._two_conv(ftypes[i], ftypes[i + 1]))
            for i in range(depth)
        )
        self.ups = nn.ModuleList(_EquivariantUp(self, ftypes[i + 1], ftypes[i]) for i in reversed(range(depth)))
        pooled = enn.FieldType(gspace, [triv] * self.level_fields[0])
        self.out_type = enn.FieldType(gspace, [triv] * num_classes)
        invariants = enn.GroupPooling(ftypes[0]) if fields == "regular" else enn.NormPool(ftypes[0])
        self.head = enn.SequentialModule(invariants, self._conv(pooled, self.out_type, 1, True, 1.0))
        if init == "he":
            for conv, gain in self._convs:
                he_init_(conv, gain)
        del self._convs
        self._mark_derived_buffers()
        self.register_load_state_dict_pre_hook(self._drop_derived_keys)
        self.register_load_state_dict_post_hook(self._refresh_after_load)

    # -- construction helpers ------------------------------------------------------------------------------------
    @property
    def _enn(self):
        return _backend(self.backend)["nn"]

    def _conv(self, in_type, out_type, k: int, bias: bool, gain: float) -> nn.Module:
        extra = self.conv_kwargs if k > 1 else {}
        conv = self._enn.R2Conv(in_type, out_type, k, padding=k // 2, bias=bias,
                                initialize=self.init_kind == "escnn", **extra)
        self._convs.append((conv, gain))
        return conv

    def _norm(self, ftype) -> nn.Module:
        on_fields = _backend(self.backend)["TorchOnFields"]
        if self.fields_kind == "fourier":
            return on_fields(ftype, IrrepBatchNorm2d(len(ftype), self.field_size, self._projector))
        if self.norm_kind == "field":
            return on_fields(ftype, RegularFieldBatchNorm2d(len(ftype), self.field_size))
        return self._enn.InnerBatchNorm(ftype)

    def _act(self, ftype) -> nn.Module:
        if self.fields_kind == "fourier":
            # escnn's FourierPointwise gives the sampling matrices A, A⁺; FourierReLU applies them as grouped 1×1
            # convolutions (the same maths as its einsum, faster on CPU)
            library = self._enn.FourierPointwise(self.gspace, len(ftype), self._irreps, function="p_relu",
                                                 type="regular", N=self.fourier_samples)
            if library.in_type != ftype:
                raise RuntimeError("EscnnUNet: FourierPointwise field type differs from the conv's output type")
            relu = FourierReLU(self.field_size, library.A.shape[0])
            relu.A.copy_(library.A)
            relu.Ainv.copy_(library.Ainv)
            return _backend(self.backend)["TorchOnFields"](ftype, relu)
        return self._enn.ReLU(ftype, inplace=True)

    def _two_conv(self, in_type, out_type) -> nn.Module:
        enn, k = self._enn, self.kernel_size
        return enn.SequentialModule(
            self._conv(in_type, out_type, k, False, 2.0), self._norm(out_type), self._act(out_type),
            self._conv(out_type, out_type, k, False, 2.0), self._norm(out_type), self._act(out_type),
        )

    def _pool(self, ftype) -> nn.Module:
        enn = self._enn
        if self.fields_kind == "fourier":
            return _backend(self.backend)["TorchOnFields"](ftype, AntialiasedPool2d(ftype.size, mode="avg"), stride=2)
        if self.backend == "escnn":
            cls = enn.PointwiseMaxPool2D if self.pool_kind == "max" else enn.PointwiseMaxPoolAntialiased2D
        else:
            cls = enn.PointwiseMaxPool if self.pool_kind == "max" else enn.PointwiseMaxPoolAntialiased
        return cls(ftype, kernel_size=2)

    # -- forward -------------------------------------------------------------------------------------------------
    def wrap_input(self, x: Tensor):
        return self._enn.GeometricTensor(x, self.in_type)

    def unwrap_output(self, y) -> Tensor:
        return y.tensor

    # -- export --------------------------------------------------------------------------------------------------
    def export_config(self) -> dict:
        """Constructor arguments of the :class:`ExportedEscnnUNet` equivalent to this model (plain values)."""
        return dict(in_channels=self.in_channels, num_classes=self.num_classes, depth=self.depth,
                    fields=list(self.level_fields), field_size=self.field_size, kernel_size=self.kernel_size,
                    pool=self.pool_kind, upsample=self.upsample_mode, pad=self.pad, group=self.group,
                    field_kind=self.fields_kind, fourier_points=self._fourier_points())

    def _fourier_points(self) -> int:
        """Rows of the Fourier ReLU's sampling matrix (group elements sampled), 0 for regular fields."""
        acts = [m for m in self.modules() if isinstance(m, FourierReLU)]
        return acts[0].samples if acts else 0

    @torch.no_grad()
    def export(self) -> ExportedEscnnUNet:
        """A plain-torch :class:`ExportedEscnnUNet` in eval mode with this model's expanded filters and statistics.

        Its outputs equal this model's in eval mode (float32: ≤ 1e-5 relative); it needs no escnn to run and its
        ``state_dict`` loads into ``ExportedEscnnUNet(**exported.config)``. This model's mode is left unchanged.
        """
        out = ExportedEscnnUNet(**self.export_config())
        p = next(self.parameters())
        out.to(device=p.device, dtype=p.dtype)
        _copy_into(self.inc, out.inc)
        for src, dst in zip(self.downs, out.downs):
            _copy_into(src, dst)
        for src, dst in zip(self.ups, out.ups):
            _copy_into(src.up, dst.up)
            _copy_into(src.convs, dst.convs)
        _copy_into(self.head, out.head)
        return out.eval()

    # -- state dict: only parameters and normalisation statistics ------------------------------------------------
    # escnn registers derived buffers (sampled kernel bases, and in eval mode only the expanded filter and bias).
    # They are rebuilt from the group and the weights, so they are kept out of the state_dict (non-persistent),
    # stale copies in an incoming state_dict are ignored, and the eval-mode filters are re-expanded after a load.
    # Done with buffer flags and hooks, so it also works when this model is a submodule (e.g. Lightning).
    _STAT_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")

    def _mark_derived_buffers(self) -> None:
        for module in self.modules():
            for name, buf in _own_buffers(module).items():
                if name not in self._STAT_BUFFERS:
                    module.register_buffer(name, buf, persistent=False)

    def train(self, mode: bool = True) -> "EscnnUNet":
        """Set train/eval mode; derived buffers stay non-persistent.

        On eval escnn expands each filter once and caches it; the cache is detached from the weights (escnn keeps
        the autograd graph, which makes the model impossible to ``deepcopy`` and gradients in eval mode usable
        only once), so train in train mode.
        """
        super().train(mode)
        if not mode:
            for m in self.modules():
                if type(m).__name__ == "R2Conv":
                    for name, buf in _own_buffers(m).items():
                        if name in ("filter", "expanded_bias"):
                            setattr(m, name, buf.detach())
        self._mark_derived_buffers()
        return self

    def _derived_keys(self) -> set[str]:
        keys = {f"{name}.{b}" if name else b for name, m in self.named_modules() for b in _own_buffers(m)
                if b not in self._STAT_BUFFERS}
        keys |= {f"{name}.{b}" for name, m in self.named_modules() if type(m).__name__ == "R2Conv"
                 for b in ("filter", "expanded_bias")}
        return keys

    def _drop_derived_keys(self, module, state_dict, prefix, *args) -> None:
        for key in self._derived_keys():
            state_dict.pop(prefix + key, None)

    def _refresh_after_load(self, module, incompatible_keys) -> None:
        if not self.training:  # escnn caches the expanded filter in eval mode: rebuild it from the loaded weights
            self.train(True)
            self.train(False)


def _own_buffers(module: nn.Module) -> dict[str, Tensor]:
    """``module``'s own buffers by name (not its children's; a tensor shared with another module included)."""
    return dict(module.named_buffers(recurse=False, remove_duplicate=False))


class _EquivariantUp(nn.Module):
    """A 1×1 steerable conv ``f_{i+1} -> f_i`` fields and 2× up-sampling, direct sum with the skip, TwoConv."""

    def __init__(self, net: EscnnUNet, in_type, skip_type):
        super().__init__()
        enn = net._enn
        self.up = enn.SequentialModule(
            net._conv(in_type, skip_type, 1, True, 1.0),
            enn.R2Upsampling(skip_type, scale_factor=2, mode=net.upsample_mode, align_corners=False),
        )
        self.convs = net._two_conv(skip_type + skip_type, skip_type)
        self._directsum = _backend(net.backend)["nn"].tensor_directsum

    def forward(self, x, skip):
        return self.convs(self._directsum([skip, self.up(x)]))


#: Seed name kept so old experiment code keeps working.
escnnUnetVariant = EscnnUNet

__all__ = ["EscnnUNet", "escnnUnetVariant", "ExportedEscnnUNet", "RegularFieldBatchNorm2d", "FieldBatchNorm2d",
           "AntialiasedMaxPool2d", "AntialiasedPool2d", "GroupMaxPool", "FieldNormPool", "IrrepBatchNorm2d",
           "FourierReLU", "he_init_", "parse_group", "group_name", "group_order", "level_fields", "BACKENDS", "GROUPS",
           "CONTINUOUS_GROUPS", "FIELD_NORMS"]
