"""``compare A.yaml B.yaml``: the same points trained in two studies — how far does what differs move a row?

Made for studies that run the same grid and differ only in how the numbers are computed (``brca_cpu`` and
``brca_cpu_portable``: another CPU numerics mode, so other last bits in every convolution and square root). Such
a difference is noise, not a treatment: the question is how large it is next to the seed-to-seed spread that
the study's intervals already carry.

A point is compared when both studies have finished it and trained it themselves (a main point that reused a
search run is the same training as that search row and is counted once). Its labels must agree (``SAME``:
arm, model, group, preset, fraction, seed, width, depth, parameters, max steps), else it is not the same
training and an error names it. Learning rates are compared but may differ (another search winner): such
points are marked, and the summary is given over all compared points and over those at the same rate.

Per point ``d = test mF1(B) − test mF1(A)``. Summary: n, mean d with a 95 % percentile bootstrap interval over
points (fixed RNG seed), sd of d, mean and largest |d|, and the yardstick: the median over A's cells
(arm × fraction with at least two seeds) of the sample std of test mF1 over seeds. If the studies differed
only by noise of the seed kind, sd of d would be about √2 × that std. The best validation mF1 (what picks the
learning rate and the threshold) is summarised the same way.

The learning rate each arm's search chose is set side by side too, with the validation score of every searched
value in both studies: the choice is a comparison of validation scores that are themselves subject to this noise.

Where both studies have a report (``contrasts.csv``), the contrasts are set side by side: each study's paired
difference with its interval, paired seeds and reading, and whether the two readings agree — does the study's
answer survive a second realization of the same grid? Contrasts with fewer paired seeds in one report than the
other (an unfinished grid) are counted apart: their intervals are not comparable yet.
"""
from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

#: labels that make two rows the same training (learning_rate is compared separately)
SAME = ("arm", "model", "group", "preset", "fraction", "seed", "width", "depth", "parameters", "max_steps")
FIELDS = ["point", "arm", "fraction", "seed", "lr_a", "lr_b", "same_lr", "test_mF1_a", "test_mF1_b", "diff",
          "best_val_mF1_a", "best_val_mF1_b"]


def trained_here(row: Mapping[str, str]) -> bool:
    """Whether a row is its own training (not a main point that reused a search run)."""
    return row.get("source_point", "") in ("", row["point"])


def compare_rows(a: Mapping[str, Mapping[str, str]], b: Mapping[str, Mapping[str, str]]) -> list[dict[str, Any]]:
    """One dict per point finished and trained in both (order of ``a``); raises ``ValueError`` on a label
    mismatch, naming the point and the label."""
    out = []
    for point, ra in a.items():
        rb = b.get(point)
        if rb is None or not (trained_here(ra) and trained_here(rb)):
            continue
        for key in SAME:
            if ra.get(key, "") != rb.get(key, ""):
                raise ValueError(f"point {point}: {key} is {ra.get(key)!r} in the first study and {rb.get(key)!r} "
                                 f"in the second; compare needs the same trainings")
        lr_a, lr_b = float(ra["learning_rate"]), float(rb["learning_rate"])
        ta, tb = float(ra["test_mF1"]), float(rb["test_mF1"])
        out.append({"point": point, "arm": ra["arm"], "fraction": float(ra["fraction"]), "seed": int(ra["seed"]),
                    "lr_a": lr_a, "lr_b": lr_b, "same_lr": lr_a == lr_b, "test_mF1_a": ta, "test_mF1_b": tb,
                    "diff": round(tb - ta, 6), "best_val_mF1_a": float(ra["best_val_mF1"]),
                    "best_val_mF1_b": float(rb["best_val_mF1"])})
    return out


def seed_std(rows: Mapping[str, Mapping[str, str]]) -> float | None:
    """Median over cells (arm × fraction of the main points, ≥ 2 seeds) of the sample std of test mF1."""
    cells: dict[tuple[str, str], list[float]] = {}
    for r in rows.values():
        if r["stage"] == "main":
            cells.setdefault((r["arm"], r["fraction"]), []).append(float(r["test_mF1"]))
    stds = [statistics.stdev(v) for v in cells.values() if len(v) >= 2]
    return statistics.median(stds) if stds else None


def summarize(diffs: Sequence[float], replicates: int = 10000, seed: int = 0) -> dict[str, Any]:
    """n, mean d and its 95 % bootstrap interval over points, sd of d (n − 1), mean |d|, max |d|."""
    d = np.asarray(diffs, dtype=np.float64)
    if d.size == 0:
        return {"n": 0}
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(replicates, d.size))].mean(axis=1)
    return {"n": int(d.size), "mean": float(d.mean()), "lo": float(np.percentile(means, 2.5)),
            "hi": float(np.percentile(means, 97.5)), "sd": float(d.std(ddof=1)) if d.size > 1 else math.nan,
            "mean_abs": float(np.abs(d).mean()), "max_abs": float(np.abs(d).max())}


def summary_line(label: str, s: Mapping[str, Any]) -> str:
    if not s["n"]:
        return f"{label}: no points"
    return (f"{label}: n {s['n']}, mean d {s['mean']:+.4f} [{s['lo']:+.4f}, {s['hi']:+.4f}], sd of d {s['sd']:.4f}, "
            f"mean |d| {s['mean_abs']:.4f}, max |d| {s['max_abs']:.4f}")


def compare_text(name_a: str, name_b: str, table: Sequence[Mapping[str, Any]], yardstick: float | None) -> str:
    """The per-point table and the summary lines."""
    lines = [f"test mF1 of the points trained in both {name_a} (a) and {name_b} (b); d = b − a",
             f"{'point':<28} {'lr a':>7} {'lr b':>7} {'a':>8} {'b':>8} {'d':>8}"]
    for r in table:
        mark = "" if r["same_lr"] else "  (other learning rate)"
        lines.append(f"{r['point']:<28} {r['lr_a']:>7g} {r['lr_b']:>7g} {r['test_mF1_a']:>8.4f} "
                     f"{r['test_mF1_b']:>8.4f} {r['diff']:>+8.4f}{mark}")
    lines.append(summary_line("all points", summarize([r["diff"] for r in table])))
    if not all(r["same_lr"] for r in table):
        lines.append(summary_line("same learning rate", summarize([r["diff"] for r in table if r["same_lr"]])))
    val = summarize([r["best_val_mF1_b"] - r["best_val_mF1_a"] for r in table])
    if val["n"]:
        lines.append(f"best validation mF1, the same way: mean d {val['mean']:+.4f}, sd of d {val['sd']:.4f}, "
                     f"max |d| {val['max_abs']:.4f}")
    if yardstick is not None:
        lines.append(f"yardstick: median seed std of test mF1 over {name_a}'s cells {yardstick:.4f} "
                     f"(√2 × = {math.sqrt(2) * yardstick:.4f}, the sd of d that seed-like noise would give)")
    return "\n".join(lines)


#: :func:`util.study.points.choose_lr`'s result: the chosen rate (None while the search is unfinished) and
#: the validation mF1 of every searched value
LrChoice = tuple[float | None, dict[float, float]]


def lr_choices_text(name_a: str, name_b: str, a: Mapping[str, LrChoice], b: Mapping[str, LrChoice]) -> str:
    """Per arm searched in both: the learning rate each study chose and the validation mF1 of every value
    (``a`` and ``b`` map arm → :func:`util.study.points.choose_lr`'s result). Arms whose search is unfinished in
    either study are left out."""
    arms = [arm for arm in a if arm in b and a[arm][0] is not None and b[arm][0] is not None and a[arm][1]]
    if not arms:
        return "learning rates: no arm's search finished in both studies"
    lines = [f"learning rate chosen on validation in {name_a} (a) and {name_b} (b), validation mF1 per value:"]
    differ = 0

    def scores(v: Mapping[float, float]) -> str:
        return " ".join(f"{k:g}:{x:.4f}" for k, x in v.items())

    for arm in arms:
        (lr_a, va), (lr_b, vb) = a[arm], b[arm]
        differ += lr_a != lr_b
        lines.append(f"{arm:<20} a {lr_a:<7g} b {lr_b:<7g} a [{scores(va)}]  b [{scores(vb)}]"
                     + ("" if lr_a == lr_b else "  (other choice)"))
    lines.append(f"the choice differs in {differ} of {len(arms)} arms")
    return "\n".join(lines)


CONTRAST_KEY = ("kind", "arm", "vs", "fraction")


def read_contrasts(path: Path) -> dict[tuple[str, ...], dict[str, str]]:
    """``contrasts.csv`` by (kind, arm, vs, fraction); empty when the study has no report yet."""
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        return {tuple(r[k] for k in CONTRAST_KEY): r for r in csv.DictReader(f)}


def contrasts_text(name_a: str, name_b: str, a: Mapping[tuple[str, ...], Mapping[str, str]],
                   b: Mapping[tuple[str, ...], Mapping[str, str]]) -> str:
    """Each contrast both reports have: its difference [interval] (paired seeds) in a and in b, and whether the
    readings agree. A contrast with fewer paired seeds in one report (an unfinished grid) is counted apart: its
    interval is narrower for want of seeds, so its reading is not yet comparable."""
    both = [k for k in a if k in b]
    if not both:
        return f"contrasts: none in both reports ({name_a}: {len(a)}, {name_b}: {len(b)})"
    lines = [f"contrasts (paired differences, 95 % intervals, paired seeds) in {name_a} (a) and {name_b} (b):"]
    agree = uneven = 0

    def cell(r: Mapping[str, str]) -> str:
        interval = f"[{float(r['ci_low']):+.3f}, {float(r['ci_high']):+.3f}]"
        return f"{float(r['diff']):+.3f} {interval} ({r.get('seeds', '?')})"

    for k in both:
        ra, rb = a[k], b[k]
        same = ra["reading"] == rb["reading"]
        agree += same
        uneven += ra.get("seeds") != rb.get("seeds")
        lines.append(f"({k[0]}) {k[1]} − {k[2]} at {k[3]}: a {cell(ra)}, b {cell(rb)}: "
                     + ("the same reading" if same else f"a: {ra['reading']}; b: {rb['reading']}"))
    lines.append(f"readings agree in {agree} of {len(both)} contrasts"
                 + (f"; {uneven} of them have fewer paired seeds in one study than in the other (an unfinished "
                    "grid): their readings are not comparable yet" if uneven else ""))
    return "\n".join(lines)


def write_table(path: Path, table: Sequence[Mapping[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, lineterminator="\n")
        w.writeheader()
        w.writerows(table)
    return path
