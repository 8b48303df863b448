"""Plain U-Net: the baseline every equivariant model is compared against.

Diagram for ``depth=4``, ``width=32`` (channels per level ``32, 64, 128, 256, 512``)::

    x ─ TwoConv(3→32) ─────────────────────────────────────────── UpCat(64+32→32) ─ 1×1 conv → logits
          └ Down(32→64) ───────────────────────────── UpCat(128+64→64) ┘
              └ Down(64→128) ──────────────── UpCat(256+128→128) ┘
                  └ Down(128→256) ── UpCat(512+256→256) ┘
                      └ Down(256→512) ┘

Blocks follow MONAI's ``BasicUNet``: ``TwoConv`` (two k×k conv + norm + ReLU), ``Down`` (2× pool then
``TwoConv``), ``UpCat`` (2× up-sample, concatenate the skip, ``TwoConv``).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .contract import UNetBase, level_channels, same_padding

UPSAMPLE_MODES = ("nearest", "bilinear", "deconv")
#: The normalisation layers :func:`make_norm` builds (``norm=`` of :class:`UNet`).
NORM_LAYERS = ("batch", "instance", "group", "none")
#: Old name.
NORMS = NORM_LAYERS
POOLS = ("max", "avg")


def make_norm(norm: str, channels: int) -> nn.Module:
    """A 2-D normalisation layer by name: ``batch``, ``instance`` (affine), ``group`` (8 groups) or ``none``."""
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if norm == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {norm!r}; expected one of {NORM_LAYERS}")


class TwoConv(nn.Sequential):
    """Two ``k×k`` convolutions, each followed by normalisation and ReLU.

    Args:
        in_channels: input channels.
        out_channels: output channels of both convolutions.
        kernel_size: odd kernel size (padding keeps H, W).
        norm: see :func:`make_norm`.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, norm: str = "batch"):
        p = same_padding(kernel_size)
        bias = norm == "none"
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=p, bias=bias),
            make_norm(norm, out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size, padding=p, bias=bias),
            make_norm(norm, out_channels),
            nn.ReLU(inplace=True),
        )


class Down(nn.Sequential):
    """2×2 pooling (``max`` or ``avg``), then :class:`TwoConv`. Halves H and W."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, norm: str = "batch",
                 pool: str = "max"):
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}; expected one of {POOLS}")
        pool_layer = nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2)
        super().__init__(pool_layer, TwoConv(in_channels, out_channels, kernel_size, norm))


class UpCat(nn.Module):
    """2× up-sampling of the deeper features, concatenation with the skip, then :class:`TwoConv`.

    Args:
        in_channels: channels of the deeper input.
        skip_channels: channels of the skip connection.
        out_channels: output channels.
        upsample: ``nearest`` / ``bilinear`` (parameter-free, then a 1×1 conv halving channels) or ``deconv``
            (2×2 transposed convolution).
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, kernel_size: int = 3,
                 norm: str = "batch", upsample: str = "nearest"):
        super().__init__()
        half = in_channels // 2
        if upsample == "deconv":
            self.up = nn.ConvTranspose2d(in_channels, half, kernel_size=2, stride=2)
        elif upsample in ("nearest", "bilinear"):
            interp = nn.Upsample(scale_factor=2, mode=upsample, align_corners=False if upsample == "bilinear" else None)
            self.up = nn.Sequential(interp, nn.Conv2d(in_channels, half, kernel_size=1))
        else:
            raise ValueError(f"unknown upsample {upsample!r}; expected one of {UPSAMPLE_MODES}")
        self.convs = TwoConv(half + skip_channels, out_channels, kernel_size, norm)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.convs(torch.cat([skip, self.up(x)], dim=1))


class UNet(UNetBase):
    """Plain U-Net for per-pixel classification.

    Args:
        in_channels: image channels (3 for RGB).
        num_classes: output classes, background included.
        width: channels at the top level; level ``i`` has ``round(width * 2**i)`` channels (``width`` may be
            fractional, see :func:`model.contract.level_channels`).
        depth: number of 2× down-samplings. H and W must be divisible by ``2**depth`` (or set ``pad``).
        kernel_size: odd convolution kernel size (3 by default; the same as a moment U-Net for fair
            comparisons at equal kernel size).
        norm: ``batch`` | ``instance`` | ``group`` | ``none``.
        upsample: ``deconv`` (2×2 transposed conv, the classic U-Net) | ``nearest`` | ``bilinear``.
        pool: ``max`` | ``avg``.
        pad: pad symmetrically to a multiple of ``2**depth`` and crop the logits back, so any size works.

    Shapes: ``(B, in_channels, H, W) -> (B, num_classes, H, W)`` logits.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 3, width: float = 32, depth: int = 4,
                 kernel_size: int = 3, norm: str = "batch", upsample: str = "deconv", pool: str = "max",
                 pad: bool = False):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if in_channels < 1 or num_classes < 1:
            raise ValueError(f"in_channels and num_classes must be >= 1, got {in_channels}, {num_classes}")
        self.in_channels, self.num_classes, self.width, self.depth, self.pad = in_channels, num_classes, width, depth, pad
        chans = level_channels(width, depth)
        self.inc = TwoConv(in_channels, chans[0], kernel_size, norm)
        self.downs = nn.ModuleList(Down(chans[i], chans[i + 1], kernel_size, norm, pool) for i in range(depth))
        self.ups = nn.ModuleList(
            UpCat(chans[i + 1], chans[i], chans[i], kernel_size, norm, upsample) for i in reversed(range(depth))
        )
        self.head = nn.Conv2d(chans[0], num_classes, kernel_size=1)


#: Seed name kept so old experiment code keeps working.
UnetVariant = UNet
