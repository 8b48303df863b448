"""Cell detection and OCELOT matching: the new ``util.metrics`` code against the previous quadratic one.

    python benchmarks/detection.py [--repeats 5] [--threads 1]

Rows: ``detect_cells`` (blur, window maxima, thinning) on "ordinary" maps (smoothed random softmax, cells about
8 px apart) and on flat maps (every pixel a candidate peak, the worst case of the thinning), and ``_match_one``
for a flat-map prediction set (one class, equal confidences) against 300 random GT cells. The reference is the
verbatim previous code in ``tests/test_detection_fast.py`` (``ref_*``); it is timed once, and skipped (n/a)
where it would take minutes to hours. Both sides give identical results (checked here on every row). Target:
flat 1024² in <= 1 s.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import median_ms, print_table  # noqa: E402
from test_detection_fast import flat_map, ref_detect_cells, ref_match_one, smooth_softmax_map  # noqa: E402
from util.metrics import _match_one, detect_cells  # noqa: E402


def _once(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def detection_rows(repeats: int) -> list[dict]:
    """(map, min_distance, run the reference?) -> seconds of both, their ratio, number of cells."""
    cases = [("ordinary 448²", smooth_softmax_map(0, 448, 448, smooth=4.0), 1.0, 8, True),
             ("ordinary 1024²", smooth_softmax_map(1, 1024, 1024, smooth=4.0), 1.0, 8, True),
             ("flat 128²", flat_map(128, 128), 0.0, 8, True),
             ("flat 128²", flat_map(128, 128), 0.0, 3, True),
             ("flat 1024²", flat_map(1024, 1024), 0.0, 8, False),
             ("flat 1024²", flat_map(1024, 1024), 0.0, 3, False)]
    rows = []
    for name, probs, sigma, md, with_ref in cases:
        def new():
            return detect_cells(probs, min_distance=md, threshold=0.5, sigma=sigma)

        out = new()
        new_s = median_ms(new, repeats, warmup=0) / 1e3
        row = {"case": f"detect {name}", "min_distance": md, "cells": len(out), "reference s": "n/a",
               "new s": new_s, "ratio": "n/a"}
        if with_ref:
            ref_s, ref = _once(lambda: ref_detect_cells(probs, min_distance=md, threshold=0.5, sigma=sigma))
            assert np.array_equal(ref, out), name
            row.update({"reference s": ref_s, "ratio": ref_s / new_s})
        rows.append(row)
    return rows


def matching_rows(repeats: int) -> list[dict]:
    """Flat-map prediction sets (3-px grid of equal confidence) against 300 uniform GT, cut-off 15 px."""
    rng = np.random.default_rng(0)
    rows = []
    for n in (448, 1024):
        det = detect_cells(flat_map(n, n), min_distance=3, threshold=0.5, sigma=0.0)
        pred = det[:, [0, 1, 3]]
        gt = rng.uniform(0, n, (300, 2))
        new_s = median_ms(lambda: _match_one(pred, gt, 15.0), repeats, warmup=1) / 1e3
        ref_s, ref = _once(lambda: ref_match_one(pred, gt, 15.0))
        assert ref == _match_one(pred, gt, 15.0)
        rows.append({"case": f"match flat {n}² vs 300 GT", "min_distance": 3, "cells": len(pred),
                     "reference s": ref_s, "new s": new_s, "ratio": ref_s / new_s})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5, help="runs of the new code per row (median kept)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"CPU, {args.threads} torch thread(s); reference timed once, new code median of {args.repeats}; "
          f"ratio = reference / new")
    print_table(detection_rows(args.repeats) + matching_rows(args.repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
