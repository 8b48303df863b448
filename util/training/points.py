"""The OCELOT 2023 "Multiple points" JSON of predictions and ground truth."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from util.training.checkpoints import _atomic_write_text


def write_points_json(path: Path, points: Sequence[np.ndarray], ids: Sequence[str], mpps: Sequence[float]) -> None:
    """Points in the OCELOT 2023 challenge format (what the official evaluation reads)::

        {"type": "Multiple points",
         "points": [{"name": "image_0", "point": [x, y, class], "probability": p}, ...],
         "version": {"major": 1, "minor": 0},
         "images": [{"name": "image_0", "id": "<sample id>", "mpp": 0.2}, ...]}

    ``name`` is ``image_<index>`` in the order of the split's sorted ids; x, y are integer pixel coordinates
    (column, row) of the cell patch; class 1 = BC, 2 = TC; ``probability`` is the detection confidence (1.0 for
    ground truth). ``images`` (not part of the challenge file; ignored by its evaluation) maps names to ids.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    pts = []
    for k, arr in enumerate(points):
        arr = np.asarray(arr, dtype=np.float64).reshape(-1, arr.shape[1] if np.ndim(arr) == 2 else 3)
        for row in arr:
            prob = float(row[3]) if arr.shape[1] > 3 else 1.0
            pts.append({"name": f"image_{k}", "point": [int(round(row[0])), int(round(row[1])), int(row[2])],
                        "probability": round(prob, 6)})
    doc = {"type": "Multiple points", "points": pts, "version": {"major": 1, "minor": 0},
           "images": [{"name": f"image_{k}", "id": i, "mpp": m} for k, (i, m) in enumerate(zip(ids, mpps))]}
    _atomic_write_text(path, json.dumps(doc))



def read_points_json(path: str | Path) -> tuple[list[np.ndarray], list[str]]:
    """Inverse of :func:`write_points_json`: per-image arrays N×4 (x, y, class, probability) and ids."""
    doc = json.loads(Path(path).read_text())
    if not isinstance(doc, dict) or "points" not in doc:
        raise ValueError(f"{path}: not an OCELOT points file (expected an object with 'points')")
    images = doc.get("images") or []
    n = max([len(images)] + [int(p["name"].split("_")[-1]) + 1 for p in doc["points"]])
    per: list[list] = [[] for _ in range(n)]
    for p in doc["points"]:
        k = int(p["name"].split("_")[-1])
        per[k].append([*p["point"][:3], p.get("probability", 1.0)])
    return [np.array(v, dtype=np.float64).reshape(-1, 4) for v in per], [im.get("id") for im in images]
