"""What survives a study without its run folders: ``results/<study>/runs.csv`` and ``points/<point>.json``.

* ``runs.csv``: one row per finished point (columns :data:`ROW_FIELDS`), written under a file lock by
  read-modify-replace (temporary file + ``os.replace``), so concurrent jobs and shards never lose or tear a row.
* ``points/<point>.json``: the point's labels, validation curve (step, wall-clock seconds, val mF1) and per
  test image TP/FP/FN per class for every test set (``test``, ``test_rot90``, ...), the inputs of the report's
  bootstrap and curves. Written before the row: a row always has its points file.
"""
from __future__ import annotations

import csv
import fcntl
import io
import json
import math
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

from util.files import atomic_write
from util.study.points import Point
from util.study.spec import Study

#: columns of ``runs.csv`` (labels, cost, scores, time efficiency, provenance)
ROW_FIELDS = [
    "point", "stage", "study", "arm", "model", "group", "preset", "fraction", "seed", "comparison",
    "width", "depth", "parameters", "macs_per_px", "learning_rate", "max_steps", "steps", "train_wall_s",
    "s_per_step", "device", "threads",
    "test_mF1", "F1_BC", "F1_TC", "Dice_BC", "Dice_TC", "detection_F1",
    "mF1_rot90", "mF1_rot180", "mF1_rot270", "mF1_flip", "mF1_rot45",
    "val_mF1", "best_val_mF1", "threshold", "min_distance_um",
    "target_mF1", "time_to_target_s", "steps_to_target", "equivariance_group", "equivariance_error",
    "config_hash", "run_id", "source_point", "git_commit", "git_dirty", "finished_at",
]
TRANSFORMS = ("rot90", "rot180", "rot270", "flip", "rot45")


# ============================================================================================ runs.csv
def runs_csv(study: Study) -> Path:
    return study.study_results / "runs.csv"


def points_dir(study: Study) -> Path:
    return study.study_results / "points"


def timing_csv(study: Study) -> Path:
    """``plan --save-timing``'s per-arm cost measured on an otherwise idle machine (see :func:`write_timing`)."""
    return study.study_results / "timing.csv"


TIMING_FIELDS = ["arm", "model", "width", "parameters", "macs_per_px", "s_per_step", "threads", "device",
                 "steps_timed", "measured_at"]


def write_timing(study: Study, rows: list[dict[str, Any]]) -> Path:
    """One row per arm (the first point of each): the training s/step timed by ``plan``. The runs' own wall
    times depend on what else shared the machine; this file is the clean compute comparison."""
    import time

    seen, out = set(), []
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    for r in rows:
        if r["arm"] in seen or r.get("s/step") is None:
            continue
        seen.add(r["arm"])
        out.append({"arm": r["arm"], "model": r["model"], "width": r["width"], "parameters": r["params"],
                    "macs_per_px": r["MACs/px"], "s_per_step": r["s/step"], "threads": r.get("threads"),
                    "device": r.get("device"), "steps_timed": r.get("steps_timed"), "measured_at": stamp})
    path = timing_csv(study)
    write_csv(path, TIMING_FIELDS, out, lineterminator="\n")
    return path


def write_csv(path: Path, fields: list[str], rows: list[Mapping[str, Any]], lineterminator: str = "\r\n") -> None:
    """Write ``rows`` (keys outside ``fields`` ignored) under a header, atomically (csv's default line end)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator=lineterminator)
    w.writeheader()
    w.writerows(rows)
    atomic_write(path, buf.getvalue())


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if missing) for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def read_rows(path: Path) -> dict[str, dict[str, str]]:
    """Rows of a ``runs.csv`` by point id (empty when the file is absent)."""
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        return {r["point"]: r for r in csv.DictReader(f)}



def upsert_row(path: Path, row: Mapping[str, Any], lock: Path) -> None:
    """Add ``row`` to ``runs.csv`` (replacing a row of the same point) under ``lock``, atomically."""
    with file_lock(lock):
        rows = [r for p, r in read_rows(path).items() if p != row["point"]]
        rows.append({k: _cell(row.get(k)) for k in ROW_FIELDS})
        write_csv(path, ROW_FIELDS, rows)


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(round(v, 6)) if v == v else ""
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(",", ":"))
    return v


def lock_path(study: Study) -> Path:
    """The lock beside the run folders (``runs/<study>/.runs.csv.lock``; not committed)."""
    return study.study_runs / ".runs.csv.lock"


# ===================================================================================== from a run folder
def run_dir(point: Point) -> Path:
    cfg = point.config
    assert cfg is not None, f"{point.id}: no configuration yet (learning-rate search unfinished)"
    return Path(cfg.runs_dir) / cfg.name / str(cfg.run_id)


def finished(point: Point) -> bool:
    """The point's run folder holds ``metrics.json`` (training and evaluation are done)."""
    return point.config is not None and (run_dir(point) / "metrics.json").is_file()


def read_history(path: Path) -> dict[str, list[float]]:
    """``history.csv`` as columns ``step``, ``elapsed_s``, ``val_mF1`` (empty lists when absent; a missing or
    non-finite value is None, so the points file stays valid JSON)."""
    out: dict[str, list] = {"step": [], "elapsed_s": [], "val_mF1": []}
    if not path.is_file():
        return out
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            for k in out:
                v = float(r[k]) if r.get(k) not in (None, "") else math.nan
                out[k].append(v if math.isfinite(v) else None)
    out["step"] = [int(s) for s in out["step"]]
    return out


def per_image_table(entry: Mapping[str, Any]) -> dict[str, list]:
    """``metrics[...]["per_image"]`` as ``{"ids": [...], "BC": [[tp, fp, fn], ...], "TC": [...]}``."""
    rows = entry.get("per_image") or []
    return {"ids": [r["id"] for r in rows], "BC": [list(r["BC"]) for r in rows], "TC": [list(r["TC"]) for r in rows]}


def point_row(point: Point, metrics: Mapping[str, Any], env: Mapping[str, Any], macs_per_px: float | None,
              study: Study) -> dict[str, Any]:
    """The ``runs.csv`` row of a finished point (see :data:`ROW_FIELDS`)."""
    cfg = point.config
    assert cfg is not None
    test = metrics.get("test") or {}
    cells = test.get("cells") or {}
    dice = test.get("dice") or {}
    det = metrics.get("detection") or {}
    eq = metrics.get("equivariance") or {}
    steps = metrics.get("steps") or 0
    wall = metrics.get("train_wall_s")
    git = env.get("git") or {}
    device = env.get("device") or {}
    row: dict[str, Any] = {
        "point": point.id, "stage": point.stage, "study": study.name, "arm": point.arm.label,
        "model": cfg.model.name, "group": metrics.get("group") or cfg.model.kwargs.get("group") or "",
        "preset": cfg.data.preset, "fraction": point.fraction, "seed": point.seed,
        "comparison": point.arm.comparison, "width": cfg.model.kwargs.get("width"),
        "depth": cfg.model.kwargs.get("depth"), "parameters": metrics.get("parameters"),
        "macs_per_px": macs_per_px, "learning_rate": cfg.learning_rate, "max_steps": metrics.get("max_steps"),
        "steps": steps, "train_wall_s": wall, "s_per_step": (wall / steps) if wall and steps else None,
        "device": _device_name(metrics, device), "threads": device.get("cpu_threads"),
        "test_mF1": test.get("mF1"), "F1_BC": (cells.get("BC") or {}).get("f1"),
        "F1_TC": (cells.get("TC") or {}).get("f1"), "Dice_BC": dice.get("BC"), "Dice_TC": dice.get("TC"),
        "detection_F1": (test.get("detection") or {}).get("f1"),
        "val_mF1": det.get("val_mF1", metrics.get("best_val_mF1")), "best_val_mF1": metrics.get("best_val_mF1"),
        "threshold": det.get("threshold"), "min_distance_um": det.get("min_distance_um"),
        "target_mF1": metrics.get("target_mF1"), "time_to_target_s": metrics.get("time_to_target_s"),
        "steps_to_target": metrics.get("steps_to_target"), "equivariance_group": eq.get("group"),
        "equivariance_error": eq.get("max"), "config_hash": cfg.config_hash(), "run_id": cfg.run_id,
        "source_point": point.id, "git_commit": git.get("commit"), "git_dirty": git.get("dirty"),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    for t in TRANSFORMS:
        row[f"mF1_{t}"] = (metrics.get(f"test_{t}") or {}).get("mF1")
    return row


def _device_name(metrics: Mapping[str, Any], device: Mapping[str, Any]) -> str:
    if metrics.get("device") == "cuda" and device.get("gpus"):
        return f"cuda:{device['gpus'][0]}"
    return str(metrics.get("device") or "cpu")


def point_record(point: Point, row: Mapping[str, Any], metrics: Mapping[str, Any],
                 history: Mapping[str, list], env: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``points/<point>.json`` document: labels, validation curve, per-image counts of every test set, the
    trained model's equivariance error per group element (``{"group", "crop", "max", "per_element": {"rot90":
    ...}}``: the row keeps only the max, which for C8 is an interpolated 45° rotation's), and the software and CPU
    it ran on (:func:`environment_summary`), so a rerun that differs can be told why."""
    tests = {k: per_image_table(v) for k, v in metrics.items()
             if (k == "test" or k.startswith("test_")) and isinstance(v, dict) and "per_image" in v}
    labels = {k: row[k] for k in ("stage", "arm", "model", "group", "preset", "fraction", "seed", "comparison",
                                  "learning_rate", "width", "parameters")}
    return {"point": point.id, "study": row["study"], "labels": labels, "config_hash": row["config_hash"],
            "run_id": row["run_id"], "source_point": row["source_point"], "history": dict(history),
            "test_sets": tests, "equivariance": metrics.get("equivariance"),
            "environment": environment_summary(env or {})}


def environment_summary(env: Mapping[str, Any]) -> dict[str, Any]:
    """What of a run's ``env.json`` decides its numbers: Python, package versions, CPU model and kernel
    instruction set, the numerics variables that were set, GPUs (no hostname, no other environment variables)."""
    device = env.get("device") or {}
    return {"python": env.get("python"), "packages": env.get("packages") or {},
            "cpu_model": device.get("cpu_model"), "cpu_capability": device.get("cpu_capability"),
            "numerics_settings": device.get("numerics_settings") or {}, "gpus": device.get("gpus")}


def environment_differences(committed: Mapping[str, Any] | None, rerun: Mapping[str, Any]) -> list[str]:
    """What differs between two :func:`environment_summary` documents, one line each (``"cpu_capability:
    'AVX2' → 'AVX512'"``); ``["not recorded ..."]`` when the committed one is missing or empty (rows trained
    before environments were kept). An empty list: same Python, packages, CPU, numerics settings and GPUs."""
    if not committed or not committed.get("python"):
        return ["not recorded for the committed row (trained before rows kept their environment)"]
    out = []
    for key in ("python", "cpu_model", "cpu_capability", "gpus"):
        if committed.get(key) != rerun.get(key):
            out.append(f"{key}: {committed.get(key)!r} → {rerun.get(key)!r}")
    old_pkgs, new_pkgs = committed.get("packages") or {}, rerun.get("packages") or {}
    for name in sorted(set(old_pkgs) & set(new_pkgs)):  # a package one side did not list is not a difference
        if old_pkgs[name] != new_pkgs[name]:
            out.append(f"{name}: {old_pkgs[name]!r} → {new_pkgs[name]!r}")
    old_set, new_set = committed.get("numerics_settings") or {}, rerun.get("numerics_settings") or {}
    for name in sorted(set(old_set) | set(new_set)):  # unset on one side is a difference
        if old_set.get(name) != new_set.get(name):
            out.append(f"{name}: {old_set.get(name)!r} → {new_set.get(name)!r}")
    return out


def write_point_record(study: Study, record: Mapping[str, Any]) -> Path:
    path = points_dir(study) / f"{record['point']}.json"
    atomic_write(path, json.dumps(record, separators=(",", ":")) + "\n")
    return path


def read_point_records(study: Study) -> dict[str, dict[str, Any]]:
    """Every ``points/*.json`` of the study by point id."""
    out = {}
    d = points_dir(study)
    for p in sorted(d.glob("*.json")) if d.is_dir() else []:
        doc = json.loads(p.read_text())
        out[doc["point"]] = doc
    return out


def harvest(study: Study, point: Point, macs_per_px: float | None) -> dict[str, Any]:
    """Turn a finished run folder into its points file and ``runs.csv`` row (in that order); return the row."""
    folder = run_dir(point)
    metrics = json.loads((folder / "metrics.json").read_text())
    env_path = folder / "env.json"
    env = json.loads(env_path.read_text()) if env_path.is_file() else {}
    row = point_row(point, metrics, env, macs_per_px, study)
    write_point_record(study, point_record(point, row, metrics, read_history(folder / "history.csv"), env))
    upsert_row(runs_csv(study), row, lock_path(study))
    return row


def alias(study: Study, point: Point, source_row: Mapping[str, Any]) -> dict[str, Any]:
    """Record main point ``point`` as the finished search point it equals (same configuration, same run)."""
    records = read_point_records(study)
    src = records.get(source_row["point"])
    row = dict(source_row) | {"point": point.id, "stage": "main", "source_point": source_row["point"],
                              "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if src is not None:
        rec = dict(src) | {"point": point.id, "source_point": source_row["point"]}
        rec["labels"] = dict(src["labels"]) | {"stage": "main"}
        write_point_record(study, rec)
    upsert_row(runs_csv(study), row, lock_path(study))
    return row
