"""Validation of a whole folder (every problem at once) and the up-front check before training."""
from __future__ import annotations

import collections
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from util.ocelot.files import Problem, _parse_cells, read_tissue_mask
from util.ocelot.layout import IMAGE_SUFFIXES, OcelotFormatError, SPLITS, TISSUE_LABELS, _image_dir
from util.ocelot.metadata import metadata_problems, read_metadata, sample_mpp


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
