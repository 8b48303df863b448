"""``report``: every table, figure and sentence of a study from ``runs.csv`` and ``points/`` (plus any run
folders present that finished but were not recorded yet).

Writes ``results/<study>/summary.csv`` (one row per arm × fraction), ``results/<study>/contrasts.csv`` (the
paired contrasts), ``results/<study>/README.md`` and the figures in ``visualization/<study>/``. Statistics
are in :mod:`util.study.stats`; the bootstrap uses the study's fixed RNG seed, so the report is reproducible.
"""
from __future__ import annotations

import math
import os
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from util.study import store
from util.study.points import choose_lr, fixed_lr_words, lr_point_id
from util.study.spec import CONTRAST_KINDS, Study
from util.study.stats import bootstrap_mf1, bootstrap_paired, counts_array, first_reach, mean_std

TEST_SETS = ("rot90", "rot180", "flip", "rot45")
NUMERIC = ["fraction", "seed", "width", "depth", "parameters", "macs_per_px", "learning_rate", "steps",
           "train_wall_s", "s_per_step", "test_mF1", "F1_BC", "F1_TC", "Dice_BC", "Dice_TC", "detection_F1",
           "val_mF1", "best_val_mF1", "equivariance_error"] + [f"mF1_{t}" for t in store.TRANSFORMS]


# ============================================================================================ inputs
def collect_run_folders(study: Study, echo: Callable[[str], None] = print) -> int:
    """Record finished run folders that have no row yet (and reuses); the number recorded."""
    from util.study.runner import Runner, point_status
    from util.study.points import expand_points

    try:
        points = expand_points(study, store.read_rows(store.runs_csv(study)))
    except (FileNotFoundError, ValueError) as e:  # e.g. the data root is not on this machine
        echo(f"run folders not scanned ({e})")
        return 0
    rows = store.read_rows(store.runs_csv(study))
    pending = [p for p in points if point_status(p, rows) in ("harvest", "reuse")]
    if pending:
        Runner(study, echo=echo).refresh()
    return len(pending)


def load_results(study: Study) -> tuple[pd.DataFrame, dict[str, dict[str, Any]]]:
    """``runs.csv`` as a typed table and the points records by point id."""
    rows = store.read_rows(store.runs_csv(study))
    df = pd.DataFrame(list(rows.values()))
    if df.empty:
        df = pd.DataFrame(columns=store.ROW_FIELDS)
    for c in NUMERIC + ["time_to_target_s", "steps_to_target", "target_mF1"]:
        df[c] = pd.to_numeric(df[c], errors="coerce")
    return df, store.read_point_records(study)


def target(study: Study, df: pd.DataFrame) -> float | None:
    """The time-to-target threshold: the study's ``target_mf1``, else the runs' own."""
    if study.target_mf1 is not None:
        return study.target_mf1
    t = df["target_mF1"].dropna()
    return float(t.iloc[0]) if len(t) else None


# ============================================================================================ tables
def cell_summary(study: Study, df: pd.DataFrame, records: Mapping[str, dict]) -> pd.DataFrame:
    """One row per arm × fraction over the seeds: mean ± std, bootstrap interval, transforms, time."""
    main = df[df["stage"] == "main"]
    tgt = target(study, df)
    out = []
    for arm in study.arms:
        for f in study.fractions:
            cell = main[(main["arm"] == arm.label) & np.isclose(main["fraction"], f)].sort_values("seed")
            if cell.empty:
                continue
            recs = [records[p] for p in cell["point"] if p in records]
            boot = bootstrap_mf1(counts_array(recs)[0], study.bootstrap_replicates, study.bootstrap_seed) \
                if recs else {"estimate": math.nan, "low": math.nan, "high": math.nan}
            m, s = mean_std(cell["test_mF1"])
            reach_t = [first_reach(r["history"], tgt) for r in recs]
            reach_k = [first_reach(r["history"], tgt, "step") for r in recs]
            row = {"arm": arm.label, "model": cell["model"].iloc[0], "group": cell["group"].iloc[0],
                   "preset": cell["preset"].iloc[0], "comparison": arm.comparison, "fraction": f,
                   "seeds": len(cell), "width": cell["width"].iloc[0], "parameters": cell["parameters"].iloc[0],
                   "macs_per_px": cell["macs_per_px"].iloc[0], "learning_rate": cell["learning_rate"].iloc[0],
                   "mF1_mean": m, "mF1_std": s, "mF1_from_counts": boot["estimate"], "mF1_ci_low": boot["low"],
                   "mF1_ci_high": boot["high"]}
            for c in ["F1_BC", "F1_TC", "Dice_BC", "Dice_TC", "detection_F1"] + [f"mF1_{t}" for t in TEST_SETS] \
                    + ["equivariance_error", "s_per_step", "train_wall_s"]:
                row[f"{c}_mean"] = mean_std(cell[c])[0]
            row.update({"target_mF1": tgt, "time_to_target_s_median": _nanmedian(reach_t),
                        "steps_to_target_median": _nanmedian(reach_k),
                        "reached": f"{sum(np.isfinite(reach_t))}/{len(recs)}"})
            out.append(row)
    return pd.DataFrame(out)


def _nanmedian(values: list[float]) -> float:
    x = [v for v in values if np.isfinite(v)]
    return float(np.median(x)) if x else math.nan


def contrast_table(study: Study, df: pd.DataFrame, records: Mapping[str, dict]) -> pd.DataFrame:
    """Paired differences ``arm − vs`` of test mF1 per contrast and fraction (same seeds, same test images)."""
    main = df[df["stage"] == "main"]
    out = []
    for c in study.contrasts:
        for f in study.fractions:
            a, b = _points_by_seed(main, c.arm, f, records), _points_by_seed(main, c.vs, f, records)
            common = sorted(set(a) & set(b))
            row = {"kind": c.kind, "arm": c.arm, "vs": c.vs, "match": c.match, "fraction": f, "seeds": len(common)}
            if common:
                recs_a, recs_b = [records[a[s]] for s in common], [records[b[s]] for s in common]
                ids = sorted(set.intersection(*(set(r["test_sets"]["test"]["ids"]) for r in recs_a + recs_b)))
                res = bootstrap_paired(counts_array(recs_a, ids=ids)[0], counts_array(recs_b, ids=ids)[0],
                                       study.bootstrap_replicates, study.bootstrap_seed)
                row.update({"images": len(ids), "diff": res["estimate"], "ci_low": res["low"], "ci_high": res["high"]})
            else:
                row.update({"images": 0, "diff": math.nan, "ci_low": math.nan, "ci_high": math.nan})
            row["reading"] = reading(row)
            out.append(row)
    return pd.DataFrame(out)


def _points_by_seed(main: pd.DataFrame, arm: str, fraction: float, records: Mapping[str, dict]) -> dict[int, str]:
    """Seed -> point id of the finished points (with a points file) of one arm × fraction."""
    part = main[(main["arm"] == arm) & np.isclose(main["fraction"], fraction)]
    return {int(s): p for s, p in zip(part["seed"], part["point"]) if p in records}


def reading(row: Mapping[str, Any]) -> str:
    """Plain words for one contrast row."""
    if not row["seeds"] or not np.isfinite(row["diff"]):
        return "not run yet"
    if row["ci_low"] > 0:
        return f"{row['arm']} better"
    if row["ci_high"] < 0:
        return f"{row['vs']} better"
    return "no clear difference (the interval includes 0)"


def lr_table(study: Study, df: pd.DataFrame) -> pd.DataFrame:
    """Validation mF1 of every searched learning rate per arm, and the chosen one."""
    rows = {p: r for p, r in zip(df["point"], df.to_dict("records"))}
    out = []
    for arm in study.arms:
        chosen, scores = choose_lr(study, arm.label, rows)
        row = {"arm": arm.label, **{f"lr={v:g}": rows.get(lr_point_id(arm.label, v), {}).get("val_mF1")
                                     for v in study.lr_values}}
        row["chosen"] = f"{chosen:g}" if chosen is not None else "search unfinished"
        out.append(row)
    return pd.DataFrame(out)


# ========================================================================================= markdown
def fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    if isinstance(v, (float, np.floating)):
        return f"{v:.{digits}f}"
    return str(v)


def markdown_table(df: pd.DataFrame, columns: Mapping[str, Callable[[Mapping], Any]]) -> str:
    """A Markdown table with the given ``header -> value of a row`` columns."""
    if df.empty:
        return "_(no finished points yet)_\n"
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in df.to_dict("records"):
        lines.append("| " + " | ".join(fmt(f(r)) if not isinstance(f(r), str) else f(r) for f in columns.values())
                     + " |")
    return "\n".join(lines) + "\n"


def ci(r: Mapping, lo: str, hi: str) -> str:
    return f"[{fmt(r[lo])}, {fmt(r[hi])}]" if np.isfinite(r[lo]) else "–"


def readme_text(study: Study, df: pd.DataFrame, summary: pd.DataFrame, contrasts: pd.DataFrame,
                lrs: pd.DataFrame, figures: Mapping[str, str]) -> str:
    """The study's ``results/<study>/README.md``."""
    from util.study.points import base_config

    base = base_config(study)
    commits = sorted({str(c)[:10] for c in df["git_commit"].dropna() if str(c)}) or ["–"]
    devices = sorted({str(d) for d in df["device"].dropna() if str(d)}) or ["–"]
    tgt = target(study, df)
    lr_words = (f"each arm searched the learning rate over {study.lr_values} on seed {study.lr_seed} at data "
                f"fraction {study.lr_fraction:g}; the value with the best validation mF1 (at the threshold chosen "
                f"on validation) is used for every fraction and seed" if study.lr_values
                else fixed_lr_words(study))
    parts = [
        f"# Study `{study.name}`\n",
        f"Generated by `python -m util.study report {study.path}` from `runs.csv` and `points/` "
        f"({len(df[df['stage'] == 'main'])} finished grid points, {len(df[df['stage'] == 'lr'])} search runs; "
        f"git {', '.join(commits)}; device {', '.join(devices)}). Do not edit by hand.\n",
        "## Setup\n",
        f"- Recipe: `{os.path.relpath(study.base)}` with the study's overrides; data `{base.data.root}`.",
        f"- Budget: the same **{study.max_steps} optimizer steps** for every arm (batch {base.data.batch_size}, "
        f"{base.data.crop_size}² crops); wall-clock time is measured, not equalised"
        + (f"; validation about every {study.val_every_steps} steps." if study.val_every_steps else "."),
        f"- Learning rate: {lr_words}.",
        "- Detection thresholds are chosen on validation for every run (`detection.threshold: auto`).",
        f"- Fractions {study.fractions}, seeds {study.seeds} (each seed also draws its own training subset).",
        *([f"- CPU numerics: every training ran under the `{study.numerics}` mode of `util/numerics.py` (the "
           f"settings each row ran with are in `points/*.json`; `reproduce` sets them again)."]
          if study.numerics else []),
        "- Intervals: 95 % percentile bootstrap over seeds and test images "
        f"({study.bootstrap_replicates} replicates, RNG seed {study.bootstrap_seed}); mF1 recomputed from the "
        "summed per-image TP/FP/FN by the OCELOT rule. Mean ± std are over seeds of each run's test mF1.\n",
        "## Arms\n",
        markdown_table(summary.drop_duplicates("arm"), {
            "arm": lambda r: r["arm"], "model": lambda r: r["model"], "group": lambda r: r["group"] or "–",
            "preset": lambda r: r["preset"], "width": lambda r: f"{r['width']:g}" if np.isfinite(r["width"]) else "–",
            "parameters": lambda r: f"{int(r['parameters']):,}" if np.isfinite(r["parameters"]) else "–",
            "MACs/px": lambda r: f"{r['macs_per_px']:,.0f}" if np.isfinite(r["macs_per_px"]) else "–",
            "comparison": lambda r: r["comparison"], "lr": lambda r: f"{r['learning_rate']:g}"}),
        "Equal compute means the same channels per level (same `width`, `depth`); MACs/px (convolutions of one "
        "eval forward, `FlopCounterMode` / 2) show what that costs per arm. Equal parameters: a plain U-Net "
        "narrowed with `model.width_for_params` to the named arm's parameter count.\n",
    ]
    if study.lr_values:
        parts += ["## Learning-rate search (validation mF1)\n",
                  markdown_table(lrs, {c: (lambda r, c=c: r[c]) for c in lrs.columns})]
    parts += ["## Test mF1\n", markdown_table(summary, {
        "arm": lambda r: r["arm"], "fraction": lambda r: f"{r['fraction']:g}", "seeds": lambda r: str(r["seeds"]),
        "mF1 mean ± std": lambda r: f"{fmt(r['mF1_mean'])} ± {fmt(r['mF1_std'])}",
        "95 % CI": lambda r: ci(r, "mF1_ci_low", "mF1_ci_high"), "F1 BC": lambda r: r["F1_BC_mean"],
        "F1 TC": lambda r: r["F1_TC_mean"], "Dice BC": lambda r: r["Dice_BC_mean"],
        "Dice TC": lambda r: r["Dice_TC_mean"], "detection F1": lambda r: r["detection_F1_mean"]})]
    parts += contrast_sections(contrasts)
    parts += ["## Rotated and flipped test images (mean test mF1 over seeds)\n", markdown_table(summary, {
        "arm": lambda r: r["arm"], "fraction": lambda r: f"{r['fraction']:g}", "original": lambda r: r["mF1_mean"],
        **{t: (lambda r, t=t: r[f"mF1_{t}_mean"]) for t in TEST_SETS},
        "equivariance error": lambda r: f"{r['equivariance_error_mean']:.2g}"
        if np.isfinite(r["equivariance_error_mean"]) else "–"}),
        "Equivariance error: the trained net's max over the elements of its group (D4 for plain nets) of "
        "max |Φ(g·x) − g·Φ(x)| / max |Φ(x)| on a central test crop (`model.equivariance.equivariance_error`). "
        "Non-grid elements (C8's 45° rotations) are interpolated, so resampling alone gives errors of order 0.1–1 "
        "there; the rot90/rot180/flip columns show which scores are exactly invariant on the pixel grid.\n"]
    parts += [f"## Time efficiency (target validation mF1 {fmt(tgt)})\n", markdown_table(summary, {
        "arm": lambda r: r["arm"], "fraction": lambda r: f"{r['fraction']:g}", "s/step": lambda r: r["s_per_step_mean"],
        "train wall (s)": lambda r: fmt(r["train_wall_s_mean"], 0),
        "time to target (s, median)": lambda r: fmt(r["time_to_target_s_median"], 0),
        "steps to target (median)": lambda r: fmt(r["steps_to_target_median"], 0),
        "reached": lambda r: r["reached"]}),
        "Wall-clock numbers include validation during training and depend on the machine and on how many runs "
        "shared it; compare arms within one study.\n"]
    parts += timing_section(study, summary)
    parts += ["## Figures\n"] + [f"- {what}: [{name}]({path})" for name, (path, what) in figures.items()] + [""]
    return "\n".join(parts)


def timing_section(study: Study, summary: pd.DataFrame) -> list[str]:
    """Per-arm training cost timed on an idle machine (``timing.csv``) with its ratio to the first arm, and
    the compute time to target: median steps to target × that s/step (free of what shared the machine)."""
    path = store.timing_csv(study)
    if not path.is_file():
        return []
    timing = pd.read_csv(path)
    if timing.empty:
        return []
    by_arm = dict(zip(timing["arm"], timing["s_per_step"]))
    ref_arm = next((a.label for a in study.arms if a.label in by_arm), None)
    ref = by_arm.get(ref_arm)
    rows = summary.copy()
    rows["quiet_s_per_step"] = rows["arm"].map(by_arm)
    dev = ", ".join(sorted({f"{d}, {int(t)} thread(s)" if d == "cpu" else str(d)
                            for d, t in zip(timing["device"], timing["threads"].fillna(0))}))
    return [f"### Compute per step on an idle machine (`plan --save-timing`: {dev}; "
            f"{timing['measured_at'].iloc[0]})\n",
            markdown_table(rows, {
                "arm": lambda r: r["arm"], "fraction": lambda r: f"{r['fraction']:g}",
                "s/step": lambda r: fmt(r["quiet_s_per_step"], 3),
                f"× {ref_arm}": lambda r: fmt(r["quiet_s_per_step"] / ref, 2) if ref else "–",
                "compute time to target (s, median steps × s/step)":
                    lambda r: fmt(r["steps_to_target_median"] * r["quiet_s_per_step"], 0)}),
            "The training step alone (forward, loss, backward, optimizer) at the study's batch and crop, median of "
            "a few timed steps; validation is not included.\n"]


def contrast_sections(contrasts: pd.DataFrame) -> list[str]:
    """The three contrasts: a table each and one sentence per row."""
    parts = ["## The three contrasts (paired differences of test mF1, arm − vs)\n"]
    if contrasts.empty:
        return parts + ["_(no contrasts defined in the study file)_\n"]
    for kind, question in CONTRAST_KINDS.items():
        part = contrasts[contrasts["kind"] == kind]
        if part.empty:
            continue
        parts.append(f"### ({kind}) {question}\n")
        parts.append(markdown_table(part, {
            "arm": lambda r: r["arm"], "vs": lambda r: r["vs"], "match": lambda r: r["match"] or "–",
            "fraction": lambda r: f"{r['fraction']:g}", "seeds": lambda r: str(r["seeds"]),
            "Δ mF1": lambda r: f"{r['diff']:+.3f}" if np.isfinite(r["diff"]) else "–",
            "95 % CI": lambda r: ci(r, "ci_low", "ci_high"), "reading": lambda r: r["reading"]}))
        for r in part.to_dict("records"):
            if np.isfinite(r["diff"]):
                parts.append(f"- At {r['fraction']:.0%} of the training data, `{r['arm']}` scored "
                             f"{r['diff']:+.3f} mF1 against `{r['vs']}`{' (' + r['match'] + ')' if r['match'] else ''}"
                             f", 95 % CI {r['ci_low']:+.3f} to {r['ci_high']:+.3f}, over {r['seeds']} paired seeds "
                             f"and {r['images']} test images: {r['reading']}.")
        parts.append("")
    return parts


# ============================================================================================= entry
def study_tables(study: Study) -> dict[str, Any]:
    """The report's tables from the committed files alone, writing nothing: ``runs`` (one row per point),
    ``summary`` (arm × fraction), ``contrasts`` and ``lr`` (the learning-rate search), and the point
    ``records``."""
    df, records = load_results(study)
    return {"runs": df, "summary": cell_summary(study, df, records), "contrasts": contrast_table(study, df, records),
            "lr": lr_table(study, df), "records": records}


def report(study: Study, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Write ``summary.csv``, ``contrasts.csv``, ``README.md`` and the figures; return the tables."""
    from util.study.figures import make_figures

    collect_run_folders(study, echo)
    t = study_tables(study)
    df, records, summary, contrasts, lrs = t["runs"], t["records"], t["summary"], t["contrasts"], t["lr"]
    out = study.study_results
    out.mkdir(parents=True, exist_ok=True)
    summary.to_csv(out / "summary.csv", index=False)
    contrasts.to_csv(out / "contrasts.csv", index=False)
    figures = make_figures(study, df, summary, contrasts, records, target(study, df))
    links = {name: (os.path.relpath(path, out), what) for name, (path, what) in figures.items()}
    (out / "README.md").write_text(readme_text(study, df, summary, contrasts, lrs, links))
    echo(f"wrote {out / 'summary.csv'}, {out / 'contrasts.csv'}, {out / 'README.md'} and "
         f"{len(figures)} figures in {study.study_figures}")
    return {"summary": summary, "contrasts": contrasts, "lr": lrs, "figures": figures}
