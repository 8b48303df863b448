"""Cells in new images with a trained run: points CSV, OCELOT JSON, QuPath GeoJSON and an overlay PNG per image.

CLI::

    python -m util.predict RUN IMAGES_OR_FOLDERS... [--mpp M] --out DIR [--tta] [--threshold T] [--tile-size N]

``RUN`` is a run folder (``runs/<name>/<run-id>``, weights ``checkpoints/best.ckpt`` else ``last.ckpt``) or a
checkpoint inside one. Inputs are image files (``.jpg .jpeg .png .tif .tiff``) and folders (searched
non-recursively, sorted). Images of any size go through the run's exact sliding window
(``inference.blend: valid``) after resampling to the run's training resolution. Per image ``<stem>``:

* ``<stem>.csv``: header ``x,y,class,probability,class_name``; x = column, y = row (pixels of the input image),
  class 1 = BC (background cell), 2 = TC (tumour cell), probability = detection confidence;
* ``<stem>.json``: the OCELOT 2023 "Multiple points" file (:func:`util.ocelot.write_points_json`);
* ``<stem>.geojson``: a FeatureCollection of Point annotations that QuPath (≥ 0.4) imports with
  *File → Import objects from file*: classification ``Background cell`` / ``Tumour cell`` with a colour, the
  probability as the measurement ``probability``; coordinates in pixels (column, row), as in the CSV;
* ``<stem>_overlay.png``: the image with a circle per cell (blue BC, red TC).

µm/px of an image: ``--mpp`` wins; else ``metadata.json`` of an OCELOT-layout folder
(``<root>/images/<split>/cell/<id>``); else the file's own metadata (Aperio ``MPP =`` or OME ``PhysicalSizeX``
in a TIFF description, TIFF resolution tags in inch/cm, PNG/JPEG dpi) when it is a plausible microscope
resolution (0.05–10 µm/px; 72 dpi and similar screen defaults are not); else the image is reported and skipped.

A problem with one input (no µm/px known, a damaged image, a folder without images, a missing path) is reported
naming it and that input is skipped; the others are still written. Exit code: 0 all written, 1 some inputs
skipped, 2 nothing done (unusable run folder or arguments). Outputs are written atomically (temporary file and
rename). From Python: :func:`predict_images`.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from util.cells import Threshold, class_thresholds, detect, probabilities
from util.files import atomic_write
from util.ocelot import OcelotFormatError, read_image, read_metadata, sample_mpp

IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
#: Short class names (CSV, OCELOT) and the names and RGB colours written to GeoJSON for QuPath.
CLASS_NAMES: dict[int, str] = {1: "BC", 2: "TC"}
GEOJSON_CLASSES: dict[int, tuple[str, tuple[int, int, int]]] = {1: ("Background cell", (31, 119, 180)),
                                                                 2: ("Tumour cell", (214, 39, 40))}
#: µm/px read from an image's own metadata is used only inside this range (microscopy; not 72 dpi defaults).
PLAUSIBLE_MPP: tuple[float, float] = (0.05, 10.0)
#: Radius (µm) of the circles drawn on the overlay.
OVERLAY_RADIUS_UM = 1.5


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


# ============================================================================================ writers
def _num(v: float) -> int | float:
    """An integral float as int (JSON/CSV ``12`` rather than ``12.0``), others unchanged."""
    v = float(v)
    return int(v) if v.is_integer() else v


def _points(cells: np.ndarray | None) -> np.ndarray:
    return np.asarray(cells if cells is not None else [], dtype=np.float64).reshape(-1, 4)


def points_csv(cells: np.ndarray) -> str:
    """CSV text ``x,y,class,probability,class_name`` for N×4 cells."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["x", "y", "class", "probability", "class_name"])
    for x, y, c, p in _points(cells):
        w.writerow([_num(x), _num(y), int(c), repr(float(p)), CLASS_NAMES.get(int(c), str(int(c)))])
    return buf.getvalue()


def read_points_csv(path: str | Path) -> np.ndarray:
    """N×4 (x, y, class, probability) from a CSV written by :func:`points_csv`."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = [[float(r["x"]), float(r["y"]), float(r["class"]), float(r["probability"])]
                for r in csv.DictReader(f)]
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


def points_to_geojson(cells: np.ndarray) -> dict[str, Any]:
    """A GeoJSON FeatureCollection with one QuPath Point annotation per cell (see the module docstring)."""
    features = []
    for x, y, c, p in _points(cells):
        name, color = GEOJSON_CLASSES[int(c)]
        features.append({"type": "Feature",
                         "geometry": {"type": "Point", "coordinates": [_num(x), _num(y)]},
                         "properties": {"objectType": "annotation",
                                        "classification": {"name": name, "color": list(color)},
                                        "measurements": {"probability": float(p)}}})
    return {"type": "FeatureCollection", "features": features}


def _class_from_name(name: Any) -> int | None:
    key = str(name).strip().lower()
    for c, (long_name, _) in GEOJSON_CLASSES.items():
        if key in (long_name.lower(), CLASS_NAMES[c].lower(), long_name.lower().replace("tumour", "tumor")):
            return c
    return None


def read_geojson_points(path: str | Path) -> np.ndarray:
    """N×4 (x, y, class, probability) from a GeoJSON of Point/MultiPoint features (ours, or QuPath's export).

    The class comes from ``properties.classification.name`` (``Tumour cell``/``Tumor cell``/``TC``,
    ``Background cell``/``BC``); the probability from the ``probability`` measurement (a mapping, or QuPath
    0.2/0.3's list of ``{name, value}``), 1.0 when absent. Other geometries are ignored.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    features = doc.get("features") if isinstance(doc, dict) else doc
    if not isinstance(features, list):
        raise ValueError(f"{path}: expected a GeoJSON FeatureCollection (or a list of features)")
    rows = []
    for i, f in enumerate(features):
        geom = (f or {}).get("geometry") or {}
        if geom.get("type") not in ("Point", "MultiPoint"):
            continue
        props = f.get("properties") or {}
        cls_name = (props.get("classification") or {}).get("name")
        c = _class_from_name(cls_name)
        if c is None:
            raise ValueError(f"{path}: feature {i} has classification {cls_name!r}; expected one of "
                             f"{', '.join(n for n, _ in GEOJSON_CLASSES.values())} (or BC, TC)")
        meas = props.get("measurements") or {}
        if isinstance(meas, list):
            meas = {m.get("name"): m.get("value") for m in meas if isinstance(m, dict)}
        prob = float(meas.get("probability", 1.0))
        coords = [geom["coordinates"]] if geom["type"] == "Point" else geom["coordinates"]
        rows += [[float(xy[0]), float(xy[1]), float(c), prob] for xy in coords]
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


def draw_overlay(image: np.ndarray, cells: np.ndarray, mpp: float) -> Image.Image:
    """The RGB image (uint8 H×W×3) with a circle of :data:`OVERLAY_RADIUS_UM` per cell in its class colour."""
    im = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
    draw = ImageDraw.Draw(im)
    r = max(2, int(round(OVERLAY_RADIUS_UM / mpp)))
    width = max(1, r // 4)
    for x, y, c, _ in _points(cells):
        color = GEOJSON_CLASSES.get(int(c), ("", (255, 255, 0)))[1]
        draw.ellipse((x - r, y - r, x + r, y + r), outline=color, width=width)
    return im


def write_outputs(out: str | Path, name: str, image: np.ndarray, cells: np.ndarray, mpp: float
                  ) -> dict[str, Path]:
    """Write ``<name>.csv``, ``.json``, ``.geojson`` and ``_overlay.png`` into ``out`` (each atomically)."""
    from util.ocelot import write_points_json

    out = Path(out)
    files = {"csv": out / f"{name}.csv", "json": out / f"{name}.json", "geojson": out / f"{name}.geojson",
             "overlay": out / f"{name}_overlay.png"}
    atomic_write(files["csv"], points_csv(cells))
    write_points_json(files["json"], [_points(cells)], [name], [mpp])
    atomic_write(files["geojson"], json.dumps(points_to_geojson(cells)))
    buf = io.BytesIO()
    draw_overlay(image, cells, mpp).save(buf, format="PNG")
    atomic_write(files["overlay"], buf.getvalue())
    return files


# ========================================================================================= prediction
def parse_threshold(text: str) -> Threshold:
    """``"0.4"`` -> 0.4; ``"BC=0.4,TC=0.6"`` -> ``{"BC": 0.4, "TC": 0.6}`` (checked in [0, 1])."""
    try:
        if "=" in text:
            thr: Threshold = {k.strip(): float(v) for k, v in (part.split("=", 1) for part in text.split(","))}
        else:
            thr = float(text)
        class_thresholds(thr)
    except ValueError as e:
        raise PredictError(f"--threshold {text!r}: expected a number in [0, 1] or BC=t,TC=t ({e})") from None
    return thr


def predict_images(run: str | Path, inputs: Iterable[str | Path] | str | Path, mpp: float | None = None,
                   out: str | Path | None = None, tta: bool = False, threshold: Threshold | None = None,
                   inference: Mapping[str, Any] | None = None, progress: bool = True,
                   keep_probabilities: bool = False, device: str | torch.device | None = None,
                   log=None) -> list[ImageResult]:
    """Cells in every image of ``inputs`` with the run's model; with ``out`` also the four files per image.

    Args:
        run: a run folder or a checkpoint inside one (:func:`util.training.load_run`).
        inputs: image files and folders (non-recursive).
        mpp: µm/px of every image (else from metadata, see :func:`image_mpp`).
        out: output folder (None: nothing is written, results only).
        tta: D4 test-time augmentation.
        threshold: detection threshold (a number or ``{"BC": t, "TC": t}``) instead of the run's.
        inference: overrides of the run's ``inference`` settings (``tile_size``: None = whole image, ...).
        progress: a tqdm progress bar over the images (stderr).
        keep_probabilities: keep each image's probability maps in its result.
        device: where the model runs (default: CUDA when available).
        log: a function called with each problem message (default: printed to stderr).

    Returns one :class:`ImageResult` per input image or failed input, in input order. A bad run folder raises
    (``FileNotFoundError``/``ValueError`` naming it); a problem with one input is that result's ``error``.
    """
    from tqdm.auto import tqdm

    from util.training import _inference_kwargs, load_run

    def report(msg: str) -> None:
        if log is not None:
            log(msg)
        else:
            tqdm.write(f"skipped: {msg}", file=sys.stderr)

    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    loaded = load_run(run)
    thr = threshold if threshold is not None else loaded.threshold
    if thr is None:
        raise PredictError(f"{loaded.run_dir}: detection.threshold is 'auto' but metrics.json holds no chosen "
                           f"threshold (the run has not finished); pass one, e.g. --threshold 0.5")
    class_thresholds(thr)
    kwargs = _inference_kwargs(loaded.cfg, tta) | dict(inference or {})
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = loaded.model.to(dev).eval()

    results = find_images(inputs)
    for r in results:  # resolutions first (cheap): a missing --mpp shows before any prediction runs
        if r.ok:
            try:
                r.mpp = image_mpp(r.path, mpp)
            except (PredictError, OcelotFormatError, OSError) as e:
                r.error = str(e)
    _unique_names(results)
    for r in results:
        if not r.ok:
            report(r.error)
    todo = [r for r in results if r.ok]
    for r in tqdm(todo, desc="predict", unit="image", disable=not progress or not todo, file=sys.stderr):
        try:
            img = read_image(r.path)
        except (OcelotFormatError, OSError) as e:
            r.error = str(e)
            report(r.error)
            continue
        x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(255.0)
        probs = probabilities(model, x, r.mpp, loaded.model_mpp, **kwargs)
        r.cells = detect(probs, r.mpp, loaded.cfg.detection, threshold=thr, min_distance_um=loaded.min_distance_um)
        if keep_probabilities:
            r.probabilities = probs.cpu()
        if out is not None:
            r.files = write_outputs(out, r.name, img, r.cells, r.mpp)
    return results


# ================================================================================================ CLI
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m util.predict", description=__doc__.split("\n")[0])
    parser.add_argument("run", help="run folder (runs/<name>/<run-id>) or a checkpoint inside it")
    parser.add_argument("inputs", nargs="+", help="image files (.jpg .jpeg .png .tif .tiff) and folders")
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--mpp", type=float, default=None, help="µm per pixel of every image (default: metadata)")
    parser.add_argument("--tta", action="store_true", help="D4 test-time augmentation")
    parser.add_argument("--threshold", default=None, help="detection threshold instead of the run's: T or BC=T,TC=T")
    parser.add_argument("--tile-size", type=int, default=None,
                        help="sliding-window tile (px) instead of the run's; 0 = whole image at once")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    inference = None if args.tile_size is None else {"tile_size": args.tile_size or None}
    try:
        thr = parse_threshold(args.threshold) if args.threshold is not None else None
        if args.mpp is not None and not args.mpp > 0:
            raise PredictError(f"--mpp {args.mpp}: expected a positive number of µm per pixel")
        results = predict_images(args.run, args.inputs, mpp=args.mpp, out=args.out, tta=args.tta, threshold=thr,
                                 inference=inference, progress=not args.no_progress)
    except (FileNotFoundError, RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    done = [r for r in results if r.ok]
    skipped = [r for r in results if not r.ok]
    cells = sum(len(r.cells) for r in done if r.cells is not None)
    print(f"{len(done)} image(s), {cells} cells written to {args.out}"
          + (f"; {len(skipped)} input(s) skipped:" if skipped else ""))
    for r in skipped:
        print(f"  {r.error}")
    return 1 if skipped else 0


__all__ = ["IMAGE_SUFFIXES", "CLASS_NAMES", "GEOJSON_CLASSES", "PLAUSIBLE_MPP", "PredictError", "ImageResult",
           "find_images", "image_mpp", "metadata_mpp", "ocelot_mpp", "points_csv", "read_points_csv",
           "points_to_geojson", "read_geojson_points", "draw_overlay", "write_outputs", "parse_threshold",
           "predict_images", "main"]


if __name__ == "__main__":
    sys.exit(main())
