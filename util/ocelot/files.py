"""Reading and writing the files: cell CSVs, images, tissue masks, the challenge's points JSON."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from util.files import atomic_write
from util.ocelot.layout import CELL_CLASSES, OcelotFormatError


@dataclass
class Problem:
    """One thing wrong with a data set: a ``kind`` (short tag), the file, the line (CSV) and a message."""

    kind: str
    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else self.path
        return f"[{self.kind}] {where}: {self.message}"



def _parse_cells(path: Path, shape: tuple[int, int] | None = None) -> tuple[np.ndarray, list[Problem]]:
    """Parse a cell CSV, collecting every problem (with line numbers) instead of stopping at the first."""
    problems: list[Problem] = []
    rows: list[tuple[int, int, int]] = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        return np.zeros((0, 3), np.int64), [Problem("csv_unreadable", str(path), f"not UTF-8 text ({e})")]
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 3:
            problems.append(Problem("csv_columns", str(path),
                                    f"expected 3 comma-separated values 'x,y,class', got {len(parts)}: {raw!r}",
                                    lineno))
            continue
        vals: list[int] = []
        bad = False
        for name, p in zip(("x", "y", "class"), parts):
            try:
                v = float(p)
            except ValueError:
                problems.append(Problem("csv_not_numeric", str(path),
                                        f"{name} value {p!r} is not a number (line {raw!r})", lineno))
                bad = True
                break
            if not math.isfinite(v) or v != int(v):
                problems.append(Problem("csv_not_integer", str(path),
                                        f"{name} value {p!r} is not an integer (line {raw!r})", lineno))
                bad = True
                break
            vals.append(int(v))
        if bad:
            continue
        x, y, c = vals
        if x < 0 or y < 0:
            problems.append(Problem("negative_coordinate", str(path), f"negative coordinate x={x}, y={y}", lineno))
            continue
        if shape is not None and (x >= shape[1] or y >= shape[0]):
            problems.append(Problem("point_outside_image", str(path),
                                    f"point x={x}, y={y} outside the {shape[1]}×{shape[0]} image", lineno))
            continue
        if c not in CELL_CLASSES:
            problems.append(Problem("unknown_class", str(path),
                                    f"class {c} is not one of {sorted(CELL_CLASSES)} (1 = BC, 2 = TC)", lineno))
            continue
        rows.append((x, y, c))
    arr = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
    return arr, problems



def read_cells_csv(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read an OCELOT cell CSV (``x,y,class`` rows, no header) as an int64 N×3 array; an empty file gives 0×3.

    With ``shape=(H, W)`` points outside the image are errors too. Raises :class:`OcelotFormatError` naming the
    file and line of the first problem.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: cell annotation CSV not found")
    arr, problems = _parse_cells(path, shape)
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise OcelotFormatError(f"{problems[0]}{more}")
    return arr



def write_cells_csv(path: str | Path, points: np.ndarray) -> None:
    """Write N×3 (x, y, class) integer points as an OCELOT cell CSV (empty file for no points)."""
    pts = np.asarray(points).reshape(-1, 3).astype(np.int64)
    Path(path).write_text("".join(f"{x},{y},{c}\n" for x, y, c in pts.tolist()), encoding="utf-8")



def read_image(path: str | Path) -> np.ndarray:
    """Read an RGB image as uint8 H×W×3; a truncated or unreadable file raises :class:`OcelotFormatError`."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.array(im.convert("RGB"))
    except FileNotFoundError:
        raise
    except Exception as e:  # PIL raises OSError/SyntaxError/ValueError for damaged files
        raise OcelotFormatError(f"{path}: unreadable or truncated image ({e})") from None
    return arr



def read_tissue_mask(path: str | Path) -> np.ndarray:
    """Read a tissue annotation PNG as uint8 H×W (1 background, 2 cancer, 255 unknown)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im)
    except FileNotFoundError:
        raise
    except Exception as e:
        raise OcelotFormatError(f"{path}: unreadable or truncated tissue mask ({e})") from None
    if arr.ndim == 3:
        arr = arr[..., 0]
    return arr.astype(np.uint8)


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
    atomic_write(path, json.dumps(doc))



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
