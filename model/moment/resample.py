"""2× resampling of moment-kernel feature maps: average pooling and up-sampling, per channel.

Both are linear and act alike on every channel, so they commute with the rotation of vector components; with even
H, W (pooling) and symmetric interpolation (``align_corners=False``) they commute with D4 on the grid.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .fields import FieldType, unwrap, wrap

UPSAMPLE_MODES = ("nearest", "bilinear")


class FieldAvgPool2d(nn.Module):
    """2×2 average pooling of every channel (linear and per-channel, so it commutes with the component
    rotation; commutes with D4 on even H, W)."""

    def __init__(self, ftype: FieldType):
        super().__init__()
        self.type = ftype

    def forward(self, x):
        x, wrapped = unwrap(x, self.type, "FieldAvgPool2d")
        if x.shape[-1] % 2 or x.shape[-2] % 2:
            raise ValueError(f"FieldAvgPool2d needs even H and W for exact equivariance, got {tuple(x.shape[-2:])}")
        return wrap(F.avg_pool2d(x, 2), self.type, wrapped)


class FieldUpsample(nn.Module):
    """2× up-sampling of every channel, ``nearest`` or ``bilinear`` (align_corners=False: symmetric, so it
    commutes with flips and 90° rotations)."""

    def __init__(self, ftype: FieldType, mode: str = "nearest"):
        super().__init__()
        if mode not in UPSAMPLE_MODES:
            raise ValueError(f"unknown upsample mode {mode!r}; expected one of {UPSAMPLE_MODES}")
        self.type, self.mode = ftype, mode

    def forward(self, x):
        x, wrapped = unwrap(x, self.type, "FieldUpsample")
        kw = {"align_corners": False} if self.mode == "bilinear" else {}
        return wrap(F.interpolate(x, scale_factor=2, mode=self.mode, **kw), self.type, wrapped)


__all__ = ["FieldAvgPool2d", "FieldUpsample", "UPSAMPLE_MODES"]
