"""Group actions on image tensors and the equivariance error of a model.

Images are ``Tensor[..., H, W]`` with row index ``y`` growing downwards and column index ``x`` to the right.
A rotation by ``θ`` turns the picture **counter-clockwise as displayed** about the image centre
``((W-1)/2, (H-1)/2)``; ``θ = 90°`` is ``torch.rot90(x, 1, dims=(-2, -1))``. The flip ``f`` mirrors
left↔right (``torch.flip(x, dims=(-1,))``). A group element is ``g = r_θ ∘ f^m``: flip first (when ``m=1``),
then rotate. The pixel-grid group D4 = {r_{90k} f^m} acts exactly (a permutation of pixels); other angles
act by bilinear interpolation and are only compared inside a central disk, where no pixel leaves the image.

For a model ``Φ`` with scalar-field output (per-pixel logits) the equivariance error under ``g`` is

    err(g) = max |Φ(g·x) − g·Φ(x)| / max |Φ(x)|                    (norm="max", the default)
    err(g) = ‖Φ(g·x) − g·Φ(x)‖₂ / ‖Φ(x)‖₂                          (norm="l2")

(over the central disk for interpolated angles, over the whole image for exact elements).

Non-grid angles (45°, 22.5°) on a square image change more than the model: the image corners leave the frame,
zeros enter, and the frame itself (where every convolution zero-pads) does not turn with the content. The
protocol used for them (:func:`smooth_noise` → :func:`disk_on_canvas` → :func:`mean_rotation_errors`, with
``disk_margin`` = the canvas border) takes a smooth input whose content is a
disk, on a canvas with room around it, so that only the model's own error is measured.

Measured errors include float rounding; :func:`exact_arithmetic` switches off the reduced-precision convolution
paths (TF32, oneDNN) that make it several times larger.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .groups import GROUPS, parse_group  # noqa: F401  (GROUPS: re-exported, the names group_elements knows)

#: Rotations :func:`group_elements` samples for ``SO2``/``O2`` (every 22.5°).
CONTINUOUS_SAMPLES = 16


@dataclass(frozen=True)
class GroupElement:
    """``r_θ ∘ f^reflect``: optional left↔right flip, then a counter-clockwise rotation by ``angle`` degrees."""

    angle: float = 0.0
    reflect: bool = False

    @property
    def exact(self) -> bool:
        """True when the element permutes pixels exactly (a multiple of 90°)."""
        return float(self.angle) % 90.0 == 0.0

    @property
    def name(self) -> str:
        a = float(self.angle) % 360.0
        rot = "e" if a == 0 else f"rot{a:g}"
        if not self.reflect:
            return rot
        return "flip" if a == 0 else f"{rot}*flip"

    def __str__(self) -> str:  # pragma: no cover - cosmetic
        return self.name


def rot90(x: Tensor, k: int = 1) -> Tensor:
    """Rotate ``x[..., H, W]`` by ``k``·90° counter-clockwise (as displayed), exactly."""
    return torch.rot90(x, k % 4, dims=(-2, -1))


def flip(x: Tensor) -> Tensor:
    """Mirror ``x[..., H, W]`` left↔right."""
    return torch.flip(x, dims=(-1,))


def rotate(x: Tensor, angle: float) -> Tensor:
    """Rotate ``x[B, C, H, W]`` by ``angle`` degrees counter-clockwise about the centre (bilinear).

    Multiples of 90° are dispatched to the exact :func:`rot90` only by :func:`act`; this function always
    interpolates, so it can be compared against :func:`rot90` (they agree inside the central disk).
    Sample positions and weights are computed in float64, so grid-aligned angles reproduce pixels to
    rounding; pixels sampled from outside the image are zero.
    """
    if x.dim() != 4:
        raise ValueError(f"rotate expects (B, C, H, W), got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    t = math.radians(angle)
    cos, sin = math.cos(t), math.sin(t)
    ys = torch.arange(h, dtype=torch.float64, device=x.device) - (h - 1) / 2
    xs = torch.arange(w, dtype=torch.float64, device=x.device) - (w - 1) / 2
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    # Output pixel p samples the input at R(θ)^{-1} p. In display coordinates (y down) a counter-clockwise
    # rotation by θ maps (x, y) -> (x cosθ + y sinθ, -x sinθ + y cosθ); its inverse is the transpose.
    src_x = xx * cos - yy * sin + (w - 1) / 2
    src_y = xx * sin + yy * cos + (h - 1) / 2
    x0, y0 = src_x.floor(), src_y.floor()
    flat = x.reshape(b, c, h * w)
    out = torch.zeros(b, c, h * w, dtype=x.dtype, device=x.device)
    for dx in (0, 1):
        for dy in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            weight = (1 - (src_x - xi).abs()) * (1 - (src_y - yi).abs())
            inside = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1) & (weight > 0)
            index = (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).long().flatten()
            weight = torch.where(inside, weight, torch.zeros_like(weight)).to(x.dtype).flatten()
            out += flat[:, :, index] * weight
    return out.reshape(b, c, h, w)


def act(x: Tensor, g: GroupElement) -> Tensor:
    """Apply ``g`` to a scalar field ``x[B, C, H, W]``: flip first (if any), then rotate."""
    if g.reflect:
        x = flip(x)
    if g.exact:
        return rot90(x, int(round(g.angle / 90.0)))
    return rotate(x, g.angle)


def act_inverse(x: Tensor, g: GroupElement) -> Tensor:
    """Apply ``g⁻¹ = f^m ∘ r_{-θ}`` to a scalar field."""
    x = rot90(x, -int(round(g.angle / 90.0))) if g.exact else rotate(x, -g.angle)
    return flip(x) if g.reflect else x


def group_elements(group: str) -> list[GroupElement]:
    """All elements of a finite group (for ``SO2``/``O2``: rotations every 22.5°, with flips for ``O2``).

    ``CN``: rotations by multiples of 360/N. ``DN``: those, each also composed with the flip. Names as
    :func:`model.groups.parse_group` reads them (a ``ValueError`` naming the supported groups otherwise).
    """
    kind, n = parse_group(group)
    n, reflect = n or CONTINUOUS_SAMPLES, kind == "D"
    rots = [GroupElement(360.0 * k / n, False) for k in range(n)]
    return rots + ([GroupElement(e.angle, True) for e in rots] if reflect else [])


def central_disk(h: int, w: int, margin: float = 2.0, device=None) -> Tensor:
    """Boolean mask ``[H, W]`` of pixels within ``min(H, W)/2 - margin`` of the image centre."""
    ys = torch.arange(h, device=device) - (h - 1) / 2
    xs = torch.arange(w, device=device) - (w - 1) / 2
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return (xx**2 + yy**2).sqrt() <= min(h, w) / 2 - margin


def smooth_noise(size: int = 128, sigma: float = 3.0, channels: int = 3, seed: int = 0) -> Tensor:
    """Gaussian-blurred white noise ``(1, channels, size, size)`` with unit standard deviation.

    The blur (σ pixels, reflect padding) keeps the input band-limited, so that its bilinear rotation is accurate.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, channels, size, size, generator=g)
    k = 2 * int(4 * sigma) + 1
    r = torch.arange(k, dtype=torch.float32) - k // 2
    w = torch.exp(-(r**2) / (2 * sigma**2))
    w = w / w.sum()
    x = nn.functional.pad(x, (k // 2,) * 4, mode="reflect")
    x = nn.functional.conv2d(x, w.view(1, 1, 1, k).repeat(channels, 1, 1, 1), groups=channels)
    x = nn.functional.conv2d(x, w.view(1, 1, k, 1).repeat(channels, 1, 1, 1), groups=channels)
    return x / x.std()


def disk_on_canvas(x: Tensor, canvas: int, taper: float = 8.0) -> Tensor:
    """Cut the inscribed disk out of ``x[B, C, S, S]`` and centre it on a zero canvas ``[B, C, canvas, canvas]``.

    The disk's edge is a raised-cosine taper ``taper`` pixels wide (from 1 at radius ``S/2 − taper`` to 0 at
    ``S/2``), so the input stays smooth. Rotating the result by any angle keeps all its content in the frame and
    brings no new content in, and the frame is ``(canvas − S)/2`` pixels away from it. Measure inside the disk
    with ``equivariance_error(..., disk_margin=(canvas − S)/2 + 2)``.
    """
    s = x.shape[-1]
    if x.dim() != 4 or x.shape[-2] != s:
        raise ValueError(f"disk_on_canvas expects a square (B, C, S, S) input, got {tuple(x.shape)}")
    if canvas < s or (canvas - s) % 2:
        raise ValueError(f"canvas must be >= the input size {s} and differ from it by an even number, got {canvas}")
    c = torch.arange(s, dtype=torch.float32, device=x.device) - (s - 1) / 2
    r = (c[:, None] ** 2 + c[None, :] ** 2).sqrt()
    ramp = ((s / 2 - r) / taper).clamp(0, 1)
    window = (0.5 - 0.5 * torch.cos(math.pi * ramp)).to(x.dtype)
    pad = (canvas - s) // 2
    return nn.functional.pad(x * window, (pad, pad, pad, pad))


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, x: Tensor) -> nn.Module:
    """Set every batch norm's running statistics to those of ``x`` (one train-mode pass, momentum 1), then eval.

    For comparing untrained nets in eval mode: with default running statistics their activations are not
    normalised (a plain U-Net's shrink to its head bias, a constant that is trivially invariant), which makes
    their errors incomparable. Norms are found by their ``running_mean`` buffer and ``momentum`` attribute.
    """
    norms = [m for m in model.modules() if hasattr(m, "momentum") and isinstance(getattr(m, "running_mean", None), Tensor)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 1.0
    model.train()
    model(x)
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    return model.eval()


#: The two measures of :func:`equivariance_error` (``norm=``): relative max error and ratio of L2 norms.
ERROR_NORMS = ("max", "l2")
#: Old name.
NORMS = ERROR_NORMS


def mean_rotation_errors(make_model, x: Tensor, angles, disk_margin: float = 2.0,
                         seeds=range(3)) -> dict[float, dict[str, float]]:
    """Mean error of freshly built models under single rotations: ``{angle: {"max": …, "l2": …}}``.

    For each seed: ``torch.manual_seed(seed)``, ``model = make_model()``, batch norm calibrated on ``x``
    (:func:`calibrate_batchnorm`, eval mode), then :func:`equivariance_error` under each rotation by ``angle``
    degrees with both norms; the errors are averaged over the seeds (random nets vary a lot one by one).
    """
    seeds = list(seeds)
    out = {a: {norm: 0.0 for norm in ERROR_NORMS} for a in angles}
    for seed in seeds:
        torch.manual_seed(seed)
        model = calibrate_batchnorm(make_model(), x)
        for a in angles:
            for norm in ERROR_NORMS:
                err = equivariance_error(model, x, [GroupElement(a)], disk_margin=disk_margin, norm=norm)
                out[a][norm] += next(iter(err.values())) / len(seeds)
    return out


@torch.no_grad()
def equivariance_error(model: nn.Module | callable, x: Tensor, group: str | list[GroupElement],
                       disk_margin: float = 2.0, exact_only: bool = False, norm: str = "max") -> dict[str, float]:
    """Relative equivariance error of ``model`` on ``x[B, C, H, W]`` for every element of ``group``.

    Args:
        model: maps ``(B, C, H, W)`` to scalar fields ``(B, K, H, W)`` (e.g. logits). Its train/eval mode is
            left as it is (in train mode BatchNorm uses the statistics of each batch).
        x: the input.
        group: a group name (see :mod:`model.groups`) or a list of :class:`GroupElement`.
        disk_margin: for interpolated rotations, pixels farther than ``min(H,W)/2 - margin`` from the centre
            are ignored (they see the image corners, which leave the frame under rotation).
        exact_only: keep only the elements that act exactly on the pixel grid.
        norm: ``"max"`` (relative max error, the default) or ``"l2"`` (relative L2 error over the same pixels,
            less dominated by a few pixels).

    Returns:
        ``{element name: max |Φ(g·x) − g·Φ(x)| / max |Φ(x)|}`` (or the L2 ratio); the identity is included (≈ 0
        unless the model is nondeterministic).
    """
    if norm not in ERROR_NORMS:
        raise ValueError(f"equivariance_error: unknown norm {norm!r}; expected one of {ERROR_NORMS}")
    elements = group_elements(group) if isinstance(group, str) else list(group)
    if exact_only:
        elements = [g for g in elements if g.exact]
    y = model(x)
    if y.shape[-2:] != x.shape[-2:]:
        raise ValueError(f"equivariance_error needs a dense output of the input's size {tuple(x.shape[-2:])}, "
                         f"got {tuple(y.shape)}")
    disk = central_disk(*y.shape[-2:], margin=disk_margin, device=y.device)
    out: dict[str, float] = {}
    for g in elements:
        y_g = model(act(x, g))
        g_y = act(y, g)
        diff, ref = (y_g - g_y), y
        if not g.exact:
            diff, ref = diff[..., disk], ref[..., disk]
        if norm == "max":
            num, den = diff.abs().max(), ref.abs().max()
        else:
            num, den = diff.norm(), ref.norm()
        out[g.name] = float(num / den.clamp_min(torch.finfo(y.dtype).tiny))
    return out


def max_error(errors: dict[str, float]) -> float:
    """The largest error in a result of :func:`equivariance_error`."""
    return max(errors.values())


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
