"""Cost and equivariance of the moment-kernel layers and the moment U-Net, against plain convolutions.

Run ``python benchmarks/moment.py [--quick] [--device cuda]``. Every ratio is measured in the same run, with
the two contenders timed alternately (A, B, A, B, ...) and the median of each taken, so load drift on a shared
machine hits both. A "train step" is forward, a scalar loss, backward and an Adam step; "eval forward" is a
forward in eval mode under ``torch.inference_mode()`` (the moment layers then use their cached kernels).

Rows (``moment_rows(quick, device)`` returns them as dicts; ``benchmarks/models.py`` prints them too):

* ``layer train``: one ``MomentConv2d`` (16 scalars + 8 vectors = 32 channels in and out, 5×5) vs
  ``nn.Conv2d(32, 32, 5)``; input batch 2×32×128×128 on CPU (8×32×512×512 on CUDA). Target ≤ 1.1×.
* ``unet train (equal channels, k)``: ``MomentUNet`` vs ``UNet`` with the same width (channels per level, a
  vector field counting as 2) and the same kernel size; batch 2×3×128×128 on CPU, 8×3×512×512 on CUDA.
  Target ≤ 1.3× on CPU, ≤ 1.2× on CUDA.
* ``unet eval (equal channels, k)``: the same pair, eval forward. Target ≤ 1.1× (CPU).
* ``unet train (equal params)``: the moment U-Net widened with ``width_for_params`` to the parameter count of
  the default plain U-Net (width 32, 3×3), against that plain U-Net.
* ``unet train / eval (vs default 3×3 plain)``: default moment U-Net (width 32, 5×5) vs default plain U-Net.
* ``equivariance``: the largest D4 ``equivariance_error`` of the moment U-Net (train and eval mode) on a small
  input, with reduced-precision paths switched off (:func:`model.equivariant.exact_arithmetic`: TF32 off on
  CUDA, the IEEE GEMM convolution instead of oneDNN on CPU), and with the default arithmetic for comparison.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable

import torch
from torch import nn

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from model import count_parameters, width_for_params  # noqa: E402
from model.equivariance import equivariance_error  # noqa: E402
from model.equivariant import FieldType, MomentConv2d, exact_arithmetic  # noqa: E402
from model.equivariantUnet import MomentUNet  # noqa: E402
from model.unet import UNet  # noqa: E402


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _train_step_fn(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        y = model(x)
        loss = y.float().square().mean()
        loss.backward()
        opt.step()

    return step


def _eval_fn(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    model.eval()

    def fwd() -> None:
        with torch.inference_mode():
            model(x)

    return fwd


#: Clock used by :func:`time_pair`: wall time by default; ``--cpu-time`` switches to this process's CPU time,
#: which is far less sensitive to other processes on a shared CPU (meaningless on CUDA).
CLOCK: Callable[[], float] = time.perf_counter


def time_pair(fa: Callable[[], None], fb: Callable[[], None], device: str, reps: int, warmup: int = 2
              ) -> tuple[float, float]:
    """Median seconds of ``fa`` and ``fb``, timed alternately after ``warmup`` calls each."""
    for _ in range(warmup):
        fa(); fb()
    _sync(device)
    ta, tb = [], []
    for _ in range(reps):
        for f, acc in ((fa, ta), (fb, tb)):
            _sync(device)
            t0 = CLOCK()
            f()
            _sync(device)
            acc.append(CLOCK() - t0)
    return statistics.median(ta), statistics.median(tb)


def _row(name: str, moment_s: float, plain_s: float, target: float | None, device: str, **extra) -> dict:
    ratio = moment_s / plain_s
    row = {"benchmark": name, "device": device, "moment_ms": moment_s * 1e3, "plain_ms": plain_s * 1e3,
           "ratio": ratio, "target": target, "ok": None if target is None else bool(ratio <= target)}
    row.update(extra)
    return row


def layer_rows(quick: bool, device: str) -> list[dict]:
    """Single ``MomentConv2d`` train step vs ``nn.Conv2d`` with the same channels and kernel size."""
    cuda = str(device).startswith("cuda")
    b, hw = (8, 512) if cuda else (2, 128)
    reps = 5 if quick else 15
    t = FieldType(16, 8)
    rows = []
    for k in ((5,) if quick else (3, 5)):
        torch.manual_seed(0)
        mom = MomentConv2d(t, t, k).to(device)
        conv = nn.Conv2d(t.channels, t.channels, k, padding=k // 2, bias=False).to(device)
        x = torch.randn(b, t.channels, hw, hw, device=device)
        ta, tb = time_pair(_train_step_fn(mom, x), _train_step_fn(conv, x), device, reps)
        rows.append(_row(f"layer train 32->32 k={k}", ta, tb, 1.1, device,
                         input=f"{b}x{t.channels}x{hw}x{hw}"))
    return rows


def unet_rows(quick: bool, device: str, kernel_size: int = 5) -> list[dict]:
    """Moment U-Net vs plain U-Net: equal channels and kernel, equal parameters, and vs the default plain."""
    cuda = str(device).startswith("cuda")
    b, hw = (8, 512) if cuda else (2, 128)
    reps = 3 if quick else 7
    torch.manual_seed(0)
    x = torch.randn(b, 3, hw, hw, device=device)
    inp = f"{b}x3x{hw}x{hw}"
    rows = []
    torch.manual_seed(0)
    mom = MomentUNet(width=32, kernel_size=kernel_size).to(device)
    plain_k = UNet(width=32, kernel_size=kernel_size).to(device)
    ta, tb = time_pair(_train_step_fn(mom, x), _train_step_fn(plain_k, x), device, reps)
    rows.append(_row(f"unet train, equal channels, k={kernel_size}", ta, tb, 1.2 if cuda else 1.3, device,
                     input=inp, moment_params=count_parameters(mom), plain_params=count_parameters(plain_k)))
    ta, tb = time_pair(_eval_fn(mom, x), _eval_fn(plain_k, x), device, reps)
    rows.append(_row(f"unet eval, equal channels, k={kernel_size}", ta, tb, None if cuda else 1.1, device,
                     input=inp))
    del plain_k
    plain3 = UNet(width=32).to(device)  # the default plain U-Net (3×3)
    ta, tb = time_pair(_train_step_fn(mom, x), _train_step_fn(plain3, x), device, reps)
    rows.append(_row("unet train, default moment (w32 k5) vs default plain (w32 k3)", ta, tb, None, device,
                     input=inp))
    ta, tb = time_pair(_eval_fn(mom, x), _eval_fn(plain3, x), device, reps)
    rows.append(_row("unet eval, default moment (w32 k5) vs default plain (w32 k3)", ta, tb, None, device,
                     input=inp))
    target = count_parameters(plain3)
    w_eq = width_for_params("moment_unet", target, kernel_size=kernel_size)
    del mom
    mom_eq = MomentUNet(width=w_eq, kernel_size=kernel_size).to(device)
    ta, tb = time_pair(_train_step_fn(mom_eq, x), _train_step_fn(plain3, x), device, reps)
    rows.append(_row(f"unet train, equal params (moment w{w_eq} k{kernel_size} vs plain w32 k3)", ta, tb, None,
                     device, input=inp, moment_params=count_parameters(mom_eq), plain_params=target))
    ta, tb = time_pair(_eval_fn(mom_eq, x), _eval_fn(plain3, x), device, reps)
    rows.append(_row(f"unet eval, equal params (moment w{w_eq} k{kernel_size} vs plain w32 k3)", ta, tb,
                     None, device, input=inp))
    return rows


def equivariance_rows(quick: bool, device: str) -> list[dict]:
    """Largest D4 equivariance error of the default moment U-Net, train and eval mode, on 2×3×64×64.

    Measured with reduced-precision paths off (:func:`model.equivariant.exact_arithmetic`; target ≤ 1e-5) and,
    for information, with the default arithmetic (oneDNN on CPU; cuDNN with PyTorch's TF32 defaults on CUDA).
    """
    torch.manual_seed(0)
    net = MomentUNet().to(device)
    x = torch.randn(2, 3, 64, 64, device=device)
    rows = []
    for exact in (True, False):
        for mode in ("train", "eval"):
            net.train(mode == "train")
            if exact:
                with exact_arithmetic():
                    err = max(equivariance_error(net, x, "D4").values())
            else:
                err = max(equivariance_error(net, x, "D4").values())
            label = "exact arithmetic" if exact else "default arithmetic"
            rows.append({"benchmark": f"equivariance D4 max error ({mode}, {label}, 2x3x64x64)", "device": device,
                         "moment_ms": None, "plain_ms": None, "ratio": err, "target": 1e-5 if exact else None,
                         "ok": bool(err <= 1e-5) if exact else None})
    return rows


def moment_rows(quick: bool = False, device: str = "cpu") -> list[dict]:
    """All rows of this benchmark (see the module docstring), measured in one run on ``device``."""
    rows = layer_rows(quick, device)
    rows += unet_rows(quick, device)
    rows += equivariance_rows(quick, device)
    return rows


def format_rows(rows: list[dict]) -> str:
    head = f"{'benchmark':72s} {'moment ms':>10s} {'plain ms':>10s} {'ratio':>9s} {'target':>7s}  ok"
    lines = [head, "-" * len(head)]
    for r in rows:
        def ms(v):
            return f"{v:10.1f}" if v is not None else f"{'-':>10s}"
        ratio = f"{r['ratio']:9.3f}" if r["moment_ms"] is not None else f"{r['ratio']:9.1e}"
        tgt = "-" if r["target"] is None else (f"{r['target']:g}")
        ok = "-" if r["ok"] is None else ("yes" if r["ok"] else "NO")
        lines.append(f"{r['benchmark']:72s} {ms(r['moment_ms'])} {ms(r['plain_ms'])} {ratio} {tgt:>7s}  {ok}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions and rows")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--only", choices=("layer", "unet", "equivariance"), default=None)
    ap.add_argument("--cpu-time", action="store_true",
                    help="time with this process's CPU time instead of wall time (shared, loaded CPUs)")
    args = ap.parse_args(argv)
    global CLOCK
    if args.cpu_time:
        CLOCK = time.process_time
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("CUDA requested but not available", file=sys.stderr)
        return 2
    dev = args.device
    info = torch.cuda.get_device_name(0) if dev.startswith("cuda") else f"{torch.get_num_threads()} CPU threads"
    print(f"torch {torch.__version__}, device {dev} ({info})")
    if args.only == "layer":
        rows = layer_rows(args.quick, dev)
    elif args.only == "unet":
        rows = unet_rows(args.quick, dev)
    elif args.only == "equivariance":
        rows = equivariance_rows(args.quick, dev)
    else:
        rows = moment_rows(args.quick, dev)
    print(format_rows(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
