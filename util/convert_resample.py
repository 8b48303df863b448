"""An OCELOT-layout folder resampled to another resolution (cell patches and points only)."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from util.convert_common import ConversionError, _prepare_out, _Writer
from util.ocelot import SPLITS, OcelotFormatError, read_image, validate_dataset, write_cells_csv


def convert_resample(src: str | Path, out: str | Path, mpp: float | None = None, force: bool = False,
                     splits: tuple[str, ...] = SPLITS, limit: int | None = None) -> dict[str, Any]:
    """An OCELOT-layout folder ``src`` resampled to about ``mpp`` µm/px in ``out`` (cell patches and points only).

    One factor ``s = median(m) / mpp`` over the set's resolutions ``m`` keeps equal-sized patches equal-sized:
    each image is resized to ``round(W·s) × round(H·s)`` (Lanczos) and saved as PNG (no further compression loss);
    a point at pixel centre ``x`` moves to ``(x + 0.5)·W'/W - 0.5`` (rounded, kept inside the image) and each
    sample's new resolution ``m·W/W'`` goes into ``metadata.json``. ``limit``: the first N samples of each split.
    """
    from util.ocelot import cell_csv_path, find_image, list_ids, read_cells_csv, read_metadata, sample_mpp

    if mpp is None or not (mpp > 0 and math.isfinite(mpp)):
        raise ConversionError(f"resample: --mpp must be a positive number of µm per pixel, got {mpp!r}")
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise ConversionError(f"{src}: no such data folder")
    try:
        meta = read_metadata(src)
    except (FileNotFoundError, OcelotFormatError) as e:
        raise ConversionError(str(e)) from None
    jobs = []
    for split in splits:
        if not (src / "images" / split / "cell").is_dir():
            continue
        ids = list_ids(src, split)[:limit]
        for sid in ids:
            img = find_image(src, split, sid)
            if img is None:
                raise ConversionError(f"{src}/images/{split}/cell/{sid}: image not found")
            jobs.append((split, sid, img))
    if not jobs:
        raise ConversionError(f"{src}: no cell images under images/<split>/cell/")
    try:
        scale = float(np.median([sample_mpp(meta, sid) for _, sid, _ in jobs])) / float(mpp)
    except OcelotFormatError as e:
        raise ConversionError(str(e)) from None
    _prepare_out(out, force)
    out.mkdir(parents=True, exist_ok=True)
    writer = _Writer(out, "resample")
    pairs: dict[str, Any] = {}
    counts = {s: {"patches": 0, "cells": 0, "class1": 0, "class2": 0} for s in SPLITS}
    try:
        for split, sid, path in jobs:
            try:
                m = sample_mpp(meta, sid)
                arr = read_image(path)
                pts = read_cells_csv(cell_csv_path(src, split, sid), shape=arr.shape[:2])
            except (OcelotFormatError, FileNotFoundError) as e:
                raise ConversionError(str(e)) from None
            h, w = arr.shape[:2]
            nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
            Image.fromarray(arr).resize((nw, nh), Image.LANCZOS).save(
                writer.path(f"images/{split}/cell/{sid}.png"))
            new = np.asarray(pts, dtype=np.float64).reshape(-1, 3).copy()
            if len(new):
                new[:, 0] = np.clip(np.rint((new[:, 0] + 0.5) * nw / w - 0.5), 0, nw - 1)
                new[:, 1] = np.clip(np.rint((new[:, 1] + 0.5) * nh / h - 0.5), 0, nh - 1)
            write_cells_csv(writer.path(f"annotations/{split}/cell/{sid}.csv"), new.astype(np.int64))
            entry = dict(meta["sample_pairs"].get(sid) or {})
            entry.pop("cell", None)
            entry.update({"subset": split, "mpp": m * w / nw, "mpp_x": m * w / nw, "mpp_y": m * h / nh,
                          "resampled_from": {"mpp": m, "size": [w, h]}})
            pairs[sid] = entry
            c = counts[split]
            c["patches"] += 1
            c["cells"] += len(new)
            c["class1"] += int((new[:, 2] == 1).sum()) if len(new) else 0
            c["class2"] += int((new[:, 2] == 2).sum()) if len(new) else 0
        doc = {"dataset": f"{meta.get('dataset', src.name)} resampled to {mpp} µm/px", "source": str(src),
               "license": meta.get("license"), "sample_pairs": pairs}
        writer.path("metadata.json").write_text(json.dumps(doc, indent=2), encoding="utf-8")
        for extra in ("LICENSE", "README.md"):
            if (src / extra).is_file():
                shutil.copyfile(src / extra, writer.path(f"SOURCE_{extra}"))
    finally:
        writer.close()
    return {"out": str(out), "counts": counts, "skipped_too_small": [], "report": validate_dataset(out)}


__all__ = ["convert_resample"]
