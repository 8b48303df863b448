"""Moment U-Net: the plain U-Net's layout built only from the moment-kernel layers of :mod:`model.moment`.

Diagram for ``depth=4``, ``width=32`` (channels per level ``32, 64, 128, 256, 512``, each split into scalar
channels and 2-channel vector fields by ``vector_fraction``)::

    RGB (3 scalars) ─ TwoConv ───────────────────────────────────────── UpCat ─ 1×1 → logits (scalars)
                        └ Down ─────────────────────────────── UpCat ┘
                            └ Down ───────────────── UpCat ┘
                                └ Down ──── UpCat ┘
                                    └ Down ┘

Blocks mirror :mod:`model.unet` one to one, so the two nets have **the same channels per level and the same
kernel size** (a vector field counts as 2 channels) and comparable cost:

* ``TwoConv``: two ``MomentConv2d`` (k×k), each followed by ``ScalarVectorBatchNorm`` and ``FieldNonlinearity``
  (ReLU on scalars, norm-ReLU or scalar-gated on vectors).
* ``Down``: 2×2 average pooling (max-pooling is not equivariant for vectors), then ``TwoConv``.
* ``UpCat``: a 1×1 moment conv halving the channels and 2× up-sampling (nearest or bilinear; the two commute,
  the conv runs at the low resolution), field-wise concatenation with the skip (scalars, then vectors),
  ``TwoConv``.
* The last block's second convolution outputs scalars only, and a 1×1 convolution maps them to logits.

Equivariance: for ``group="D4"`` the logits satisfy ``Φ(g·x) = g·Φ(x)`` for all 8 elements of D4 (90°
rotations and the left↔right flip) up to float rounding, in train mode (batch statistics are means over
batch and all pixels, hence invariant) and in eval mode, for any weights. This needs H and W divisible by
``2**depth`` (every pooling sees an even size); other sizes raise ``ValueError`` unless ``pad=True`` (symmetric
replicate padding, exact when the padding on each axis is even). ``group="C4"`` keeps the 4 rotations only.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..contract import UNetBase, level_channels
from ..groups import MOMENT_GROUPS, check_group
from .activations import FieldNonlinearity
from .conv import MomentConv2d
from .fields import FieldType, cat_fields
from .fold import fold_conv_norm
from .norm import ScalarVectorBatchNorm
from .resample import FieldAvgPool2d, FieldUpsample


class MomentTwoConv(nn.Sequential):
    """``[MomentConv2d → ScalarVectorBatchNorm → FieldNonlinearity] × 2``: ``in_type → mid_type → out_type``."""

    def __init__(self, in_type: FieldType, mid_type: FieldType, out_type: FieldType | None = None,
                 kernel_size: int = 5, group: str = "D4", vector_nonlinearity: str = "norm_relu"):
        out_type = out_type or mid_type
        super().__init__(
            MomentConv2d(in_type, mid_type, kernel_size, group),
            ScalarVectorBatchNorm(mid_type),
            FieldNonlinearity(mid_type, vector_nonlinearity),
            MomentConv2d(mid_type, out_type, kernel_size, group),
            ScalarVectorBatchNorm(out_type),
            FieldNonlinearity(out_type, vector_nonlinearity),
        )
        self.in_type, self.out_type = in_type, out_type
        self._folded: tuple | None = None

    @torch.no_grad()
    def export(self) -> nn.Sequential:
        """``[nn.Conv2d (conv and norm folded) → nonlinearity] × 2`` with this block's current weights and
        running statistics (the eval-mode maths, in plain torch)."""
        stages = []
        for conv, norm, act in ((self[0], self[1], self[2]), (self[3], self[4], self[5])):
            w, b = fold_conv_norm(conv, norm)
            plain = nn.Conv2d(w.shape[1], w.shape[0], w.shape[-1], padding=conv.padding, bias=True).to(w.device,
                                                                                                       w.dtype)
            plain.weight.copy_(w)
            plain.bias.copy_(b)
            stages += [plain, copy.deepcopy(act).eval()]
        return nn.Sequential(*stages)

    def forward(self, x: Tensor) -> Tensor:
        """Train mode (or when gradients are needed): the six layers in turn. Eval without gradients: each
        normalisation is folded into its convolution's cached kernel (one ``conv2d`` + nonlinearity per
        stage; the kernels are rebuilt when any weight or running statistic changes)."""
        if self.training or (torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())):
            return super().forward(x)
        self[0].in_type.check(x, "MomentTwoConv")
        key = (self[0]._cache_key(), self[1]._state_key(), self[3]._cache_key(), self[4]._state_key())
        if self._folded is None or self._folded[0] != key:
            with torch.no_grad():
                self._folded = (key, fold_conv_norm(self[0], self[1]), fold_conv_norm(self[3], self[4]))
        (w1, b1), (w2, b2) = self._folded[1], self._folded[2]
        x = self[2](F.conv2d(x, w1, b1, padding=self[0].padding))
        return self[5](F.conv2d(x, w2, b2, padding=self[3].padding))


class MomentDown(nn.Sequential):
    """2×2 average pooling, then :class:`MomentTwoConv`. Halves H and W."""

    def __init__(self, in_type: FieldType, out_type: FieldType, kernel_size: int = 5, group: str = "D4",
                 vector_nonlinearity: str = "norm_relu"):
        super().__init__(FieldAvgPool2d(in_type),
                         MomentTwoConv(in_type, out_type, None, kernel_size, group, vector_nonlinearity))
        self.in_type, self.out_type = in_type, out_type


class MomentUpCat(nn.Module):
    """1×1 moment conv to ``half_type``, 2× up-sampling, concatenation with the skip, :class:`MomentTwoConv`."""

    def __init__(self, in_type: FieldType, skip_type: FieldType, half_type: FieldType, out_type: FieldType,
                 final_type: FieldType | None = None, kernel_size: int = 5, group: str = "D4",
                 upsample: str = "nearest", vector_nonlinearity: str = "norm_relu"):
        super().__init__()
        # The 1×1 convolution commutes with nearest/bilinear up-sampling (both are linear and per channel, and
        # preserve constants), so it runs at the low resolution: same function, a quarter of the cost.
        self.up = nn.Sequential(MomentConv2d(in_type, half_type, 1, group, bias=True), FieldUpsample(half_type, upsample))
        self.skip_type, self.half_type = skip_type, half_type
        self.convs = MomentTwoConv(skip_type + half_type, out_type, final_type, kernel_size, group,
                                   vector_nonlinearity)
        self.out_type = self.convs.out_type

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        y, _ = cat_fields([skip, self.up(x)], [self.skip_type, self.half_type])
        return self.convs(y)


class MomentUNet(UNetBase):
    """U-Net of moment-kernel layers, exactly equivariant to D4 (or C4).

    Args:
        in_channels: image channels (enter as scalar fields).
        num_classes: output classes, background included (leave as scalar fields: logits).
        width: channels at the top level; level ``i`` has ``round(width * 2**i)`` channels, exactly like
            :class:`model.unet.UNet` (``width`` may be fractional, see :func:`model.contract.level_channels`).
        depth: number of 2× down-samplings; H and W must be divisible by ``2**depth`` (or set ``pad``).
        group: ``"D4"`` (rotations by 90° and flips) or ``"C4"`` (rotations only, more kernel terms).
        vector_fraction: fraction of each level's channels carried by vector fields (2 channels per field).
        kernel_size: odd kernel size of the k×k moment convolutions (5 by default: a 3×3 kernel has only
            3 radii, and vector terms live on 2 of them).
        upsample: ``"nearest"`` or ``"bilinear"``.
        vector_nonlinearity: ``"norm_relu"`` or ``"gated"`` (see :class:`model.moment.activations.FieldNonlinearity`).
        pad: pad symmetrically to a multiple of ``2**depth`` and crop the logits back (see
            :mod:`model.contract`).

    Shapes: ``(B, in_channels, H, W) -> (B, num_classes, H, W)`` logits.
    """

    width_multiple = 1

    def __init__(self, in_channels: int = 3, num_classes: int = 3, width: float = 32, depth: int = 4,
                 group: str = "D4", vector_fraction: float = 0.5, kernel_size: int = 5,
                 upsample: str = "nearest", vector_nonlinearity: str = "norm_relu", pad: bool = False):
        super().__init__()
        group = check_group(group, MOMENT_GROUPS, "MomentUNet")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if in_channels < 1 or num_classes < 1:
            raise ValueError(f"in_channels and num_classes must be >= 1, got {in_channels}, {num_classes}")
        self.in_channels, self.num_classes, self.width, self.depth, self.pad = in_channels, num_classes, width, depth, pad
        self.group, self.kernel_size, self.vector_fraction = group, kernel_size, vector_fraction
        chans = level_channels(width, depth)
        types = [FieldType.from_channels(c, vector_fraction) for c in chans]
        self.types = types
        kw = dict(kernel_size=kernel_size, group=group, vector_nonlinearity=vector_nonlinearity)
        self.inc = MomentTwoConv(FieldType(in_channels, 0), types[0], None, **kw)
        self.downs = nn.ModuleList(MomentDown(types[i], types[i + 1], **kw) for i in range(depth))
        ups = []
        for i in reversed(range(depth)):
            half = FieldType.from_channels(chans[i + 1] // 2, vector_fraction)
            final = FieldType(chans[0], 0) if i == 0 else None
            ups.append(MomentUpCat(types[i + 1], types[i], half, types[i], final, upsample=upsample, **kw))
        self.ups = nn.ModuleList(ups)
        self.head = MomentConv2d(FieldType(chans[0], 0), FieldType(num_classes, 0), 1, group, bias=True)

    @torch.no_grad()
    def export(self) -> nn.Module:
        """A plain-torch copy for inference: each ``conv → norm`` pair becomes one ``nn.Conv2d`` with the folded
        kernel and bias (:func:`~model.moment.fold.fold_conv_norm`), the head its assembled ``nn.Conv2d``; the
        nonlinearities, pools and up-sampling are plain torch already. In eval mode.

        Same outputs as ``self.eval()`` (≤ 1e-5 relative: float rounding) and still exactly equivariant (the
        kernels are the same numbers); ``forward``, ``pad`` and the size checks are kept.
        """
        net = copy.deepcopy(self).eval()
        for module in list(net.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, MomentTwoConv):
                    setattr(module, name, child.export())
                elif isinstance(child, MomentConv2d):
                    setattr(module, name, child.export())
        return net


#: Seed name kept so old experiment code keeps working.
EqUnetVariant = MomentUNet

__all__ = ["MomentUNet", "EqUnetVariant", "MomentTwoConv", "MomentDown", "MomentUpCat"]
