"""The input contract every model's ``forward`` shares: checks and optional symmetric padding.

Every model takes ``x: Tensor[B, C, H, W]`` and returns logits ``Tensor[B, num_classes, H, W]``. The input must be

* a ``torch.Tensor`` of rank 4 (``B, C, H, W``) with ``C == in_channels``;
* floating point (``float16/bfloat16/float32/float64``; integer images must be converted, e.g. ``x / 255``);
* finite: NaN or ±inf anywhere raises ``ValueError`` (one ``torch.isfinite(x).all()`` per forward; set the
  model's ``check_finite = False`` to skip it, e.g. where the host-device sync it needs on a GPU matters).

``depth`` poolings by 2 need ``H`` and ``W`` divisible by ``2**depth``; exact equivariance to the pixel-grid
group (90° rotations, flips) also needs it, because a pooling window that straddles the image centre
differently after a rotation breaks the symmetry. Models therefore refuse other sizes with a clear
``ValueError``, unless built with ``pad=True``: the input is then padded symmetrically (replicate) up to the
next multiple and the logits are cropped back. The padded path is exactly equivariant only when the total
padding on each axis is even (the same amount on both sides).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def check_input(x: object, in_channels: int, multiple: int, pad: bool, model_name: str,
                check_finite: bool = True) -> None:
    """Raise ``ValueError`` (``TypeError`` for a wrong type or dtype) naming the received and expected value when
    ``x`` breaks the contract (see the module docstring).

    Args:
        x: the model input, expected ``Tensor[B, in_channels, H, W]``, floating point, finite.
        in_channels: channels the model was built for.
        multiple: ``2**depth``; H and W must be divisible by it unless ``pad`` is set.
        pad: the model pads to a multiple itself, so any H, W >= 1 is fine.
        model_name: used in messages.
        check_finite: also refuse NaN/inf values (one reduction over ``x``).
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{model_name}: expected a torch.Tensor of shape (B, C, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(
            f"{model_name}: expected a 4-D input (B, C, H, W), got {x.dim()}-D input of shape {tuple(x.shape)}"
        )
    if x.shape[1] != in_channels:
        raise ValueError(
            f"{model_name}: expected {in_channels} input channels, got {x.shape[1]} "
            f"(input shape {tuple(x.shape)}); build the model with in_channels={x.shape[1]} or fix the data"
        )
    if not x.is_floating_point():
        raise TypeError(f"{model_name}: expected a floating-point input, got dtype {x.dtype} "
                        f"(convert images first, e.g. x.float() / 255)")
    if check_finite and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{model_name}: input holds non-finite values ({_non_finite(x)}); expected finite "
                         f"numbers (check the data and its normalisation)")
    if pad:
        return
    h, w = x.shape[-2:]
    if h % multiple or w % multiple:
        raise ValueError(
            f"{model_name}: spatial size {h}x{w} is not a multiple of {multiple} (= 2**depth); "
            f"expected H and W divisible by {multiple}, e.g. {_round_up(h, multiple)}x{_round_up(w, multiple)}. "
            "Crop/resize the input, or build the model with pad=True (symmetric pad, cropped back)."
        )


def _non_finite(x: Tensor) -> str:
    """``"3 NaN, 1 inf of 48 values; first at index (0, 1, 2, 3)"`` (only computed on the error path)."""
    nan, inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
    first = tuple(int(i) for i in (~torch.isfinite(x)).nonzero()[0])
    return f"{nan} NaN, {inf} inf of {x.numel()} values; first at index {first}"


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def padding_to_multiple(h: int, w: int, multiple: int) -> tuple[int, int, int, int]:
    """``(left, right, top, bottom)`` that bring ``h × w`` to multiples of ``multiple``, split symmetrically
    (an odd extra pixel goes right/bottom)."""
    ph, pw = _round_up(h, multiple) - h, _round_up(w, multiple) - w
    return pw // 2, pw - pw // 2, ph // 2, ph - ph // 2


def pad_to_multiple(x: Tensor, multiple: int, mode: str = "replicate") -> tuple[Tensor, tuple[int, int, int, int]]:
    """Pad ``x`` (B, C, H, W) symmetrically so H and W are multiples of ``multiple``.

    ``mode``: ``F.pad``'s mode (``"replicate"``, ``"reflect"``, ...). Returns the padded tensor (``x`` itself
    when no padding is needed) and the padding ``(left, right, top, bottom)`` for :func:`crop_padding`.
    """
    padding = padding_to_multiple(x.shape[-2], x.shape[-1], multiple)
    if not any(padding):
        return x, padding
    return F.pad(x, padding, mode=mode), padding


def crop_padding(y: Tensor, padding: tuple[int, int, int, int]) -> Tensor:
    """Undo :func:`pad_to_multiple` on a (B, C, H, W) output."""
    left, right, top, bottom = padding
    h, w = y.shape[-2:]
    return y[..., top : h - bottom, left : w - right]


class ContractMixin:
    """Mixin for ``nn.Module`` models: ``self._run(x, fn)`` checks ``x``, pads if asked, calls ``fn``, crops.

    The model must set ``in_channels``, ``depth`` and ``pad`` attributes; ``check_finite`` (default True) may be
    set to False on an instance to skip the NaN/inf check.
    """

    in_channels: int
    depth: int
    pad: bool
    check_finite: bool = True

    def _run(self, x: Tensor, fn) -> Tensor:
        multiple = 2**self.depth
        check_input(x, self.in_channels, multiple, self.pad, type(self).__name__, self.check_finite)
        if not self.pad:
            return fn(x)
        xp, padding = pad_to_multiple(x, multiple)
        return crop_padding(fn(xp), padding)


def same_padding(kernel_size: int) -> int:
    """Padding that keeps H, W for an odd ``kernel_size`` (raises for even sizes)."""
    if kernel_size % 2 != 1:
        raise ValueError(f"kernel_size must be odd so the kernel has a centre pixel, got {kernel_size}")
    return kernel_size // 2




def level_channels(width: float, depth: int, multiple: int = 1) -> list[int]:
    """Channels at each of the ``depth + 1`` levels of a U-Net: ``width · 2**i``, rounded to ``multiple``.

    ``width`` may be fractional: the deep levels, which hold most parameters, then resolve it finely, which is
    how :func:`model.width_for_params` reaches a parameter target within a few percent even for small nets.
    ``multiple`` is e.g. the group order for regular-field equivariant models (each level is at least one
    multiple).
    """
    if not (width > 0 and math.isfinite(width)):
        raise ValueError(f"width must be a finite number > 0, got {width}")
    return [max(multiple, multiple * round(width * 2**i / multiple)) for i in range(depth + 1)]


class UNetBase(ContractMixin, nn.Module):
    """The U-Net diagram every model here shares; subclasses build ``inc``, ``downs``, ``ups`` and ``head``.

    ``forward`` checks the input (see :class:`ContractMixin`), then::

        skips = [inc(x)], downs[i](skips[-1]) appended per level; y = deepest;
        y = ups[j](y, skip) from deep to shallow; logits = head(y)

    Models on other tensor types (escnn's ``GeometricTensor``) override :meth:`wrap_input` and
    :meth:`unwrap_output`.
    """

    inc: nn.Module
    downs: nn.ModuleList
    ups: nn.ModuleList
    head: nn.Module

    def forward(self, x: Tensor) -> Tensor:
        return self._run(x, self._forward)

    def wrap_input(self, x: Tensor):
        return x

    def unwrap_output(self, y) -> Tensor:
        return y

    def _forward(self, x: Tensor) -> Tensor:
        skips = [self.inc(self.wrap_input(x))]
        for down in self.downs:
            skips.append(down(skips[-1]))
        y = skips.pop()
        for up in self.ups:
            y = up(y, skips.pop())
        return self.unwrap_output(self.head(y))


__all__ = ["check_input", "padding_to_multiple", "pad_to_multiple", "crop_padding", "ContractMixin", "same_padding", "level_channels", "UNetBase"]
