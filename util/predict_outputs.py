"""The outputs of ``util.predict`` per image: points CSV, OCELOT JSON, QuPath GeoJSON and an overlay PNG (and
readers of the CSV and of GeoJSON point files)."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from util.files import atomic_write
from util.ocelot.classes import CELL_CLASS_RGB, CELL_CLASS_TITLES, CELL_CLASSES

#: Short class names (CSV, OCELOT) and the names and RGB colours written to GeoJSON for QuPath.
CLASS_NAMES = CELL_CLASSES
GEOJSON_CLASSES: dict[int, tuple[str, tuple[int, int, int]]] = {c: (CELL_CLASS_TITLES[c], CELL_CLASS_RGB[c])
                                                                 for c in CELL_CLASSES}
#: Radius (µm) of the circles drawn on the overlay.
OVERLAY_RADIUS_UM = 1.5


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


__all__ = ["CLASS_NAMES", "GEOJSON_CLASSES", "OVERLAY_RADIUS_UM", "points_csv", "read_points_csv",
           "points_to_geojson", "read_geojson_points", "draw_overlay", "write_outputs"]
