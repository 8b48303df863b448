"""The OCELOT cell classes, the one definition every module uses: index → short name, long name, colour.

Index 0 is "no cell" in masks and is not a class of the annotations.
"""
from __future__ import annotations

#: class index -> short name (annotation CSVs, score tables, per-class thresholds)
CELL_CLASSES: dict[int, str] = {1: "BC", 2: "TC"}
#: class index -> long name (QuPath GeoJSON classifications)
CELL_CLASS_TITLES: dict[int, str] = {1: "Background cell", 2: "Tumour cell"}
#: class index -> display colour, RGB 0-255 (matplotlib's tab:blue and tab:red)
CELL_CLASS_RGB: dict[int, tuple[int, int, int]] = {1: (31, 119, 180), 2: (214, 39, 40)}


def hex_color(cls: int) -> str:
    """``"#1f77b4"``: the display colour of class ``cls`` as a matplotlib hex string."""
    return "#{:02x}{:02x}{:02x}".format(*CELL_CLASS_RGB[cls])


__all__ = ["CELL_CLASSES", "CELL_CLASS_TITLES", "CELL_CLASS_RGB", "hex_color"]
