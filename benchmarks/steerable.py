"""Benchmarks of the steerable U-Net (model/escnnUnet.py) against the plain U-Net, measured in the same run.

    python benchmarks/steerable.py [--quick] [--device cuda] [--groups D4,C4] [--backends escnn,e2cnn] [--non-grid]
                                   [--no-build] [--json out.json]

Rows (``escnn_rows(quick, device)``, used by ``benchmarks/models.py``):

* ``kind="speed"``: train step (forward + cross-entropy + backward + Adam step) and eval forward (no grad) of
  ``EscnnUNet`` and of the exported plain-torch copy, and the plain ``UNet`` at **equal channels** (same
  ``width``) and at **equal parameters** (``width_for_params``), with the ratios to the plain U-Net.
* ``kind="build"``: construction time of ``EscnnUNet(group="D4", width=32, depth=4)`` and of the equal-parameter
  D4 net, each in a new process, first in an empty escnn disk cache (cold), then again with that cache (warm);
  the import time of escnn is reported separately.
* ``kind="equivariance"``: D4 equivariance error on the device (on CUDA with TF32 switched off: TF32
  convolutions alone raise it to ~1e-3).
* ``kind="non_grid"`` (``--non-grid``): 45° (C8, D8, C16, SO2, O2) and 22.5° (C16, SO2) errors next to the plain U-Net's,
  relative max and L2, on the protocol of ``model/equivariance.py`` (smooth 128² noise, its disk on a 192² canvas,
  three random nets with calibrated batch norm) and on the bare 128² square; the same numbers the test asserts.

On CUDA the batch is 8×3×512×512 (fp32); on CPU 2×3×256×256 (``--quick``: 1×3×128×128, depth 2 nets).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import forward_ms, interleaved_min, train_step_ms  # noqa: E402
from model import count_parameters, width_for_params  # noqa: E402
from model.escnnUnet import EscnnUNet  # noqa: E402
from model.unet import UNet  # noqa: E402


def speed_rows(quick: bool, device: str, groups=("D4",), backends=("escnn",)) -> list[dict]:
    """Train step, eval forward and exported forward vs the plain U-Net at equal channels and equal parameters.

    Each comparison is timed in interleaved rounds (:func:`benchmarks.common.interleaved_min`): 3 rounds, except the
    slow equal-parameter nets on CPU (1 round).
    """
    depth = 2 if quick else 4
    cuda = device.startswith("cuda")
    shape = (8, 3, 512, 512) if cuda else ((1, 3, 128, 128) if quick else (2, 3, 256, 256))
    repeats = 3 if quick else (20 if cuda else 3)
    torch.manual_seed(0)
    x = torch.randn(*shape, device=device)
    rows = []
    plain_nets: dict[float, UNet] = {}

    def plain(width: float) -> UNet:
        if width not in plain_nets:
            plain_nets[width] = UNet(width=width, depth=depth).to(device)
        return plain_nets[width]

    target = count_parameters(plain(32))
    for backend in backends:
        for group in groups:
            for comparison in ("equal_channels", "equal_params"):
                width = 32 if comparison == "equal_channels" else width_for_params(
                    "escnn_unet", target, group=group, depth=depth, backend=backend)
                t0 = time.perf_counter()
                net = EscnnUNet(width=width, depth=depth, group=group, backend=backend).to(device)
                build_s = time.perf_counter() - t0
                exported = net.export()
                same = plain(width)  # same channels per level as this escnn net (for the export ratio)
                timers = {
                    "train": lambda net=net: train_step_ms(net, x, repeats, device, num_classes=3),
                    "plain_train": lambda: train_step_ms(plain(32), x, repeats, device, num_classes=3),
                    "eval": lambda net=net: forward_ms(net, x, repeats, device),
                    "plain_eval": lambda: forward_ms(plain(32), x, repeats, device),
                    "exported_eval": lambda exported=exported: forward_ms(exported, x, repeats, device),
                }
                if width != 32:
                    timers["same_eval"] = lambda same=same: forward_ms(same, x, repeats, device)
                rounds = 1 if (comparison == "equal_params" and not cuda) else 3
                t = interleaved_min(timers, rounds)
                same_eval = t.get("same_eval", t["plain_eval"])
                rows.append(dict(
                    kind="speed", model="escnn_unet", backend=backend, group=group, comparison=comparison,
                    device=device, batch=list(shape), depth=depth, width=width, params=count_parameters(net),
                    plain_width=32, plain_params=target, build_s=round(build_s, 2), rounds=rounds,
                    train_ms=round(t["train"], 2), eval_ms=round(t["eval"], 2),
                    exported_eval_ms=round(t["exported_eval"], 2),
                    plain_train_ms=round(t["plain_train"], 2), plain_eval_ms=round(t["plain_eval"], 2),
                    train_ratio=round(t["train"] / t["plain_train"], 3), eval_ratio=round(t["eval"] / t["plain_eval"], 3),
                    exported_vs_plain_same_channels=round(t["exported_eval"] / same_eval, 3),
                ))
                del net, exported, timers
                if cuda:
                    torch.cuda.empty_cache()
    return rows


_BUILD_SCRIPT = """
import time, json, sys
t0 = time.perf_counter()
from model.escnnUnet import EscnnUNet
import escnn.nn  # noqa: F401
t1 = time.perf_counter()
m = EscnnUNet(group="D4", width={width}, depth={depth})
t2 = time.perf_counter()
print("RESULT", json.dumps({{"import_s": t1 - t0, "build_s": t2 - t1, "params": sum(p.numel() for p in m.parameters())}}))
"""


def _build_in_new_process(width: int, depth: int, cache: str) -> dict:
    env = {**os.environ, "ESCNN_CACHE_DIR": cache, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", _BUILD_SCRIPT.format(width=width, depth=depth)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"build benchmark failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.split("RESULT", 1)[1])


def build_rows(quick: bool) -> list[dict]:
    """Cold (empty escnn cache) and warm build times in new processes: default D4 net and equal-parameter D4 net."""
    depth = 2 if quick else 4
    target = count_parameters(UNet(width=32, depth=depth))
    widths = {"default": 32, "equal_params": width_for_params("escnn_unet", target, group="D4", depth=depth)}
    rows = []
    with tempfile.TemporaryDirectory(prefix="escnn_cache_") as cache:
        for name, width in widths.items():
            cold = _build_in_new_process(width, depth, cache) if name == "default" else None
            warm = _build_in_new_process(width, depth, cache)
            rows.append(dict(kind="build", model="escnn_unet", group="D4", net=name, width=width, depth=depth,
                             params=warm["params"], cold_build_s=None if cold is None else round(cold["build_s"], 2),
                             warm_build_s=round(warm["build_s"], 2), import_s=round(warm["import_s"], 2)))
    return rows


def equivariance_rows(device: str) -> list[dict]:
    """D4 equivariance error of a small net on ``device`` (TF32 off on CUDA), train and eval mode."""
    from model.equivariance import equivariance_error

    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        torch.manual_seed(0)
        net = EscnnUNet(width=32, depth=4, group="D4").to(device)
        x = torch.randn(2, 3, 64, 64, device=device)
        rows = []
        for mode in ("train", "eval"):
            net.train(mode == "train")
            err = max(equivariance_error(net, x, "D4").values())
            rows.append(dict(kind="equivariance", model="escnn_unet", group="D4", device=device, mode=mode,
                             tf32=False, max_error=err))
        return rows
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


def non_grid_rows(seeds=range(3)) -> list[dict]:
    """Non-grid rotation errors of the default C8/D8/C16/SO2/O2 nets next to the plain U-Net's (width 32, depth 3)."""
    from model.equivariance import disk_on_canvas, mean_rotation_errors, smooth_noise

    noise = smooth_noise(128)
    rows = []
    for setup, x, margin in (("disk on 192² canvas", disk_on_canvas(noise, 192), 34.0), ("bare 128² square", noise, 2.0)):
        plain = mean_rotation_errors(lambda: UNet(width=32, depth=3), x, (45.0, 22.5), margin, seeds)
        for group, angles in (("C8", (45.0,)), ("D8", (45.0,)), ("C16", (45.0, 22.5)), ("SO2", (45.0, 22.5)),
                              ("O2", (45.0,))):
            errs = mean_rotation_errors(lambda g=group: EscnnUNet(width=32, depth=3, group=g), x, angles, margin, seeds)
            for a in angles:
                rows.append(dict(kind="non_grid", setup=setup, group=group, angle=a,
                                 max_error=round(errs[a]["max"], 3), plain_max_error=round(plain[a]["max"], 3),
                                 max_ratio=round(errs[a]["max"] / plain[a]["max"], 3),
                                 l2_error=round(errs[a]["l2"], 3), plain_l2_error=round(plain[a]["l2"], 3),
                                 l2_ratio=round(errs[a]["l2"] / plain[a]["l2"], 3)))
    return rows


def escnn_rows(quick: bool, device: str = "cpu", groups=("D4",), backends=("escnn",), builds: bool = True) -> list[dict]:
    """All benchmark rows (speed, build, equivariance) for ``benchmarks/models.py``."""
    rows = equivariance_rows(device) + speed_rows(quick, device, groups, backends)
    if builds:
        rows += build_rows(quick)
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small inputs, depth-2 nets, few repeats")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--groups", default="D4")
    ap.add_argument("--backends", default="escnn")
    ap.add_argument("--no-build", action="store_true", help="skip the new-process build timings")
    ap.add_argument("--non-grid", action="store_true", help="also the 45°/22.5° errors vs the plain U-Net (~1 min)")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)
    rows = escnn_rows(args.quick, args.device, tuple(args.groups.split(",")), tuple(args.backends.split(",")),
                      builds=not args.no_build)
    if args.non_grid:
        rows += non_grid_rows()
    for row in rows:
        print(json.dumps(row))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
