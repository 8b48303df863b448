"""CPU numerics modes: which kernel code paths a training uses, so that it gives the same bits on another CPU.

A CPU training is bit-identical on two machines only where every kernel rounds alike. PyTorch's own (ATen)
kernels dispatch on the instruction set, oneDNN's convolutions and MKL's matrix products and vector maths
pick code paths by CPU type *and vendor*. A mode is a set of environment variables read when those libraries
load (so they must be set before the training process starts: ``util.study run --numerics MODE`` sets them for
its trainings) plus, for the portable modes, ``NUMERICS_EXACT_SQRT=1``, which the training process reads
(:func:`apply_from_env`) to compute every float32 square root correctly rounded: PyTorch takes ``torch.sqrt``
(Adam's denominator, vector norms) from MKL's vector maths, whose low bits differ between an Intel and an AMD
CPU under every MKL branch (``results/numerics/README.md``).

Modes (``benchmarks/numerics.py`` fingerprints each):

* ``native``: nothing set; fastest, reproducible on the same CPU type only.
* ``avx2``: AVX2 paths everywhere; an Intel AVX-512 machine then computes what an Intel AVX2 machine does.
* ``compatible``: the oldest paths (SSE4.1 oneDNN, MKL's compatible branch); 2.5-3.5x native.
* ``portable``: AVX2 paths for ATen and oneDNN, MKL's compatible branch, correctly rounded square roots; about
  native cost. Measured: the first 6 training steps of brca_cpu's lr-plain_rot-0.001 under it on an AMD EPYC
  gave the weights an Intel Xeon gave under ``avx2`` (``results/numerics/fingerprints.csv``).
* ``compatible_exact``: ``compatible`` with correctly rounded square roots.
"""
from __future__ import annotations

import os
from typing import Mapping

import torch

#: set to 1 (by a mode) to route float32 square roots through :func:`exact_sqrt` in the training process
EXACT_SQRT_VARIABLE = "NUMERICS_EXACT_SQRT"

MODES: dict[str, dict[str, str]] = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"},
    "compatible": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_CBWR": "COMPATIBLE"},
    "portable": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "COMPATIBLE",
                 EXACT_SQRT_VARIABLE: "1"},
    "compatible_exact": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_CBWR": "COMPATIBLE",
                         EXACT_SQRT_VARIABLE: "1"},
}

_TORCH_SQRT = torch.sqrt  # the library's own, kept before any patching


def mode_settings(mode: str) -> dict[str, str]:
    """The environment variables of ``mode``; a ValueError naming the known modes otherwise."""
    if mode not in MODES:
        raise ValueError(f"unknown numerics mode {mode!r}; expected one of {', '.join(MODES)}")
    return dict(MODES[mode])


def mode_env(base: Mapping[str, str], mode: str | None, variables: tuple[str, ...]) -> dict[str, str]:
    """``base`` with every numerics variable of ``variables`` removed and ``mode``'s set; ``base`` unchanged
    when ``mode`` is None (the caller's own settings then apply)."""
    env = dict(base)
    if mode is None:
        return env
    for k in variables:
        env.pop(k, None)
    env.update(mode_settings(mode))
    return env


def in_mode(environ: Mapping[str, str], mode: str, variables: tuple[str, ...]) -> bool:
    """Whether ``environ`` carries exactly ``mode``'s settings among ``variables`` (nothing else of them set)."""
    return {k: v for k, v in environ.items() if k in variables} == mode_settings(mode)


def _rounded_sqrt(x: torch.Tensor) -> torch.Tensor:
    """The correctly rounded float32 root of float32 ``x`` (see :func:`exact_sqrt`), without autograd."""
    with torch.no_grad():
        y = _TORCH_SQRT(x.double()).float()
        up = torch.nextafter(y, torch.full_like(y, float("inf")))
        down = torch.nextafter(y, torch.zeros_like(y))
        xd = x.double()
        hi = (y.double() + up.double()) / 2  # exact: both have 24 significant bits, their mean 25
        lo = (y.double() + down.double()) / 2
        y = torch.where(xd >= hi * hi, up, y)
        # zeros, infinities, negatives and NaN pass the two tests unchanged (±0, inf, NaN), as IEEE sqrt gives them
        return torch.where(xd < lo * lo, down, y)


class _ExactSqrt(torch.autograd.Function):
    """``y = exact_sqrt(x)`` with ``dL/dx = dL/dy / (2 y)`` on that same ``y`` (as ``torch.sqrt``'s backward)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        y = _rounded_sqrt(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (y,) = ctx.saved_tensors
        return grad / (2 * y)


def exact_sqrt(x: torch.Tensor) -> torch.Tensor:
    """Correctly rounded square root of a float32 tensor, whatever library computes ``torch.sqrt``.

    Start from ``y``, the float64 root rounded to float32 (within one unit in the last place, ulp), then move
    ``y`` by one ulp where an exact comparison with the midpoints ``m = y ± ulp/2`` says so: the correctly
    rounded root satisfies ``(y - ulp/2)² ≤ x < (y + ulp/2)²``. ``m`` has 25 significant bits, so ``m²`` is
    exact in float64 and the comparison is exact. Zeros, negatives, infinities and NaNs give what ``torch.sqrt``
    gives (±0, NaN, inf, NaN); tensors of other dtypes get ``torch.sqrt``'s result. Shape and dtype are ``x``'s; differentiable like ``torch.sqrt``.
    """
    if x.dtype != torch.float32:
        return _TORCH_SQRT(x)
    if x.requires_grad and torch.is_grad_enabled():
        return _ExactSqrt.apply(x)
    return _rounded_sqrt(x)


def _exact_sqrt_(t: torch.Tensor) -> torch.Tensor:
    return t.copy_(exact_sqrt(t))


def use_exact_sqrt() -> None:
    """Route ``torch.sqrt``, ``Tensor.sqrt``, ``Tensor.sqrt_`` and ``torch._foreach_sqrt`` (Adam's denominator)
    through :func:`exact_sqrt` in this process. Idempotent."""
    torch.sqrt = exact_sqrt
    torch.Tensor.sqrt = exact_sqrt
    torch.Tensor.sqrt_ = _exact_sqrt_
    torch._foreach_sqrt = lambda tensors: [exact_sqrt(t) for t in tensors]


def apply_from_env(environ: Mapping[str, str] | None = None) -> bool:
    """Apply :func:`use_exact_sqrt` when ``NUMERICS_EXACT_SQRT`` is set (not empty, not 0); True when applied."""
    value = (os.environ if environ is None else environ).get(EXACT_SQRT_VARIABLE, "")
    if value.strip() in ("", "0"):
        return False
    use_exact_sqrt()
    return True
