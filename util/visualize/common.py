"""What every figure shares: the class colours, writing PNG + PDF, an empty-panel note, the one-panel skeleton."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import matplotlib.pyplot as plt

from util.ocelot.classes import CELL_CLASSES, hex_color

#: colours of the cell classes (1 = background cell, 2 = tumour cell)
CLASS_COLORS = {c: hex_color(c) for c in CELL_CLASSES}
CLASS_NAMES = CELL_CLASSES
FORMATS = ("png", "pdf")


def save_figure(fig: plt.Figure, out_dir: str | Path, name: str, formats: Sequence[str] = FORMATS,
                dpi: int = 150) -> list[Path]:
    """Write ``fig`` as ``<out_dir>/<name>.<fmt>`` for each format; return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        p = out / f"{name}.{fmt}"
        fig.savefig(p, dpi=dpi, bbox_inches="tight")
        paths.append(p)
    return paths


def _finish(fig: plt.Figure, out_dir: str | Path | None, name: str, dpi: int = 150) -> plt.Figure:
    if out_dir is not None:
        save_figure(fig, out_dir, name, dpi=dpi)
    return fig


def _empty(ax: plt.Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=10, color="0.4",
            wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])



def _one_panel(out_dir: str | Path | None, name: str, title: str, draw: Callable[[plt.Axes], None] | None,
               empty_text: str, figsize: tuple[float, float] = (6, 4)) -> plt.Figure:
    """One-axes figure: ``draw(ax)`` (or ``empty_text`` when ``draw`` is None), ``title``, tight layout, saved."""
    fig, ax = plt.subplots(figsize=figsize)
    if draw is None:
        _empty(ax, empty_text)
    else:
        draw(ax)
    ax.set_title(title)
    fig.tight_layout()
    return _finish(fig, out_dir, name)


__all__ = ["CLASS_COLORS", "CLASS_NAMES", "FORMATS", "save_figure"]
