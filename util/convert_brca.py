"""BRCA-M2C (TopoXLab/Dataset-BRCA-M2C) to the OCELOT layout: centre crops, mapped classes, µm/px from the file
names, and the README of the converted set (the structure of the shipped ``data/brca_m2c``)."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from util.convert_common import ConversionError, _prepare_out, _Writer
from util.ocelot import SPLITS, OcelotFormatError, read_image, validate_dataset, write_cells_csv


def _git_commit(src: Path) -> tuple[str, str] | None:
    """(commit, date) when ``src`` is the top of a git checkout (not a folder inside another one), else None."""
    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", "-C", str(src), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != src.resolve():
        return None
    parts = (git("log", "-1", "--format=%H %cs") or "").split()
    return (parts[0], parts[1]) if len(parts) == 2 else None


BRCA_URL = "https://github.com/TopoXLab/Dataset-BRCA-M2C"
#: source class → OCELOT class (1 lymphocyte → 1 BC, 2 tumour/epithelial → 2 TC, 3 stromal → 1 BC)
BRCA_CLASS_MAP: dict[int, int] = {1: 1, 2: 2, 3: 1}
BRCA_LABEL_SUFFIX = "_gt_class_coords.txt"
BRCA_MPP_NOTE = "derived: level-0 mpp (= last filename field / 4) * level-0 extent (1000 px) / image size"


@dataclass
class BrcaSource:
    """One upstream patch: its split, file stem, image size (W, H) and label rows (Y, X, class)."""

    split: str
    stem: str
    size: tuple[int, int]
    rows: np.ndarray


def parse_brca_name(stem: str) -> tuple[str, int, int, int, int, float]:
    """``<slide>_<x>_<y>_<w>_<h>_<4×level-0 mpp>`` → (slide, x, y, w, h, level-0 mpp)."""
    f = stem.split("_")
    try:
        if len(f) != 6:
            raise ValueError
        return f[0], int(f[1]), int(f[2]), int(f[3]), int(f[4]), float(f[5]) / 4
    except ValueError:
        raise ConversionError(f"{stem}: file name is not <slide>_<x>_<y>_<w>_<h>_<mpp×4> (e.g. "
                              f"TCGA-A7-A0D9-01Z-00-DX2_18001_13001_1000_1000_0.9824)") from None


def read_brca_labels(path: Path) -> np.ndarray:
    """A label file (rows ``Y X class``, space-separated) as int64 N×3; errors name the file and line."""
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            y, x, c = (int(v) for v in line.split())
        except ValueError:
            raise ConversionError(f"{path}:{lineno}: expected 'Y X class' (three integers), got {line!r}") from None
        if c not in BRCA_CLASS_MAP:
            raise ConversionError(f"{path}:{lineno}: class {c} is not one of {sorted(BRCA_CLASS_MAP)}")
        rows.append((y, x, c))
    return np.asarray(rows, dtype=np.int64).reshape(-1, 3)


def crop_brca_points(rows: np.ndarray, offset: tuple[int, int], crop: int) -> np.ndarray:
    """Source rows (Y, X, class) → OCELOT points (x, y, class) in the crop; points outside it are dropped."""
    x = rows[:, 1] - offset[0]
    y = rows[:, 0] - offset[1]
    c = np.array([BRCA_CLASS_MAP[int(v)] for v in rows[:, 2]], dtype=np.int64)
    keep = (x >= 0) & (x < crop) & (y >= 0) & (y < crop)
    return np.stack([x, y, c], axis=1)[keep].reshape(-1, 3)


def _sig5(v: float) -> float:
    return float(f"{v:.5g}")


def brca_entry(split: str, stem: str, size: tuple[int, int], crop: int, n_cells: int) -> dict[str, Any]:
    """The ``metadata.json`` entry of one converted patch (the layout of the shipped ``data/brca_m2c``).

    mpp = level-0 mpp × level-0 width (filename ``w``) / image width, 5 significant digits; ``mpp_y`` uses the
    heights. The level-0 box scales the crop by the same ``w / W`` on both axes, from the filename's x, y.
    """
    slide, x0, y0, w, h, l0 = parse_brca_name(stem)
    W, H = size
    ox, oy = (W - crop) // 2, (H - crop) // 2
    mpp_x, mpp_y = _sig5(l0 * w / W), _sig5(l0 * h / H)
    s = w / W

    def box(v0: int, o: int) -> int:
        return math.floor(v0 + o * s + 0.5)

    return {
        "subset": split, "organ": "breast", "slide_name": slide, "source_file": f"images/{stem}.png",
        "source_size": [W, H], "crop_offset_xy": [ox, oy], "mpp": mpp_x, "mpp_x": mpp_x, "mpp_y": mpp_y,
        "mpp_note": BRCA_MPP_NOTE,
        "cell": {"x_start": box(x0, ox), "y_start": box(y0, oy), "x_end": box(x0, ox + crop),
                 "y_end": box(y0, oy + crop), "resized_mpp_x": mpp_x, "resized_mpp_y": mpp_x},
        "level0_mpp": l0, "n_cells": int(n_cells),
    }


def _read_split_list(path: Path) -> list[str]:
    """File stems listed in a split file (whitespace-separated ``<stem>.png`` names)."""
    if not path.is_file():
        raise ConversionError(f"{path}: split list not found (expected brca_ds_{{train,val,test}}.txt)")
    return [Path(tok).name.removesuffix(".png") for tok in path.read_text(encoding="utf-8").split()]


def scan_brca_source(src: Path) -> list[BrcaSource]:
    """Check an upstream checkout and read every listed patch's size and labels (nothing is written)."""
    img_dir, lab_dir = src / "images", src / "labels"
    for d in (src, img_dir, lab_dir):
        if not d.is_dir():
            raise ConversionError(f"{d}: folder not found (expected a TopoXLab/Dataset-BRCA-M2C checkout with "
                                  f"images/, labels/ and brca_ds_{{train,val,test}}.txt)")
    for lab in sorted(lab_dir.glob(f"*{BRCA_LABEL_SUFFIX}")):
        img = img_dir / (lab.name.removesuffix(BRCA_LABEL_SUFFIX) + ".png")
        if not img.is_file():
            raise ConversionError(f"{lab}: label file without image (no {img})")
    seen: dict[str, str] = {}
    out: list[BrcaSource] = []
    for split in SPLITS:
        for stem in sorted(_read_split_list(src / f"brca_ds_{split}.txt")):
            if stem in seen:
                raise ConversionError(f"{src / f'brca_ds_{split}.txt'}: {stem} is listed twice "
                                      f"(also in {seen[stem]})")
            seen[stem] = split
            parse_brca_name(stem)
            img, lab = img_dir / f"{stem}.png", lab_dir / f"{stem}{BRCA_LABEL_SUFFIX}"
            if not img.is_file():
                raise ConversionError(f"{img}: image listed in brca_ds_{split}.txt not found")
            if not lab.is_file():
                raise ConversionError(f"{lab}: label file of {img} not found")
            try:
                with Image.open(img) as im:
                    size = im.size
            except OSError as e:
                raise ConversionError(f"{img}: unreadable image ({e})") from None
            out.append(BrcaSource(split, stem, size, read_brca_labels(lab)))
    return out


def _brca_readme(counts: dict[str, dict[str, int]], srcs: list[BrcaSource], skipped: list[BrcaSource],
                 mpps: list[float], crop: int, quality: int, commit: tuple[str, str] | None,
                 has_license: bool) -> str:
    """README.md of the converted set (the structure of the shipped ``data/brca_m2c/README.md``)."""
    rev = f"commit `{commit[0]}` ({commit[1]})" if commit else "commit unknown (the source was not a git checkout)"
    sides = [s for src in srcs if min(src.size) >= crop for s in src.size]
    lic = "copied here as `LICENSE`" if has_license else "not found in the source; add it to any copy"
    n = sum(c["patches"] for c in counts.values())
    if skipped:
        names = ", ".join(f"`{s.stem.split('_')[0]}` ({s.split}, {s.size[0]}×{s.size[1]} px)" for s in skipped)
        skip = (f"- Patches smaller than {crop} were **dropped** ({len(skipped)}, listed in\n"
                f"  `metadata.json[\"skipped_too_small\"]`): {names}.")
    else:
        skip = f"- No patch was smaller than {crop}."
    rows = "\n".join(
        f"| {s} | {c['patches']} | {crop}×{crop} | {round(c['cells'] / c['patches']) if c['patches'] else 0} "
        f"| {c['class1']} | {c['class2']} |" for s, c in counts.items())
    mpp = f"about **{np.mean(mpps):.2f} µm/px** (range {min(mpps):.4f}–{max(mpps):.4f})" if mpps else "n/a"
    return f"""# brca_m2c — BRCA-M2C breast-cancer cell points in OCELOT 2023 layout

Real H&E data with expert dot annotations. It was made by people outside this project and converted here.

## Source
- Repository: {BRCA_URL}, {rev}
- Files used: `images/*.png`, `labels/*{BRCA_LABEL_SUFFIX}`, `brca_ds_{{train,val,test}}.txt`
- Paper: Abousamra et al., "Multi-Class Cell Detection Using Spatial Context Representation", ICCV 2021 (please cite).
- Images: patches from TCGA-BRCA diagnostic slides. Each was taken as a 1000×1000 px region at level 0 and
  resampled to 20× (about 0.5 µm/px, about {min(sides, default=0)}–{max(sides, default=0)} px square).
- Licence: **BSD-3-Clause** (the repository's LICENSE, © 2022 TopoXLab; {lic}). Keep this notice with any copy.
  The underlying TCGA images are public TCGA data.

## What was converted
- The source's own train/val/test split is kept. IDs run from `{0:03d}` to `{max(n - 1, 0):03d}` across all splits
  (sorted by file name within a split). `metadata.json` maps each ID to its source file, TCGA slide, crop offset
  and approximate level-0 box.
- Every image is **centre-cropped to {crop}×{crop}** and saved as JPEG (quality {quality}). No resampling was done.
{skip}
- Labels are source rows `Y X class`. Each became `x,y,class`, shifted by the crop offset. Points outside
  the crop were dropped.
- Class mapping: source 2 (tumour/epithelial) → **2**; source 1 (lymphocyte) and 3 (stromal) → **1**.
  Note: the source puts tumour and epithelial cells in one class.
- mpp: worked out per patch as (last filename field ÷ 4 = level-0 mpp, e.g. 0.9824 → 0.2456) × level-0 width
  (the filename's `w` field, 999–1001) / image width. It comes to {mpp} for every patch.
  OCELOT cell patches are about 0.2 µm/px, so rescale if needed.
- There are no tissue patches or tissue annotations (the source has none).

## Contents
| split | patches | size | cells/patch (mean) | class 1 | class 2 |
|---|---|---|---|---|---|
{rows}

## Re-create
`git clone {BRCA_URL} <src>`, then (in this repository)
`python -m util.convert brca_m2c <src> <out>` (`--force` replaces an earlier conversion in `<out>`).

`cell.{{x,y}}_{{start,end}}` in metadata.json is approximate: it assumes the filename's x_y fields are the level-0 top-left corner.

## Citation
```
@inproceedings{{abousamra2021MCSpatNet,
  author    = {{Shahira Abousamra, David Belinsky, John Van Arnam, Felicia Allard, Eric Yee, Rajarsi Gupta,
               Tahsin Kurc, Dimitris Samaras, Joel Saltz, Chao Chen}},
  title     = {{Multi-Class Cell Detection Using Spatial Context Representation}},
  booktitle = {{International Conference on Computer Vision (ICCV)}},
  year      = {{2021}}}}
```
"""


def convert_brca_m2c(src: str | Path, out: str | Path, crop: int = 448, quality: int = 92,
                     force: bool = False) -> dict[str, Any]:
    """Convert a TopoXLab/Dataset-BRCA-M2C checkout at ``src`` to the OCELOT layout in ``out``.

    Images are centre-cropped to ``crop``² (offset ``(W - crop) // 2``) and saved as JPEG ``quality``; smaller
    images are skipped. Points move by the offset, those outside are dropped; classes map by
    ``BRCA_CLASS_MAP``. Returns a summary with the per-split counts, the skipped stems and the validation report.
    """
    src, out = Path(src), Path(out)
    sources = scan_brca_source(src)
    _prepare_out(out, force)
    out.mkdir(parents=True, exist_ok=True)
    writer = _Writer(out, "brca_m2c")
    pairs: dict[str, Any] = {}
    skipped: list[BrcaSource] = []
    counts = {s: {"patches": 0, "cells": 0, "class1": 0, "class2": 0} for s in SPLITS}
    kept = [s for s in sources if min(s.size) >= crop]
    width = max(3, len(str(len(kept) - 1)))
    try:
        for s in sources:
            if min(s.size) < crop:
                skipped.append(s)
                continue
            sid = f"{len(pairs):0{width}d}"
            W, H = s.size
            ox, oy = (W - crop) // 2, (H - crop) // 2
            try:
                img = read_image(src / "images" / f"{s.stem}.png")
            except OcelotFormatError as e:
                raise ConversionError(str(e)) from None
            Image.fromarray(img[oy:oy + crop, ox:ox + crop]).save(
                writer.path(f"images/{s.split}/cell/{sid}.jpg"), "JPEG", quality=quality)
            pts = crop_brca_points(s.rows, (ox, oy), crop)
            write_cells_csv(writer.path(f"annotations/{s.split}/cell/{sid}.csv"), pts)
            pairs[sid] = brca_entry(s.split, s.stem, s.size, crop, len(pts))
            c = counts[s.split]
            c["patches"] += 1
            c["cells"] += len(pts)
            c["class1"] += int((pts[:, 2] == 1).sum())
            c["class2"] += int((pts[:, 2] == 2).sum())
        meta = {
            "dataset": "BRCA-M2C (converted to OCELOT layout)",
            "source": BRCA_URL,
            "license": "BSD-3-Clause (repository LICENSE); images are TCGA-BRCA diagnostic-slide patches",
            "class_map": {"source 1 (lymphocyte)": 1, "source 2 (tumor/epithelial)": 2, "source 3 (stromal)": 1},
            "sample_pairs": pairs,
            "skipped_too_small": [s.stem for s in skipped],
        }
        writer.path("metadata.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        has_license = (src / "LICENSE").is_file()
        if has_license:
            shutil.copyfile(src / "LICENSE", writer.path("LICENSE"))
        readme = _brca_readme(counts, sources, skipped, [e["mpp"] for e in pairs.values()], crop, quality,
                              _git_commit(src), has_license)
        writer.path("README.md").write_text(readme, encoding="utf-8")
    finally:
        writer.close()
    report = validate_dataset(out)
    return {"out": str(out), "counts": counts, "skipped_too_small": [s.stem for s in skipped],
            "license_copied": has_license, "report": report}


__all__ = ["BRCA_URL", "BRCA_CLASS_MAP", "BrcaSource", "parse_brca_name", "read_brca_labels", "crop_brca_points",
           "brca_entry", "scan_brca_source", "convert_brca_m2c"]
