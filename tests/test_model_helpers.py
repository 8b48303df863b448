"""Helpers shared by the model tests (no tests here): tolerances, small training loops, a subprocess runner."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
import torch.nn.functional as F

from model.equivariance import group_elements
from model.groups import CONTINUOUS_GROUPS, group_order

ROOT = Path(__file__).resolve().parents[1]
#: The 8 elements of D4.
D4 = group_elements("D4")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a − b| / max |b|`` (the moment-layer tests' measure)."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a − b| / max |b|`` of detached tensors (the steerable-net tests' measure)."""
    return float((a - b).abs().max().detach() / b.abs().max().detach())


def position_field(h: int, w: int) -> torch.Tensor:
    """The vector field p ↦ p − centre in display coordinates (x right, y down), shape (1, 2, H, W)."""
    ys = torch.arange(h, dtype=torch.float64) - (h - 1) / 2
    xs = torch.arange(w, dtype=torch.float64) - (w - 1) / 2
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx, yy])[None]


def run_python(code: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``code`` (dedented) in a fresh Python process at the repository root."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-W", "ignore", "-c", textwrap.dedent(code)], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def one_field(group: str) -> int:
    """A width giving one field per level: ``|G|`` for finite groups; any width ≤ a Fourier field's size for SO2/O2."""
    return 1 if group in CONTINUOUS_GROUPS else group_order(group)


def train_steps(model: torch.nn.Module, x: torch.Tensor, steps: int = 3) -> None:
    """``steps`` Adam steps (lr 1e-2) of cross entropy against fixed random labels, in train mode."""
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    target = torch.randint(0, model.num_classes, (x.shape[0], *x.shape[-2:]), generator=torch.Generator().manual_seed(1))
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), target).backward()
        opt.step()
