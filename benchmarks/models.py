"""Model benchmark: parameters, eval-forward and train-step time as ratios to the plain U-Net, equivariance.

    python benchmarks/models.py            # full run (batch 2×3×256×256, width 32)
    python benchmarks/models.py --quick    # about a minute (batch 2×3×128×128, width 16)
    python benchmarks/models.py --device cuda --batch 8 --size 512

The plain U-Net is measured in the same run, on the same input, in interleaved rounds with the others (the
fastest round of each is kept); every other row is reported as a ratio to it. The equivariance column is the largest relative error over the exact (pixel-grid) elements of each
model's group (D4 for the plain U-Net, which is not equivariant, so it shows how far off it is), in eval mode.
Issue-specific tables (moment kernels, escnn) live in benchmarks/moment.py and benchmarks/steerable.py and are
appended when those modules are present.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import forward_ms, interleaved_min, print_table, tf32_off, train_step_ms  # noqa: E402

from model import build_model, count_parameters, list_models  # noqa: E402
from model.equivariance import equivariance_error  # noqa: E402

#: (label, registry name, extra kwargs) compared at the same ``width`` (channels per level).
MODELS = [
    ("unet", "unet", {}),
    ("moment_unet D4", "moment_unet", {"group": "D4"}),
    ("escnn_unet D4", "escnn_unet", {"group": "D4"}),
    ("escnn_unet C8", "escnn_unet", {"group": "C8"}),
    ("escnn_unet SO2", "escnn_unet", {"group": "SO2"}),
]


def model_rows(width: float, depth: int, x: torch.Tensor, repeats: int, device: str, rounds: int = 3) -> list[dict]:
    """One row per model; forward and train-step times are measured in interleaved rounds (fastest kept)."""
    nets = {}
    for label, name, kwargs in MODELS:
        if name not in list_models():
            continue
        t0 = time.perf_counter()
        try:
            nets[label] = (build_model(name, width=width, depth=depth, **kwargs).to(device), time.perf_counter() - t0)
        except (ImportError, ModuleNotFoundError) as err:  # a model whose module is not there yet
            print(f"skipping {label}: {err}", file=sys.stderr)
    timers = {}
    for label, (net, _) in nets.items():
        timers[(label, "forward")] = lambda net=net: forward_ms(net, x, repeats, device)
        timers[(label, "train")] = lambda net=net: train_step_ms(net, x, repeats, device)
    times = interleaved_min(timers, rounds)
    rows, base = [], None
    for label, (net, build_s) in nets.items():
        net.eval()
        group = getattr(net, "group", None)
        err = max(equivariance_error(net, x[:1], group or "D4", exact_only=True).values())
        fwd, step = times[(label, "forward")], times[(label, "train")]
        row = {"model": label, "params": count_parameters(net), "build s": build_s,
               "forward ms": fwd, "train ms": step, "max err (grid)": err, "group": group or "none (D4 err)"}
        if base is None:
            base = row
        row["forward ×"] = fwd / base["forward ms"]
        row["train ×"] = step / base["train ms"]
        row["params ×"] = row["params"] / base["params"]
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small input and width, few repeats (~1 min)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=None, help="H = W of the input (default 256, quick 128)")
    p.add_argument("--width", type=float, default=None, help="top-level channels (default 32, quick 16)")
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--no-extra", action="store_true", help="skip the moment/escnn issue tables")
    args = p.parse_args(argv)
    size = args.size or (128 if args.quick else 256)
    width = args.width or (16 if args.quick else 32)
    repeats = args.repeats or (3 if args.quick else 10)
    torch.manual_seed(0)
    if args.device.startswith("cuda"):
        tf32_off()
    else:
        torch.set_num_threads(torch.get_num_threads())
    x = torch.randn(args.batch, 3, size, size, device=args.device)
    print(f"# models at equal width={width} depth={args.depth}, input {tuple(x.shape)}, device {args.device}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    cols = ["model", "group", "params", "params ×", "build s", "forward ms", "forward ×", "train ms", "train ×",
            "max err (grid)"]
    print_table(model_rows(width, args.depth, x, repeats, args.device), cols)
    if args.no_extra:
        return
    for module, fn in (("moment", "moment_rows"), ("steerable", "escnn_rows")):
        try:
            mod = importlib.import_module(f"benchmarks.{module}")
        except ImportError:
            continue
        if hasattr(mod, fn):
            print(f"\n# {module} (benchmarks/{module}.py)")
            print_table(getattr(mod, fn)(quick=args.quick, device=args.device))


if __name__ == "__main__":
    main()
