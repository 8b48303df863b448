"""The plain-torch copy of a steerable U-Net (:class:`ExportedEscnnUNet`) and the copy of a library module's
(expanded) weights into its plain-torch counterpart (:func:`copy_into`).

:meth:`model.escnnUnet.EscnnUNet.export` builds one; it needs no escnn or e2cnn to run or to load its ``state_dict``:
``R2Conv`` becomes ``nn.Conv2d`` with the expanded filter, the field layers of :mod:`model.field_layers` are
copied as they are, escnn's ``InnerBatchNorm`` becomes the same maths in :class:`RegularFieldBatchNorm2d`.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .contract import UNetBase, same_padding
from .field_layers import (
    AntialiasedPool2d, FieldNormPool, FourierReLU, GroupMaxPool, IrrepBatchNorm2d, RegularFieldBatchNorm2d,
)


class _PlainFields:
    """The plain-torch layers of one field kind (``regular`` or ``fourier``), for :class:`ExportedEscnnUNet`."""

    def __init__(self, kind: str, field_size: int, fourier_points: int = 0):
        self.kind, self.d, self.points = kind, field_size, fourier_points

    def norm(self, fields: int) -> nn.Module:
        return RegularFieldBatchNorm2d(fields, self.d) if self.kind == "regular" else IrrepBatchNorm2d(fields, self.d)

    def act(self) -> nn.Module:
        return nn.ReLU(inplace=True) if self.kind == "regular" else FourierReLU(self.d, self.points)

    def pool(self, kind: str, channels: int) -> nn.Module:
        if self.kind == "fourier":
            return AntialiasedPool2d(channels, mode="avg")
        return nn.MaxPool2d(2) if kind == "max" else AntialiasedPool2d(channels, mode="max")

    def invariants(self) -> nn.Module:
        return GroupMaxPool(self.d) if self.kind == "regular" else FieldNormPool(self.d)

    def two_conv(self, cin: int, cout: int, fields_out: int, k: int) -> nn.Sequential:
        p = same_padding(k)
        return nn.Sequential(
            nn.Conv2d(cin, cout, k, padding=p, bias=False), self.norm(fields_out), self.act(),
            nn.Conv2d(cout, cout, k, padding=p, bias=False), self.norm(fields_out), self.act(),
        )


class ExportedUp(nn.Module):
    """Plain-torch up block: ``convs(cat[skip, up(x)])`` with ``up`` = 1×1 conv, then 2× interpolation."""

    def __init__(self, up: nn.Module, convs: nn.Module):
        super().__init__()
        self.up, self.convs = up, convs

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.convs(torch.cat([skip, self.up(x)], dim=1))


class ExportedEscnnUNet(UNetBase):
    """Plain-torch copy of a :class:`model.escnnUnet.EscnnUNet` (from its ``export()``); needs no escnn.

    Build it from ``EscnnUNet.export().config`` (a dict of plain values) and load a saved ``state_dict``::

        net = ExportedEscnnUNet(**config); net.load_state_dict(torch.load(path))

    Shapes: ``(B, in_channels, H, W) -> (B, num_classes, H, W)``; same input checks as every model.
    """

    def __init__(self, in_channels: int, num_classes: int, depth: int, fields: list[int], field_size: int,
                 kernel_size: int = 3, pool: str = "max", upsample: str = "bilinear", pad: bool = False,
                 group: str = "", field_kind: str = "regular", fourier_points: int = 0):
        super().__init__()
        self.config = dict(in_channels=in_channels, num_classes=num_classes, depth=depth, fields=list(fields),
                           field_size=field_size, kernel_size=kernel_size, pool=pool, upsample=upsample, pad=pad,
                           group=group, field_kind=field_kind, fourier_points=fourier_points)
        self.in_channels, self.num_classes, self.depth, self.pad, self.group = in_channels, num_classes, depth, pad, group
        n, k = field_size, kernel_size
        layers = _PlainFields(field_kind, n, fourier_points)
        ch = [f * n for f in fields]
        self.inc = layers.two_conv(in_channels, ch[0], fields[0], k)
        self.downs = nn.ModuleList(
            nn.Sequential(layers.pool(pool, ch[i]), layers.two_conv(ch[i], ch[i + 1], fields[i + 1], k))
            for i in range(depth)
        )
        align = False if upsample == "bilinear" else None
        self.ups = nn.ModuleList(
            ExportedUp(
                nn.Sequential(nn.Conv2d(ch[i + 1], ch[i], 1, bias=True),
                              nn.Upsample(scale_factor=2, mode=upsample, align_corners=align)),
                layers.two_conv(2 * ch[i], ch[i], fields[i], k),
            )
            for i in reversed(range(depth))
        )
        self.head = nn.Sequential(layers.invariants(), nn.Conv2d(fields[0], num_classes, 1, bias=True))


def copy_into(src: nn.Module, dst: nn.Module) -> None:
    """Copy the (expanded) weights of the library module ``src`` into its plain-torch counterpart ``dst``."""
    name = type(src).__name__
    if name == "SequentialModule":
        src_children = list(src.children())
        dst_children = list(dst.children())
        if len(src_children) != len(dst_children):
            raise RuntimeError(f"export: {len(src_children)} library modules vs {len(dst_children)} torch modules")
        for s, d in zip(src_children, dst_children):
            copy_into(s, d)
    elif name == "R2Conv":
        kernel, bias = src.expand_parameters()
        dst.weight.copy_(kernel.reshape(dst.weight.shape))
        if dst.bias is not None:
            dst.bias.copy_(bias)
    elif name == "TorchOnFields":  # a model.field_layers module: copy every parameter and buffer
        dst.load_state_dict({**dict(src.module.named_buffers()), **dict(src.module.named_parameters())})
    elif name == "InnerBatchNorm":
        bns = [m for m in src.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if len(bns) != 1:
            raise RuntimeError(f"export: InnerBatchNorm over mixed fields is not supported ({len(bns)} norms)")
        bn = bns[0]
        dst.eps, dst.momentum = bn.eps, bn.momentum
        dst.load_state_dict({"weight": bn.weight, "bias": bn.bias, "running_mean": bn.running_mean,
                             "running_var": bn.running_var, "num_batches_tracked": bn.num_batches_tracked})
    elif name.startswith("PointwiseMaxPoolAntialiased"):
        dst.filter.copy_(src.filter)
    elif name in ("ReLU", "PointwiseMaxPool2D", "PointwiseMaxPool", "R2Upsampling", "GroupPooling", "NormPool"):
        pass  # no state
    else:
        raise RuntimeError(f"export: no plain-torch counterpart for {name}")


__all__ = ["ExportedEscnnUNet", "ExportedUp", "copy_into"]
