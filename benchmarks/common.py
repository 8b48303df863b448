"""Timing helpers shared by the benchmark scripts: medians of repeated, synchronised measurements.

Every benchmark reports ratios against a baseline measured in the same run, on the same device, with the
same input, so machine load and clock changes cancel as far as they can.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


def sync(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 2, device: str = "cpu") -> float:
    """Median wall time of ``fn()`` in milliseconds over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def interleaved_min(timers: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Call every timer once per round, in turn, and keep each one's fastest round.

    Models compared in a ratio are measured alternately, so a slow spell of the machine (other load, clock
    changes) hits both sides instead of one; machine noise only adds time, so the minimum is the best estimate.
    """
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, timer in timers.items():
            best[name] = min(best.get(name, float("inf")), timer())
    return best


def forward_ms(model: nn.Module, x: torch.Tensor, repeats: int, device: str = "cpu") -> float:
    """Eval-mode forward time (no autograd)."""
    model.eval()

    def run():
        with torch.no_grad():
            model(x)

    return median_ms(run, repeats, device=device)


def train_step_ms(model: nn.Module, x: torch.Tensor, repeats: int, device: str = "cpu",
                  num_classes: int | None = None) -> float:
    """One training step: forward, cross-entropy on random labels, backward, Adam update."""
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    with torch.no_grad():
        k = num_classes or model(x).shape[1]
    target = torch.randint(0, k, (x.shape[0], *x.shape[-2:]), device=x.device)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), target)
        loss.backward()
        opt.step()

    return median_ms(step, repeats, device=device)


def tf32_off() -> None:
    """TF32 convolutions/matmuls alone raise equivariance errors to ~1e-3 on GPUs: switch them off."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def print_table(rows: list[dict], columns: list[str] | None = None) -> None:
    """Print ``rows`` (dicts) as an aligned text table; floats get 3 significant digits."""
    if not rows:
        print("(no rows)")
        return
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.2e}" if (v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e5)) else f"{v:.3g}"
        return "" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
