"""Where things are in an OCELOT-layout folder: splits, ids, image and annotation paths."""
from __future__ import annotations

from pathlib import Path

from util.ocelot.classes import CELL_CLASSES  # noqa: F401  (re-exported: the one definition is in classes)

SPLITS: tuple[str, ...] = ("train", "val", "test")



TISSUE_LABELS: tuple[int, ...] = (1, 2, 255)



IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png")



class OcelotFormatError(ValueError):
    """A file does not follow the OCELOT layout; the message names the file (and line) and what was expected."""



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
