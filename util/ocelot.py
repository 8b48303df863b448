"""The OCELOT 2023 on-disk format: read, validate, points → masks, download + verify.

Layout (see ``DESIGN.md``)::

    <root>/images/{train,val,test}/{cell,tissue}/<id>.jpg
    <root>/annotations/{train,val,test}/cell/<id>.csv      rows "x,y,class", no header; may be empty
    <root>/annotations/{train,val,test}/tissue/<id>.png    1 background, 2 cancer, 255 unknown
    <root>/metadata.json                                   {"sample_pairs": {<id>: {...}}}

Nothing here assumes a patch size or a resolution: sizes come from the images, the resolution (µm/px) of a
cell patch from ``metadata.json`` (``cell.resized_mpp_x/y`` as in OCELOT, else a per-sample ``mpp``).
Tissue patches are optional (the shipped ``data/brca_m2c`` has none).

CLI::

    python -m util.ocelot validate ROOT [--no-decode]   # every problem at once, exit code 1 when there are any
    python -m util.ocelot download DEST [--url URL] [--sha256 HEX] [--size BYTES]
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import http.client
import json
import math
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

SPLITS: tuple[str, ...] = ("train", "val", "test")
CELL_CLASSES: dict[int, str] = {1: "BC", 2: "TC"}
TISSUE_LABELS: tuple[int, ...] = (1, 2, 255)
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png")
#: Public OCELOT 2023 archive (Zenodo record 8417503), CC BY-NC-SA 4.0.
OCELOT_URL = "https://zenodo.org/records/8417503/files/ocelot2023_v1.0.1.zip?download=1"


class OcelotFormatError(ValueError):
    """A file does not follow the OCELOT layout; the message names the file (and line) and what was expected."""


class DownloadError(RuntimeError):
    """Download, verification or extraction of an archive failed; nothing half-written is left in place."""


# ----------------------------------------------------------------------------------------------- reading
def _image_dir(root: str | Path, split: str, kind: str = "cell") -> Path:
    return Path(root) / "images" / split / kind


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


def list_ids(root: str | Path, split: str) -> list[str]:
    """Sorted sample ids of a split (the stems of ``images/<split>/cell/*.jpg``)."""
    _check_split(split)
    d = _image_dir(root, split)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: no such folder (expected OCELOT layout images/{split}/cell/<id>.jpg "
                                f"under {root})")
    ids = {p.stem for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")}
    return sorted(ids)


def find_image(root: str | Path, split: str, sample_id: str, kind: str = "cell") -> Path | None:
    """Path of a sample's image (any of ``IMAGE_SUFFIXES``), or None when there is none."""
    d = _image_dir(root, split, kind)
    for suf in IMAGE_SUFFIXES:
        p = d / f"{sample_id}{suf}"
        if p.is_file():
            return p
    return None


def cell_csv_path(root: str | Path, split: str, sample_id: str) -> Path:
    return Path(root) / "annotations" / split / "cell" / f"{sample_id}.csv"


def tissue_png_path(root: str | Path, split: str, sample_id: str) -> Path:
    return Path(root) / "annotations" / split / "tissue" / f"{sample_id}.png"


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


class Metadata(dict):
    """The parsed ``metadata.json`` (a plain dict) that remembers its file, so errors can name it."""

    path: str = "metadata.json"


#: What each per-sample ``metadata.json`` value the code reads must be (dotted key → kind, see ``_EXPECTED``).
METADATA_FIELDS: dict[str, str] = {
    "cell.resized_mpp_x": "mpp", "cell.resized_mpp_y": "mpp", "mpp": "mpp", "mpp_x": "mpp", "mpp_y": "mpp",
    "tissue.resized_mpp_x": "mpp", "tissue.resized_mpp_y": "mpp",
    "patch_x_offset": "fraction", "patch_y_offset": "fraction",
}
_EXPECTED = {"mpp": "a positive finite number (µm/px)",
             "fraction": "a number in [0, 1] (fraction of the tissue patch)"}
#: Resolutions that must agree (relative difference at most ``MPP_TOLERANCE``): x vs y (the pipeline assumes
#: square pixels and uses their mean), and the two ways of giving a cell patch's resolution.
MPP_PAIRS: tuple[tuple[str, str], ...] = (
    ("cell.resized_mpp_x", "cell.resized_mpp_y"), ("mpp_x", "mpp_y"),
    ("tissue.resized_mpp_x", "tissue.resized_mpp_y"), ("cell.resized_mpp_x", "mpp"),
)
MPP_TOLERANCE = 0.02
_ABSENT = object()


def read_metadata(root: str | Path) -> Metadata:
    """``metadata.json`` as a dict (``{"sample_pairs": {id: {...}}, ...}``); a clear error when missing/invalid."""
    path = Path(root) / "metadata.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: metadata.json not found (it holds each sample's µm/px)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise OcelotFormatError(f"{path}: not UTF-8 text ({e})") from None
    except json.JSONDecodeError as e:
        raise OcelotFormatError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("sample_pairs"), dict):
        raise OcelotFormatError(f"{path}: expected an object with a 'sample_pairs' mapping of sample id → entry")
    meta = Metadata(raw)
    meta.path = str(path)
    return meta


def _show(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def _entry(meta: dict[str, Any], sample_id: str) -> tuple[dict[str, Any] | None, str | None]:
    """A sample's metadata entry, or None and what is wrong (without the file name)."""
    pairs = meta.get("sample_pairs") if isinstance(meta, dict) else None
    if not isinstance(pairs, dict):
        return None, "expected an object with a 'sample_pairs' mapping of sample id → entry"
    if sample_id not in pairs:
        return None, f"no entry for sample {sample_id!r}"
    entry = pairs[sample_id]
    if not isinstance(entry, dict):
        return None, (f"sample {sample_id!r}: entry is {_show(entry)}, expected an object with "
                      f"cell.resized_mpp_x/y or mpp")
    return entry, None


def _entry_value(entry: dict[str, Any], key: str, kind: str) -> tuple[Any, str | None]:
    """``entry[<dotted key>]`` (``_ABSENT`` when missing; a null object counts as missing) and what is wrong
    with it for ``kind`` (None when fine)."""
    obj: Any = entry
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        obj = obj.get(part)
        if obj is None:
            return _ABSENT, None
        if not isinstance(obj, dict):
            return _ABSENT, f"{'.'.join(parts[:i + 1])} is {_show(obj)}, expected an object"
    if parts[-1] not in obj:
        return _ABSENT, None
    v = obj[parts[-1]]
    expected = _EXPECTED[kind]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return v, f"{key} = {_show(v)}, expected {expected}"
    ok = math.isfinite(v) and (v > 0 if kind == "mpp" else 0 <= v <= 1)
    return v, None if ok else f"{key} = {v!r}, expected {expected}"


def _number(meta: dict[str, Any], sample_id: str, key: str) -> float | None:
    """A checked per-sample value of :data:`METADATA_FIELDS` (None when absent); :class:`OcelotFormatError`
    naming the file, sample, key and value otherwise."""
    file = getattr(meta, "path", "metadata.json")
    entry, why = _entry(meta, sample_id)
    if entry is None:
        raise OcelotFormatError(f"{file}: {why}")
    v, why = _entry_value(entry, key, METADATA_FIELDS[key])
    if why:
        raise OcelotFormatError(f"{file}: sample {sample_id!r}: {why}")
    return None if v is _ABSENT else float(v)


def sample_mpp(meta: dict[str, Any], sample_id: str) -> float:
    """µm/px of a sample's cell patch: ``cell.resized_mpp_x/y`` (OCELOT) or ``mpp``; mean of x and y.

    Raises :class:`OcelotFormatError` naming the file, sample, key and value when the entry is not an object or
    a value is not a positive finite number.
    """
    x = _number(meta, sample_id, "cell.resized_mpp_x")
    if x is not None:
        y = _number(meta, sample_id, "cell.resized_mpp_y")
        return (x + (x if y is None else y)) / 2
    m = _number(meta, sample_id, "mpp")
    if m is None:
        file = getattr(meta, "path", "metadata.json")
        raise OcelotFormatError(f"{file}: sample {sample_id!r} has neither cell.resized_mpp_x nor mpp "
                                f"(the µm/px of its cell patch)")
    return m


def tissue_mpp(meta: dict[str, Any], sample_id: str) -> float | None:
    """µm/px of the tissue patch (``tissue.resized_mpp_x/y``), or None when the metadata has none."""
    x = _number(meta, sample_id, "tissue.resized_mpp_x")
    if x is None:
        return None
    y = _number(meta, sample_id, "tissue.resized_mpp_y")
    return (x + (x if y is None else y)) / 2


def cell_box_in_tissue(meta: dict[str, Any], sample_id: str, cell_shape: tuple[int, int],
                       tissue_shape: tuple[int, int]) -> np.ndarray:
    """The cell patch's box (x0, y0, x1, y1) in tissue-patch pixels (float32).

    OCELOT stores the cell patch *centre* as a fraction of the tissue patch (``patch_x_offset``,
    ``patch_y_offset``); its extent follows from the two resolutions.
    """
    t_mpp = tissue_mpp(meta, sample_id)
    ox, oy = _number(meta, sample_id, "patch_x_offset"), _number(meta, sample_id, "patch_y_offset")
    if t_mpp is None or ox is None or oy is None:
        file = getattr(meta, "path", "metadata.json")
        raise OcelotFormatError(f"{file}: sample {sample_id!r} lacks tissue.resized_mpp_x or "
                                f"patch_x_offset/patch_y_offset needed to place the cell patch in the tissue patch")
    scale = sample_mpp(meta, sample_id) / t_mpp
    cx, cy = ox * tissue_shape[1], oy * tissue_shape[0]
    w, h = cell_shape[1] * scale, cell_shape[0] * scale
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dtype=np.float32)


def metadata_problems(meta: dict[str, Any], sample_id: str, split: str | None = None,
                      tissue: bool = False) -> list[str]:
    """Everything wrong with one sample's metadata entry, one message per value (without the file name).

    Checked: the entry is an object; ``subset`` (when given) names ``split``; every value of
    :data:`METADATA_FIELDS` that is present has its type and range; the resolution pairs of :data:`MPP_PAIRS`
    agree within :data:`MPP_TOLERANCE`; a cell-patch resolution exists; with ``tissue`` (the sample has a tissue
    patch) ``tissue.resized_mpp_x`` and ``patch_x_offset``/``patch_y_offset`` exist.
    """
    entry, why = _entry(meta, sample_id)
    if entry is None:
        return [why or ""]
    out: list[str] = []
    sub = entry.get("subset")
    if sub is not None and (not isinstance(sub, str) or sub not in SPLITS):
        out.append(f"sample {sample_id!r}: subset = {_show(sub)}, expected one of {list(SPLITS)}")
    elif sub is not None and split is not None and sub != split:
        out.append(f"sample {sample_id!r} is in folder {split!r} but metadata subset is {sub!r}")
    vals: dict[str, float] = {}
    bad: set[str] = set()
    for key, kind in METADATA_FIELDS.items():
        v, why = _entry_value(entry, key, kind)
        if why:
            bad.add(key)
            msg = f"sample {sample_id!r}: {why}"
            if msg not in out:  # a parent that is not an object is named once
                out.append(msg)
        elif v is not _ABSENT:
            vals[key] = float(v)
    for a, b in MPP_PAIRS:
        if a in vals and b in vals and abs(vals[a] - vals[b]) > MPP_TOLERANCE * max(vals[a], vals[b]):
            out.append(f"sample {sample_id!r}: {a} = {vals[a]!r} and {b} = {vals[b]!r} differ by more than "
                       f"{MPP_TOLERANCE:.0%}, expected the same resolution")
    if not {"cell.resized_mpp_x", "mpp"} & (set(vals) | bad):
        out.append(f"sample {sample_id!r} has neither cell.resized_mpp_x nor mpp (the µm/px of its cell patch)")
    if tissue:
        for key in ("tissue.resized_mpp_x", "patch_x_offset", "patch_y_offset"):
            if key not in vals and key not in bad:
                out.append(f"sample {sample_id!r} has a tissue patch but no {key} (needed to place the cell "
                           f"patch in it)")
    return out


# ----------------------------------------------------------------------------------------------- masks
def radius_px(radius_um: float, mpp: float) -> float:
    """A radius in µm as pixels at ``mpp`` µm/px."""
    if not (radius_um > 0 and mpp > 0):
        raise ValueError(f"radius_um ({radius_um}) and mpp ({mpp}) must be positive")
    return radius_um / mpp


def points_to_mask(points: np.ndarray, shape: tuple[int, int], radius_um: float, mpp: float) -> np.ndarray:
    """Per-class disk mask (int64 H×W: 0 no cell, else the class) from N×3 (x, y, class) points.

    A disk holds the pixels whose centre lies within ``radius_um / mpp`` pixels of the point. Overlaps are
    resolved deterministically: classes are drawn in ascending order, so a higher class (tumour, 2) wins over a
    lower one (background cell, 1); within a class the result does not depend on the order of the points.
    Points outside the image still paint the part of their disk that falls inside.
    """
    h, w = int(shape[0]), int(shape[1])
    mask = np.zeros((h, w), dtype=np.int64)
    pts = np.asarray(points).reshape(-1, 3)
    if len(pts) == 0:
        return mask
    r = radius_px(radius_um, mpp)
    R = int(math.ceil(r))
    dy, dx = np.mgrid[-R:R + 1, -R:R + 1]
    keep = dx * dx + dy * dy <= r * r + 1e-9
    dx, dy = dx[keep], dy[keep]
    xy = np.rint(pts[:, :2].astype(np.float64)).astype(np.int64)
    cls = pts[:, 2].astype(np.int64)
    for c in np.unique(cls):
        sel = xy[cls == c]
        xs = (sel[:, 0:1] + dx[None]).ravel()
        ys = (sel[:, 1:2] + dy[None]).ravel()
        inside = (xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)
        mask[ys[inside], xs[inside]] = c
    return mask


# ----------------------------------------------------------------------------------------------- validation
@dataclass
class ValidationReport:
    """Result of :func:`validate_dataset`: every problem found plus a summary of what is there."""

    root: str
    problems: list[Problem] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def kinds(self) -> collections.Counter:
        return collections.Counter(p.kind for p in self.problems)

    def format(self, max_problems: int | None = 200) -> str:
        lines = [f"OCELOT data set {self.root}"]
        for split, s in self.summary.get("splits", {}).items():
            lines.append(f"  {split}: {s['patches']} patches, sizes {s['sizes']}, cells BC={s['cells'][1]} "
                         f"TC={s['cells'][2]}, tissue patches {s['tissue_patches']}")
        if "mpp" in self.summary:
            lines.append(f"  mpp (cell patches): {self.summary['mpp']}")
        if self.ok:
            lines.append("  no problems")
        else:
            lines.append(f"  {len(self.problems)} problem(s): "
                         + ", ".join(f"{k}={n}" for k, n in sorted(self.kinds().items())))
            shown = self.problems if max_problems is None else self.problems[:max_problems]
            lines += [f"    {p}" for p in shown]
            if len(shown) < len(self.problems):
                lines.append(f"    ... {len(self.problems) - len(shown)} more")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def _image_problems(path: Path, decode: bool = True) -> tuple[tuple[int, int] | None, list[Problem]]:
    """An image's (H, W) and its problems (unreadable, truncated).

    JPEG and PNG files are checked for their start and end markers (a truncated file lacks the end); the header
    gives the size. With ``decode`` the pixels are decoded too, which also finds damage inside the file.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            f.seek(max(0, path.stat().st_size - 64))
            tail = f.read()
    except OSError as e:
        return None, [Problem("unreadable_image", str(path), f"cannot read file ({e})")]
    suffix = path.suffix.lower()
    n = path.stat().st_size
    if suffix in (".jpg", ".jpeg"):
        if head[:2] != b"\xff\xd8":
            return None, [Problem("unreadable_image", str(path), "not a JPEG file (no SOI marker)")]
        if b"\xff\xd9" not in tail:
            return None, [Problem("truncated_image", str(path),
                                  f"JPEG has no end-of-image marker: file truncated ({n} bytes)")]
    elif suffix == ".png":
        if head != _PNG_SIGNATURE:
            return None, [Problem("unreadable_image", str(path), "not a PNG file (no PNG signature)")]
        if not tail.endswith(_PNG_END):
            return None, [Problem("truncated_image", str(path), f"PNG has no IEND chunk: file truncated ({n} bytes)")]
    try:
        with Image.open(path) as im:
            if decode:
                im.load()
            size = (im.height, im.width)
    except Exception as e:
        kind = "truncated_image" if "truncat" in str(e).lower() else "unreadable_image"
        return None, [Problem(kind, str(path), f"cannot decode image ({e})")]
    return size, []


def _mode_size(sizes: list[tuple[int, int]]) -> tuple[int, int] | None:
    if not sizes:
        return None
    counts = collections.Counter(sizes)
    best = max(counts.values())
    return min(s for s, n in counts.items() if n == best)


def _files_by_id(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """Sample id → file for the files of ``folder`` with one of ``suffixes`` (hidden files skipped, as in
    :func:`list_ids`); empty when the folder does not exist."""
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir())
            if p.suffix.lower() in suffixes and not p.name.startswith(".") and p.is_file()}


def validate_dataset(root: str | Path, splits: tuple[str, ...] = SPLITS, required: tuple[str, ...] = (),
                     decode: bool = True) -> ValidationReport:
    """Check an OCELOT-layout folder and return **every** problem at once plus a summary.

    Checked: the folder layout and ``metadata.json`` (every sample's entry value by value, see
    :func:`metadata_problems`); every image has its annotation partner and vice versa (cell CSV; tissue image ⇔
    tissue PNG), so an orphan CSV is reported; images are not truncated (JPEG/PNG end markers) and, with
    ``decode``, decode fully; CSV lines have 3 integer fields; points are non-negative, inside the image and of
    class 1 or 2; image sizes agree with the majority size of their kind (the expected size comes from the data,
    never a fixed 1024); tissue masks match their tissue image's size and (with ``decode``) only hold 1, 2, 255.
    A split folder without images is reported; absent splits only when they are ``required`` or no split exists.
    """
    root = Path(root)
    report = ValidationReport(root=str(root))
    P = report.problems
    if not root.is_dir():
        P.append(Problem("missing_root", str(root), "folder does not exist"))
        return report
    meta: dict[str, Any] | None
    try:
        meta = read_metadata(root)
    except (FileNotFoundError, OcelotFormatError) as e:
        P.append(Problem("metadata", str(root / "metadata.json"), str(e)))
        meta = None

    present = [s for s in splits if _image_dir(root, s).is_dir() or (root / "annotations" / s / "cell").is_dir()]
    if not present:
        P.append(Problem("layout", str(root), f"no split folders images/<split>/cell for splits {splits}"))
    for split in required:
        if split not in present:
            P.append(Problem("layout", str(_image_dir(root, split)),
                             f"split {split!r} is needed but its folder does not exist"))
    sizes: dict[str, list[tuple[Path, tuple[int, int]]]] = {"cell": [], "tissue": []}
    cells_by_file: dict[Path, tuple[np.ndarray, str]] = {}
    summary_splits: dict[str, Any] = {}
    mpps: list[float] = []
    for split in present:
        img_dir, ann_dir = _image_dir(root, split), root / "annotations" / split / "cell"
        img_ids = _files_by_id(img_dir, IMAGE_SUFFIXES)
        csv_ids = _files_by_id(ann_dir, (".csv",))
        if not img_ids:
            P.append(Problem("empty_split", str(img_dir), f"split {split!r} has no cell images "
                             f"({', '.join('*' + x for x in IMAGE_SUFFIXES)})"))
        for sid in sorted(set(img_ids) - set(csv_ids)):
            P.append(Problem("missing_partner", str(img_ids[sid]),
                             f"no cell annotation {ann_dir / (sid + '.csv')}"))
        for sid in sorted(set(csv_ids) - set(img_ids)):
            P.append(Problem("missing_partner", str(csv_ids[sid]),
                             f"no cell image {img_dir / (sid + '.jpg')}"))
        t_img_dir, t_ann_dir = _image_dir(root, split, "tissue"), root / "annotations" / split / "tissue"
        t_img = _files_by_id(t_img_dir, IMAGE_SUFFIXES)
        t_ann = _files_by_id(t_ann_dir, (".png",))
        for sid in sorted(set(t_img) - set(t_ann)):
            P.append(Problem("missing_partner", str(t_img[sid]), f"no tissue annotation {t_ann_dir / (sid + '.png')}"))
        for sid in sorted(set(t_ann) - set(t_img)):
            P.append(Problem("missing_partner", str(t_ann[sid]), f"no tissue image {t_img_dir / (sid + '.jpg')}"))
        if t_img:
            for sid in sorted(set(img_ids) - set(t_img)):
                P.append(Problem("missing_partner", str(img_ids[sid]),
                                 f"no tissue image {t_img_dir / (sid + '.jpg')} (other samples of {split} have one)"))
        counts = {1: 0, 2: 0}
        split_sizes: collections.Counter = collections.Counter()
        for sid, ipath in img_ids.items():
            shape, probs = _image_problems(ipath, decode)
            P.extend(probs)
            if shape is not None:
                sizes["cell"].append((ipath, shape))
                split_sizes[f"{shape[1]}x{shape[0]}"] += 1
            if sid in csv_ids:
                pts, cprobs = _parse_cells(csv_ids[sid], shape)
                P.extend(cprobs)
                cells_by_file[csv_ids[sid]] = (pts, sid)
                for c in (1, 2):
                    counts[c] += int((pts[:, 2] == c).sum())
            if meta is not None:
                mprobs = metadata_problems(meta, sid, split, tissue=sid in t_img)
                P.extend(Problem("metadata", str(root / "metadata.json"), f"{m} ({ipath.name})") for m in mprobs)
                if not mprobs:
                    mpps.append(sample_mpp(meta, sid))
        for sid, tpath in t_img.items():
            tshape, probs = _image_problems(tpath, decode)
            P.extend(probs)
            if tshape is not None:
                sizes["tissue"].append((tpath, tshape))
            if sid in t_ann:
                mshape, mprobs = _image_problems(t_ann[sid], decode)
                P.extend(mprobs)
                if mshape is not None:
                    if tshape is not None and mshape != tshape:
                        P.append(Problem("wrong_size", str(t_ann[sid]),
                                         f"tissue mask is {mshape[1]}×{mshape[0]}, its image {tshape[1]}×{tshape[0]}"))
                    if not decode:
                        continue
                    vals = set(np.unique(read_tissue_mask(t_ann[sid])).tolist())
                    bad = sorted(vals - set(TISSUE_LABELS))
                    if bad:
                        P.append(Problem("unknown_tissue_label", str(t_ann[sid]),
                                         f"values {bad[:10]} not in {list(TISSUE_LABELS)}"))
        summary_splits[split] = {"patches": len(img_ids), "sizes": dict(split_sizes), "cells": counts,
                                 "tissue_patches": len(t_img)}
    for kind, lst in sizes.items():
        expected = _mode_size([s for _, s in lst])
        for path, s in lst:
            if s != expected:
                P.append(Problem("wrong_size", str(path), f"{kind} image is {s[1]}×{s[0]}, expected "
                                 f"{expected[1]}×{expected[0]} (the size of most {kind} images)"))
        if expected is not None:
            report.summary[f"{kind}_size"] = [expected[1], expected[0]]
    report.summary["splits"] = summary_splits
    if mpps:
        report.summary["mpp"] = {"min": round(min(mpps), 4), "max": round(max(mpps), 4)}
    order = {k: i for i, k in enumerate(["missing_root", "layout", "metadata"])}
    P.sort(key=lambda p: (order.get(p.kind, 9), p.path, p.line or 0))
    return report


def check_dataset_for_training(root: str | Path, splits: tuple[str, ...] = SPLITS, decode: bool = False,
                               max_listed: int = 200) -> None:
    """Raise one :class:`OcelotFormatError` listing every problem of the ``splits`` a run uses; None when clean.

    Runs :func:`validate_dataset` with every split of ``splits`` required (absent or empty splits are errors).
    By default images are checked by their headers and end markers, not decoded (a damaged middle of a file is
    then caught when the loader reads it, naming the file); ``decode=True`` decodes everything. The error lists
    up to ``max_listed`` problems (file, key, value, expected) and carries them all in ``.problems``.
    A missing ``root`` raises ``FileNotFoundError`` (as :class:`util.dataloader.OcelotDataset` does).
    """
    if not Path(root).is_dir():
        raise FileNotFoundError(f"data root {root} does not exist (create the synthetic default set with "
                                f"`python -m util.synthetic {root}`, or point data.root at an OCELOT-layout folder)")
    rep = validate_dataset(root, tuple(splits), required=tuple(splits), decode=decode)
    if rep.ok:
        return
    n = len(rep.problems)
    kinds = ", ".join(f"{k}={c}" for k, c in sorted(rep.kinds().items()))
    lines = [f"{root}: the data set has {n} problem(s) ({kinds}); fix them before training "
             f"(`python -m util.ocelot validate {root}` lists them again):"]
    lines += [f"  {p}" for p in rep.problems[:max_listed]]
    if n > max_listed:
        lines.append(f"  ... and {n - max_listed} more")
    err = OcelotFormatError("\n".join(lines))
    err.problems = rep.problems  # type: ignore[attr-defined]
    raise err


# ----------------------------------------------------------------------------------------------- download
def _file_digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fetch_with_resume(url: str, part: Path, *, timeout: float, max_retries: int, chunk: int,
                       progress: Callable[[int, int | None], None] | None) -> int | None:
    """Download ``url`` into ``part``, resuming with HTTP Range after interruptions. Returns the total size."""
    total: int | None = None
    failures = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        if total is not None and have >= total:
            return total
        req = urllib.request.Request(url, headers={"User-Agent": "equivariant-ocelot/0.1"})
        if have:
            req.add_header("Range", f"bytes={have}-")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status = resp.status
                if status == 206:
                    cr = resp.headers.get("Content-Range", "")
                    try:
                        start = int(cr.split()[1].split("-")[0])
                        tot = cr.split("/")[-1]
                        total = int(tot) if tot != "*" else total
                    except (IndexError, ValueError):
                        raise DownloadError(f"{url}: bad Content-Range header {cr!r}") from None
                    if start != have:
                        raise DownloadError(f"{url}: asked to resume at byte {have}, server sent from {start}")
                    mode = "ab"
                else:  # 200: the server ignored Range (or nothing was there yet): start again
                    cl = resp.headers.get("Content-Length")
                    total = int(cl) if cl is not None else None
                    mode = "wb"
                    have = 0
                with open(part, mode) as f:
                    while True:
                        buf = resp.read(chunk)
                        if not buf:
                            break
                        f.write(buf)
                        have += len(buf)
                        if progress:
                            progress(have, total)
            if total is None or have >= total:
                return total if total is not None else have
            raise http.client.IncompleteRead(b"", total - have)  # connection closed early
        except urllib.error.HTTPError as e:
            if e.code == 416 and have and total is None:
                return have  # the file was already complete
            raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
        except (http.client.IncompleteRead, ConnectionError, TimeoutError, urllib.error.URLError,
                http.client.HTTPException, OSError) as e:
            if isinstance(e, DownloadError):
                raise
            failures += 1
            if failures > max_retries:
                raise DownloadError(f"{url}: transfer failed after {max_retries} retries "
                                    f"({type(e).__name__}: {e}); partial file kept at {part} for a later resume") \
                    from None
            time.sleep(min(2.0 ** (failures - 1) * 0.1, 5.0))


def _dataset_root_in(folder: Path) -> Path:
    """The folder holding ``metadata.json`` and ``images/`` inside an extracted archive."""
    cands = sorted({p.parent for p in folder.rglob("metadata.json") if (p.parent / "images").is_dir()},
                   key=lambda p: len(p.parts))
    if not cands:
        raise DownloadError(f"the archive holds no folder with metadata.json and images/ (OCELOT layout)")
    return cands[0]


def download_ocelot(dest: str | Path, url: str = OCELOT_URL, sha256: str | None = None, size: int | None = None,
                    md5: str | None = None, timeout: float = 60.0, max_retries: int = 5, chunk: int = 1 << 20,
                    keep_archive: bool = False, progress: Callable[[int, int | None], None] | None = None
                    ) -> ValidationReport:
    """Download, verify and extract the OCELOT 2023 archive into ``dest``; return its validation report.

    * The archive is fetched to ``<dest>.zip.part`` next to ``dest``; an interrupted transfer is resumed with an
      HTTP ``Range`` request (also on a later call).
    * Its size (``size``, else the server's) and checksum (``sha256`` and/or ``md5`` when given) are checked and
      every zip member's CRC is tested: a corrupt archive raises :class:`DownloadError` and is deleted.
    * It is extracted into a temporary folder next to ``dest`` which is renamed to ``dest`` only when complete, so
      ``dest`` either does not exist or holds the whole data set.
    * ``validate_dataset(dest)`` runs at the end (its report is returned and printed when it has problems).
    """
    dest = Path(dest).resolve()
    if dest.exists() and any(dest.iterdir()):
        raise DownloadError(f"{dest} exists and is not empty; remove it or choose another destination")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.parent / f"{dest.name}.zip.part"
    archive = dest.parent / f"{dest.name}.zip"
    if not archive.exists():
        total = _fetch_with_resume(url, part, timeout=timeout, max_retries=max_retries, chunk=chunk,
                                   progress=progress)
        got = part.stat().st_size
        expected = size if size is not None else total
        if expected is not None and got != expected:
            part.unlink(missing_ok=True)
            raise DownloadError(f"{url}: downloaded {got} bytes but expected {expected}; the partial file was "
                                f"removed, run again to restart")
        os.replace(part, archive)
    for algo, want in (("sha256", sha256), ("md5", md5)):
        if want:
            have = _file_digest(archive, algo)
            if have.lower() != want.lower():
                archive.unlink(missing_ok=True)
                raise DownloadError(f"{archive.name}: {algo} mismatch (expected {want}, got {have}): the archive is "
                                    f"corrupt or not the expected file; it was deleted")
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.extract-", dir=dest.parent))
    try:
        try:
            with zipfile.ZipFile(archive) as zf:
                bad = zf.testzip()
                if bad is not None:
                    raise DownloadError(f"{archive.name}: corrupt archive (CRC error in member {bad!r}); deleted")
                for name in zf.namelist():
                    target = (tmp / name).resolve()
                    if not str(target).startswith(str(tmp.resolve()) + os.sep) and target != tmp.resolve():
                        raise DownloadError(f"{archive.name}: member {name!r} would extract outside the folder")
                zf.extractall(tmp)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as e:
            raise DownloadError(f"{archive.name}: corrupt archive, cannot be read as a zip ({e}); deleted") from None
        src = _dataset_root_in(tmp)
        if dest.exists():
            dest.rmdir()  # empty (checked above)
        os.replace(src, dest)
    except DownloadError:
        archive.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not keep_archive:
        archive.unlink(missing_ok=True)
    report = validate_dataset(dest)
    if not report.ok:
        warnings.warn(f"downloaded data set has problems:\n{report.format(50)}", stacklevel=2)
    return report


# ----------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m util.ocelot", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate", help="check an OCELOT-layout folder; exit code 1 when it has problems")
    v.add_argument("root")
    v.add_argument("--max-problems", type=int, default=200, help="how many problems to print (default 200)")
    v.add_argument("--no-decode", action="store_true",
                   help="check images by header and end marker only, without decoding pixels (faster)")
    d = sub.add_parser("download", help="download, verify and extract the OCELOT 2023 archive")
    d.add_argument("dest")
    d.add_argument("--url", default=OCELOT_URL)
    d.add_argument("--sha256", default=None)
    d.add_argument("--md5", default=None)
    d.add_argument("--size", type=int, default=None, help="expected archive size in bytes")
    d.add_argument("--keep-archive", action="store_true")
    args = ap.parse_args(argv)
    if args.cmd == "validate":
        rep = validate_dataset(args.root, decode=not args.no_decode)
        print(rep.format(args.max_problems))
        return 0 if rep.ok else 1
    last = [0.0]

    def progress(have: int, total: int | None) -> None:
        now = time.monotonic()
        if now - last[0] > 2 or (total and have >= total):
            last[0] = now
            pct = f" ({100 * have / total:.1f}%)" if total else ""
            print(f"\r  {have / 1e6:,.1f} MB{pct}", end="", file=sys.stderr, flush=True)

    print(f"downloading {args.url} → {args.dest} (OCELOT 2023, CC BY-NC-SA 4.0)", file=sys.stderr)
    try:
        rep = download_ocelot(args.dest, url=args.url, sha256=args.sha256, md5=args.md5, size=args.size,
                              keep_archive=args.keep_archive, progress=progress)
    except DownloadError as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 1
    print(file=sys.stderr)
    print(rep.format(50))
    return 0 if rep.ok else 1


if __name__ == "__main__":
    sys.exit(main())
