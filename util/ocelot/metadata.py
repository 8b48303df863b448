"""``metadata.json``: every value checked by type and range; the µm/px of each sample."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from util.ocelot.layout import OcelotFormatError, SPLITS


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
