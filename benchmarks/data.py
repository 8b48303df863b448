"""Data-pipeline throughput: samples/s per worker (one thread) for 512² training crops, presets `full` and `none`.

    python benchmarks/data.py [--root data/synthetic_ocelot] [--crop 512] [--n 60] [--presets full none]

Each sample = JPEG decode + CSV read + crop + augmentation (points moved) + mask redrawn + tensor conversion,
i.e. exactly what one DataLoader worker does. Without ``--root`` data (or when its patches are smaller than the
crop) a small synthetic set of suitable size is made in a temporary folder first.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from util.dataloader import OcelotDataset  # noqa: E402
from util.ocelot import find_image, list_ids  # noqa: E402


def _patch_side(root: Path) -> int:
    from PIL import Image

    with Image.open(find_image(root, "train", list_ids(root, "train")[0])) as im:
        return min(im.size)


def measure(root: Path, preset: str, crop: int, n: int, seed: int = 0) -> dict[str, float]:
    """Samples/s of ``OcelotDataset(root, 'train', crop, preset)`` in this process (one thread)."""
    ds = OcelotDataset(root, "train", crop_size=crop, transforms=preset, seed=seed)
    for i in range(min(3, len(ds))):  # warm-up (imports, caches)
        ds[i]
    n_pts = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for k in range(n):
        s = ds[k % len(ds)]
        n_pts += len(s["points"])
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    return {"preset": preset, "crop": crop, "samples": n, "seconds": round(dt, 3),
            "samples_per_s": round(n / dt, 1), "ms_per_sample": round(1000 * dt / n, 1),
            "cpu_samples_per_s": round(n / dc, 1), "cpu_ms_per_sample": round(1000 * dc / n, 1),
            "points_per_sample": round(n_pts / n, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default="data/synthetic_ocelot")
    ap.add_argument("--crop", type=int, default=512)
    ap.add_argument("--n", type=int, default=60, help="samples timed per preset")
    ap.add_argument("--presets", nargs="+", default=["full", "none"])
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    root = Path(args.root)
    tmp = None
    if not (root / "metadata.json").is_file() or _patch_side(root) < args.crop:
        from util.synthetic import make_synthetic_ocelot

        tmp = tempfile.TemporaryDirectory()
        side = max(args.crop, 512)
        print(f"{root} missing or patches smaller than {args.crop}: making 8 synthetic {side}² patches", flush=True)
        root = make_synthetic_ocelot(Path(tmp.name) / "syn", 8, 0, 0, size=side, seed=0)
    rows = [measure(root, p, args.crop, args.n) for p in args.presets]
    print(f"data: {root} ({_patch_side(root)} px patches); one thread per worker; numpy {np.__version__}, "
          f"opencv {cv2.__version__}")
    print("samples/s = wall clock; cpu samples/s = per CPU-second of this process (what one worker with its own "
          "core achieves; robust to other load on the machine)")
    print(f"{'preset':<12}{'crop':>6}{'samples/s':>11}{'ms/sample':>11}{'cpu samples/s':>15}{'cpu ms':>8}"
          f"{'points':>8}")
    for r in rows:
        print(f"{r['preset']:<12}{r['crop']:>6}{r['samples_per_s']:>11}{r['ms_per_sample']:>11}"
              f"{r['cpu_samples_per_s']:>15}{r['cpu_ms_per_sample']:>8}{r['points_per_sample']:>8}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
