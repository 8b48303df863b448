"""The inputs of ``util.predict``: image files and folders, a unique output name each, and each image's µm/px.

µm/px of an image: ``--mpp`` wins; else ``metadata.json`` of an OCELOT-layout folder
(``<root>/images/<split>/cell/<id>``); else the file's own metadata (Aperio ``MPP =`` or OME ``PhysicalSizeX``
in a TIFF description, TIFF resolution tags in inch/cm, PNG/JPEG dpi) when it is a plausible microscope
resolution (:data:`PLAUSIBLE_MPP`); else :class:`PredictError`.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
from PIL import Image

from util.ocelot import OcelotFormatError, read_metadata, sample_mpp

if TYPE_CHECKING:
    from torch import Tensor

IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
#: µm/px read from an image's own metadata is used only inside this range (microscopy; not 72 dpi defaults).
PLAUSIBLE_MPP: tuple[float, float] = (0.05, 10.0)


class PredictError(ValueError):
    """A bad input (image, folder, run folder or setting); the message names it."""


@dataclass
class ImageResult:
    """What :func:`predict_images` gives for one input: the cells, or the reason it was skipped."""

    path: Path
    name: str = ""  #: output stem (the image's stem, made unique among the inputs)
    mpp: float | None = None
    cells: np.ndarray | None = None  #: N×4 (x, y, class, probability)
    probabilities: Tensor | None = None  #: (3, H, W), only with ``keep_probabilities``
    files: dict[str, Path] = field(default_factory=dict)  #: kind (csv, json, geojson, overlay) -> path
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


# ============================================================================================ inputs
def find_images(inputs: Iterable[str | Path]) -> list[ImageResult]:
    """One result per image in ``inputs`` (files, folders searched non-recursively, sorted); inputs that give no
    image (missing path, unsupported file, folder without images) become results with ``error`` set."""
    out: list[ImageResult] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            out.append(ImageResult(p))

    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES
                           and not q.name.startswith("."))
            if not found:
                out.append(ImageResult(p, error=f"{p}: folder has no images ({' '.join(IMAGE_SUFFIXES)})"))
            for q in found:
                add(q)
        elif p.is_file():
            if p.suffix.lower() in IMAGE_SUFFIXES:
                add(p)
            else:
                out.append(ImageResult(p, error=f"{p}: not an image file (expected {' '.join(IMAGE_SUFFIXES)})"))
        else:
            out.append(ImageResult(p, error=f"{p}: no such file or folder"))
    return out


def _unique_names(results: Sequence[ImageResult]) -> None:
    """Give each image an output stem; a stem seen before gets ``-2``, ``-3``, ..."""
    used: set[str] = set()
    for r in results:
        if not r.ok:
            continue
        stem, k = r.path.stem, 2
        name = stem
        while name in used:
            name, k = f"{stem}-{k}", k + 1
        used.add(name)
        r.name = name


# ========================================================================================= resolution
def _plausible(mpp: float) -> bool:
    return PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1]


def _pair_mpp(x: float, y: float) -> float | None:
    """The mean of x and y µm/px, or None when they differ by more than 2 % (anisotropic: ambiguous)."""
    if not (x > 0 and y > 0 and math.isfinite(x) and math.isfinite(y)):
        return None
    if abs(x - y) > 0.02 * max(x, y):
        return None
    return (x + y) / 2


_UNIT_UM = {"µm": 1.0, "um": 1.0, "micron": 1.0, "micrometer": 1.0, "nm": 1e-3, "mm": 1e3}


def _description_mpp(text: str) -> float | None:
    """µm/px from a TIFF ImageDescription: Aperio ``MPP = 0.25`` or OME-XML ``PhysicalSizeX``/``Y``."""
    m = re.search(r"\bMPP\s*=\s*([0-9.eE+-]+)", text)
    if m:
        try:
            return float(m.group(1))
        except ValueError:
            return None
    sx = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', text)
    if sx:
        sy = re.search(r'PhysicalSizeY="([0-9.eE+-]+)"', text)
        unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', text)
        factor = _UNIT_UM.get(unit.group(1) if unit else "µm")
        if factor is None:
            return None
        try:
            return _pair_mpp(float(sx.group(1)) * factor, float(sy.group(1) if sy else sx.group(1)) * factor)
        except ValueError:
            return None
    return None


def metadata_mpp(path: str | Path) -> tuple[float | None, str]:
    """µm/px from an image file's own metadata and what was found (for messages): ``(mpp or None, note)``.

    Only values that are present, unambiguous (a physical unit, equal x and y) and plausible for a microscope
    image (:data:`PLAUSIBLE_MPP`) are returned. Raises :class:`OcelotFormatError` for a file that is not an image.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            tags = getattr(im, "tag_v2", None)
            info = dict(im.info)
            desc = str(tags.get(270, "")) if tags is not None else ""
            res = None
            if tags is not None and 282 in tags:
                res = (float(tags[282]), float(tags.get(283, tags[282])), tags.get(296, 2))
    except FileNotFoundError:
        raise
    except Exception as e:  # PIL raises several types for damaged or non-image files
        raise OcelotFormatError(f"{path}: unreadable or truncated image ({e})") from None
    candidates: list[tuple[float | None, str]] = []
    if desc:
        v = _description_mpp(desc)
        if v is not None:
            candidates.append((v, f"{v:.4g} µm/px in its TIFF description"))
    if res is not None:
        xres, yres, unit = res
        per_um = {2: 25400.0, 3: 10000.0}.get(int(unit) if unit is not None else 2)
        if per_um is None:
            candidates.append((None, "TIFF resolution tags without a physical unit"))
        elif xres > 0 and yres > 0:
            v = _pair_mpp(per_um / xres, per_um / yres)
            candidates.append((v, f"{per_um / xres:.4g}×{per_um / yres:.4g} µm/px in its TIFF resolution tags"))
    elif tags is None and "dpi" in info:  # PNG pHYs / JPEG JFIF or EXIF (PIL gives TIFFs a default dpi)
        dpi = info["dpi"]
        dx, dy = (float(dpi[0]), float(dpi[1])) if isinstance(dpi, (tuple, list)) else (float(dpi), float(dpi))
        if dx > 0 and dy > 0:
            v = _pair_mpp(25400.0 / dx, 25400.0 / dy)
            candidates.append((v, f"{round(dx, 1):g} dpi ({25400.0 / dx:.4g} µm/px) in its metadata"))
    notes = []
    for v, note in candidates:
        if v is not None and _plausible(v):
            return v, note
        notes.append(note)
    return None, "; ".join(notes)


def ocelot_mpp(path: str | Path) -> tuple[float | None, str]:
    """µm/px of an image inside an OCELOT-layout folder (``<root>/images/<split>/cell/<id>.*``) from
    ``<root>/metadata.json``, and a note for messages; ``(None, "")`` outside that layout."""
    p = Path(path).resolve()
    if len(p.parents) < 4 or p.parent.name != "cell" or p.parents[2].name != "images":
        return None, ""
    root = p.parents[3]
    if not (root / "metadata.json").is_file():
        return None, ""
    try:
        return sample_mpp(read_metadata(root), p.stem), f"{root / 'metadata.json'}"
    except (OcelotFormatError, KeyError) as e:
        return None, f"{root / 'metadata.json'}: {e}"


def image_mpp(path: str | Path, mpp: float | None = None) -> float:
    """µm/px of an image: ``mpp`` when given, else OCELOT ``metadata.json``, else the file's own metadata.

    Raises :class:`PredictError` naming the image (and saying to pass ``--mpp``) when none is known.
    """
    path = Path(path)
    if mpp is not None:
        mpp = float(mpp)
        if not (mpp > 0 and math.isfinite(mpp)):
            raise PredictError(f"--mpp {mpp}: expected a positive number of µm per pixel")
        return mpp
    v, note_ocelot = ocelot_mpp(path)
    if v is not None:
        return v
    v, note = metadata_mpp(path)
    if v is not None:
        return v
    found = "; ".join(n for n in (note_ocelot, note) if n)
    found = f" (found: {found}, not a plausible microscope resolution)" if found else ""
    raise PredictError(f"{path}: resolution unknown: the image has no usable µm/px metadata{found}; "
                       f"pass --mpp (e.g. --mpp 0.25 for a 40x scan)")



__all__ = ["IMAGE_SUFFIXES", "PLAUSIBLE_MPP", "PredictError", "ImageResult", "find_images", "image_mpp",
           "metadata_mpp", "ocelot_mpp"]
