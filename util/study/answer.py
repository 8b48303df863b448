"""The study's answer block in the project README: the numbers, written by a command, never by hand.

    python -m util.study report configs/study/brca_cpu.yaml --readme README.md

``report`` writes ``summary.csv`` and ``contrasts.csv``; :func:`answer_block` turns those two files into a short
Markdown block (test mF1 mean ± std per arm and fraction, and the paired contrasts with their intervals), and
:func:`update_readme` puts it between the README's two marker lines::

    <!-- results:brca_cpu -->
    ...                        (replaced by every `report --readme`)
    <!-- /results:brca_cpu -->

The prose around the block (the reading, the caveats) is the author's; the numbers it quotes are in the block
or in the study's own report (`results/<study>/README.md`).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from util.study.spec import Study

CONTRAST_NAMES = {"a": "(a) equivariant, no augmentation vs plain + flips_rot90",
                  "b": "(b) equivariant vs plain, both without augmentation",
                  "c": "(c) equivariant with vs without augmentation"}


REPO = Path(__file__).resolve().parents[2]


def markers(study: Study) -> tuple[str, str]:
    """The begin and end marker lines of ``study``'s block."""
    return f"<!-- results:{study.name} -->", f"<!-- /results:{study.name} -->"


def _block_span(text: str, study: Study, path: Path) -> tuple[int, int]:
    """``(start, end)`` of the text between ``study``'s marker lines in ``text`` (read from ``path``);
    ``ValueError`` naming the file and the markers when they are missing or out of order."""
    begin, end = markers(study)
    i, j = text.find(begin), text.find(end)
    if i < 0 or j < i:
        raise ValueError(f"{path}: expected the marker lines {begin!r} and, after it, {end!r} around the "
                         f"study's results block; add them where the numbers should go")
    return i + len(begin), j


def _shown(path: Path) -> str:
    """``path`` as a user types it in the repository root (relative when it lies inside the repository)."""
    try:
        return Path(path).resolve().relative_to(REPO).as_posix()
    except ValueError:
        return Path(path).as_posix()


def _num(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f


def _signed(v: float) -> str:
    return f"{v:+.3f}".replace("-", "−")


def _params(n: float) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.0f} k"


def _fraction(f: float) -> str:
    return f"{100 * f:g} %"


def _cell(r: pd.Series) -> str:
    """``0.612 ± 0.010 (3)``: mean ± std over seeds and the number of seeds (``0.612 (1)`` for one seed)."""
    mean, std, n = _num(r["mF1_mean"]), _num(r["mF1_std"]), int(_num(r["seeds"]) or 0)
    return f"{mean:.3f} ± {std:.3f} ({n})" if math.isfinite(std) and n > 1 else f"{mean:.3f} ({n})"


def answer_block(study: Study) -> str:
    """The block's text (without the marker lines) from ``results/<study>/{summary,contrasts}.csv``."""
    out = study.study_results
    for name in ("summary.csv", "contrasts.csv"):
        if not (out / name).is_file():
            raise FileNotFoundError(f"{out / name} is missing: run `python -m util.study report "
                                    f"{_shown(study.path)}` first")
    summary = pd.read_csv(out / "summary.csv")
    contrasts = pd.read_csv(out / "contrasts.csv")
    fractions = sorted(float(f) for f in study.fractions)
    lines = [f"_Written by `python -m util.study report {_shown(study.path)} --readme README.md` from "
             f"`results/{study.name}/summary.csv` and `contrasts.csv`; do not edit by hand._", "",
             "Test mF1, mean ± std over seeds (number of seeds), per arm and training fraction:", "",
             "| arm | parameters | lr | " + " | ".join(_fraction(f) for f in fractions) + " |",
             "|" + "---|" * (3 + len(fractions))]
    for arm in study.arms:
        cells = summary[summary["arm"] == arm.label]
        by_f = {float(r["fraction"]): r for _, r in cells.iterrows()}
        first = next(iter(by_f.values()), None)
        params = _params(_num(first["parameters"])) if first is not None else "–"
        lr = f"{_num(first['learning_rate']):g}" if first is not None else "–"
        lines.append(f"| {arm.label} | {params} | {lr} | "
                     + " | ".join(_cell(by_f[f]) if f in by_f else "–" for f in fractions) + " |")
    lines += ["", "Paired differences of test mF1 (arm − vs, same seeds and test images), 95 % bootstrap "
              "interval over seeds × test images, number of paired seeds:", "",
              "| contrast | arm | vs | match | " + " | ".join(_fraction(f) for f in fractions) + " |",
              "|" + "---|" * (4 + len(fractions))]
    for c in study.contrasts:
        rows = contrasts[(contrasts["kind"] == c.kind) & (contrasts["arm"] == c.arm) & (contrasts["vs"] == c.vs)]
        by_f = {float(r["fraction"]): r for _, r in rows.iterrows()}
        vals = []
        for f in fractions:
            r = by_f.get(f)
            if r is None or not math.isfinite(_num(r["diff"])):
                vals.append("not run yet")
                continue
            vals.append(f"{_signed(_num(r['diff']))} [{_signed(_num(r['ci_low']))}, {_signed(_num(r['ci_high']))}]"
                        f" ({int(_num(r['seeds']))})")
        lines.append(f"| {c.kind} | {c.arm} | {c.vs} | {c.match or ''} | " + " | ".join(vals) + " |")
    lines += ["", "Contrast kinds: " + "; ".join(CONTRAST_NAMES.values()) + "."]
    return "\n".join(lines) + "\n"


def update_readme(readme: str | Path, study: Study) -> bool:
    """Replace the text between ``study``'s markers in ``readme`` with :func:`answer_block`; True if it changed.

    Raises ``ValueError`` (naming the file and the marker lines) when the markers are missing or out of order:
    nothing is written then."""
    path = Path(readme)
    text = path.read_text()
    i, j = _block_span(text, study, path)
    new = text[:i] + "\n" + answer_block(study) + text[j:]
    if new == text:
        return False
    path.write_text(new)
    return True


def readme_block(readme: str | Path, study: Study) -> str:
    """The block currently between ``study``'s markers in ``readme`` (without the marker lines)."""
    text = Path(readme).read_text()
    i, j = _block_span(text, study, Path(readme))
    return text[i + 1:j]
