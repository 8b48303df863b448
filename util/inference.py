"""Full-patch prediction: sliding-window inference and D4 test-time augmentation.

``predict_logits(model, image, tile_size=512, blend="valid")`` returns logits for a whole patch of any size:

* ``tile_size=None`` or a patch no larger than one tile: one forward pass (after symmetric reflect padding up to a
  multiple of ``2**depth`` when needed, cropped back).
* ``blend="valid"`` (default): **exact** stitching. Tiles of ``tile_size`` start on the ``2**depth`` pixel grid
  and overlap by ``2·margin``; each output pixel is taken from the one tile in which it lies at least ``margin``
  pixels from every tile edge that is not an image edge. With ``margin`` ≥ the model's receptive-field radius
  (found numerically by :func:`receptive_radius` when not given) a tile sees exactly the input the whole-image
  pass sees for those pixels and the pooling grid is the same, so the result equals whole-image prediction up to
  floating-point summation order (≤ 1e-5 in tests, typically ~1e-6). Models that mix information globally
  (e.g. instance norm, attention) break this; eval-mode BatchNorm is pointwise and fine.
* ``blend="gaussian"`` / ``"constant"``: MONAI's ``sliding_window_inference`` with ``overlap``: cheaper, but
  pixels near tile borders differ from the whole-image pass (zero padding seen inside the receptive field).

``tta=True`` averages the logits of the 8 D4-transformed inputs, each mapped back exactly with
``model.equivariance.act_inverse``; for an exactly D4-equivariant model this changes nothing (≤ 1e-5).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn

from model.equivariance import GroupElement, act, act_inverse, group_elements
from model.contract import pad_to_multiple, padding_to_multiple

BLENDS = ("valid", "gaussian", "constant")
_RADIUS_CACHE: dict[int, int] = {}


def size_multiple(model: nn.Module) -> int:
    """``2**depth`` of a U-Net (1 when the model has no ``depth``)."""
    depth = getattr(model, "depth", None)
    return 2 ** int(depth) if depth is not None else 1


symmetric_padding = padding_to_multiple  #: the one padding rule, :mod:`model.contract`'s


def _pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int, int, int]]:
    """Reflect padding to a multiple where the image is large enough to mirror, else replicate."""
    h, w = x.shape[-2:]
    mode = "reflect" if min(h, w) > max(padding_to_multiple(h, w, multiple)) else "replicate"
    return pad_to_multiple(x, multiple, mode)


def forward_padded(model: nn.Module | Callable[[Tensor], Tensor], x: Tensor, multiple: int | None = None) -> Tensor:
    """``model(x)`` for any H, W: reflect-pads symmetrically to a multiple of ``2**depth`` and crops back."""
    multiple = multiple if multiple is not None else size_multiple(model)  # type: ignore[arg-type]
    xp, (l, r, t, b) = _pad_to_multiple(x, multiple)
    y = model(xp)
    if l or r or t or b:
        y = y[..., t: y.shape[-2] - b, l: y.shape[-1] - r]
    return y


@torch.no_grad()
def receptive_radius(model: nn.Module, size: int | None = None, cache: bool = True) -> int:
    """Receptive-field radius (pixels) of ``model``, measured by perturbation and rounded up to ``2**depth``.

    Outputs of a central ``2**depth`` block are compared between a random input and a copy whose pixels outside a
    box of half-width ``d`` around the block are redrawn; the smallest ``d`` that leaves them bit-identical is
    the radius (found by bisection; the probe grows when the field reaches its edge). Perturbation (not
    gradients) is used because max-pooling and ReLU hide influence from gradients.
    """
    key = id(model)
    if cache and key in _RADIUS_CACHE:
        return _RADIUS_CACHE[key]
    mult = size_multiple(model)
    size = size or max(128, 8 * mult)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(0)
    try:
        while True:
            c0 = (size // 2 // mult) * mult
            x = torch.rand(1, getattr(model, "in_channels", 3), size, size, generator=gen).to(device)
            other = torch.rand(x.shape, generator=gen).to(device)
            base = model(x)[..., c0: c0 + mult, c0: c0 + mult]

            def unaffected(d: int) -> bool:
                x2 = other.clone()
                lo, hi = max(c0 - d, 0), min(c0 + mult + d, size)
                x2[..., lo:hi, lo:hi] = x[..., lo:hi, lo:hi]
                return bool(torch.equal(model(x2)[..., c0: c0 + mult, c0: c0 + mult], base))

            max_d = c0 - 1
            if not unaffected(max_d) and size < 4096:
                size *= 2
                continue
            lo, hi = 0, max_d  # invariant: unaffected(hi) is True (or hi is the largest probe)
            while lo < hi:
                mid = (lo + hi) // 2
                if unaffected(mid):
                    hi = mid
                else:
                    lo = mid + 1
            radius = hi
            break
    finally:
        model.train(was_training)
    radius = int(math.ceil(radius / mult) * mult)
    if cache:
        _RADIUS_CACHE[key] = radius
    return radius


def _tile_starts(length: int, tile: int, step: int) -> list[int]:
    """Starts of tiles of ``tile`` px every ``step`` px, the last one ending at the edge (all multiples of the
    pooling grid when ``length``, ``tile`` and ``step`` are)."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, step))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def _valid_stitch(fn: Callable[[Tensor], Tensor], x: Tensor, tile: int, margin: int, multiple: int,
                  num_classes: int | None = None) -> Tensor:
    b, _, h, w = x.shape
    if h % multiple or w % multiple or tile % multiple:
        raise ValueError(f"_valid_stitch needs H, W and tile multiples of {multiple}, got {h}x{w}, tile {tile}")
    step = tile - 2 * margin
    if step < multiple or step % multiple:
        raise ValueError(f"sliding window: tile_size {tile} leaves no valid core with margin {margin} "
                         f"(need tile_size - 2·margin ≥ {multiple} and a multiple of {multiple}); "
                         f"use a larger tile_size or blend='gaussian'")
    ys, xs = _tile_starts(h, tile, step), _tile_starts(w, tile, step)
    out: Tensor | None = None
    for y0 in ys:
        for x0 in xs:
            patch = x[..., y0: y0 + tile, x0: x0 + tile]
            pred = fn(patch)
            if out is None:
                out = pred.new_zeros(b, pred.shape[1], h, w)
            th, tw = patch.shape[-2:]
            # core of this tile: [y0 + m, y0 + th - m), widened to the image edge where the tile touches it,
            # and cut where the next tile's core begins so that every pixel is written once
            cy0 = 0 if y0 == 0 else margin
            cx0 = 0 if x0 == 0 else margin
            cy1 = th if y0 + th >= h else th - margin
            cx1 = tw if x0 + tw >= w else tw - margin
            out[..., y0 + cy0: y0 + cy1, x0 + cx0: x0 + cx1] = pred[..., cy0:cy1, cx0:cx1]
    assert out is not None
    return out


@torch.no_grad()
def predict_logits(model: nn.Module, image: Tensor, tile_size: int | None = 512, overlap: float = 0.25,
                   blend: str = "valid", margin: int | None = None, sw_batch_size: int = 4,
                   tta: bool = False) -> Tensor:
    """Logits ``(B, K, H, W)`` for images ``(B, C, H, W)`` of any size (see the module docstring).

    Args:
        model: a model in eval mode (this function does not change its mode).
        image: input batch.
        tile_size: tile side (None: whole image at once).
        overlap: MONAI overlap fraction (``gaussian``/``constant`` blends).
        blend: ``valid`` (exact), ``gaussian`` or ``constant``.
        margin: for ``valid``: discarded border per tile; default: :func:`receptive_radius`.
        sw_batch_size: tiles per forward pass (MONAI blends).
        tta: average over the 8 elements of D4 (each prediction mapped back exactly).
    """
    if blend not in BLENDS:
        raise ValueError(f"blend={blend!r}: expected one of {BLENDS}")
    if image.dim() != 4:
        raise ValueError(f"predict_logits expects (B, C, H, W), got shape {tuple(image.shape)}")
    multiple = size_multiple(model)

    def single(x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        if tile_size is None or (h <= tile_size and w <= tile_size):
            return forward_padded(model, x, multiple)
        if blend == "valid":
            m = margin if margin is not None else receptive_radius(model)
            tile = max(multiple, (tile_size // multiple) * multiple)
            xp, (l, r, t, b) = _pad_to_multiple(x, multiple)  # the same padding as the whole-image pass
            y = _valid_stitch(model, xp, tile, m, multiple)
            return y[..., t: y.shape[-2] - b, l: y.shape[-1] - r]
        from monai.inferers import sliding_window_inference

        ts = (min(tile_size, h), min(tile_size, w))
        return sliding_window_inference(x, roi_size=ts, sw_batch_size=sw_batch_size,
                                        predictor=lambda t: forward_padded(model, t, multiple),
                                        overlap=overlap, mode=blend, padding_mode="reflect")

    if not tta:
        return single(image)
    return d4_tta(single, image)


def d4_tta(fn: Callable[[Tensor], Tensor], x: Tensor, elements: list[GroupElement] | None = None) -> Tensor:
    """Mean over ``g`` of ``g⁻¹·fn(g·x)`` for the D4 elements (or the given exact ``elements``)."""
    elements = elements if elements is not None else group_elements("D4")
    if not all(g.exact for g in elements):
        raise ValueError("d4_tta: only exact (multiple-of-90°) elements are allowed")
    total: Tensor | None = None
    for g in elements:
        y = act_inverse(fn(act(x, g)), g)
        total = y if total is None else total + y
    assert total is not None
    return total / len(elements)


__all__ = ["predict_logits", "d4_tta", "receptive_radius", "forward_padded", "size_multiple", "symmetric_padding",
           "pad_to_multiple", "BLENDS"]
