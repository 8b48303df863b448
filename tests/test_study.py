"""util.study end to end: plan, the runner (jobs, kill + resume, skip) and the report on a tiny trained study.

Without training: ``test_util_study_points.py`` (points, shards, study files) and ``test_util_study_stats.py``
(statistics, stores). ``write_study`` here is their tiny study file too.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from util.study import load_study, read_rows
from util.study.__main__ import main as study_main

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
MAX_STEPS = 12


def write_study(path: Path, root: Path, out: Path, **changes) -> Path:
    """A tiny study: plain and moment U-Nets without augmentation, a 2-value search, one fraction, one seed."""
    doc = {
        "study": "tiny_study", "base": str(TINY),
        "overrides": {"data": {"root": str(root)}, "eval_transforms": ["rot90", "flip"]},
        "budget": {"max_steps": MAX_STEPS, "val_every_steps": 2},
        "lr_search": {"values": [0.003, 0.01], "fraction": 1.0, "seed": 0},
        "fractions": [1.0], "seeds": [0],
        "runs_dir": str(out / "runs"), "results_dir": str(out / "results"), "figures_dir": str(out / "vis"),
        "arms": [{"label": "plain_none", "preset": "none"},
                 {"label": "moment_none", "model": {"name": "moment_unet", "kwargs": {"group": "D4"}},
                  "preset": "none"}],
        "contrasts": [{"kind": "b", "arm": "moment_none", "vs": "plain_none", "match": "equal compute"}],
    }
    doc.update(changes)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def env() -> dict[str, str]:
    e = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    e.pop("COMET_API_KEY", None)
    return e


def run_dirs(out: Path) -> list[Path]:
    return sorted(p.parent for p in (out / "runs" / "tiny_study").glob("*/config.yaml"))


def ckpt_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


# ================================================================================ the runner, end to end
@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory, tiny_ocelot_root):
    """plan; run --jobs 2 killed by SIGTERM once a checkpoint exists; run again (resume + the rest)."""
    out = tmp_path_factory.mktemp("study")
    cfg = write_study(out / "tiny_study.yaml", tiny_ocelot_root, out)
    ns = SimpleNamespace(out=out, cfg=cfg)
    ns.plan_rc = study_main(["plan", str(cfg), "--jobs", "2", "--threads", "2", "--steps", "1", "--save-timing"])

    proc = subprocess.Popen([sys.executable, "-m", "util.study", "run", str(cfg), "--jobs", "2", "--threads", "2"],
                            cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if any((d / "checkpoints" / "last.ckpt").is_file() for d in run_dirs(out)):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    ns.kill_out, _ = proc.communicate(timeout=240)
    ns.kill_rc = proc.returncode
    ns.after_kill = {d.name: {"ckpt": (d / "checkpoints" / "last.ckpt").is_file(),
                              "metrics": (d / "metrics.json").is_file(),
                              "step": ckpt_step(d / "checkpoints" / "last.ckpt")
                              if (d / "checkpoints" / "last.ckpt").is_file() else None} for d in run_dirs(out)}
    ns.rows_after_kill = set(read_rows(out / "results" / "tiny_study" / "runs.csv"))

    t0 = time.monotonic()
    rerun = subprocess.run([sys.executable, "-m", "util.study", "run", str(cfg), "--jobs", "2", "--threads", "2"],
                           cwd=REPO, env=env(), capture_output=True, text=True, timeout=400)
    ns.rerun_out, ns.rerun_rc, ns.rerun_s = rerun.stdout + rerun.stderr, rerun.returncode, time.monotonic() - t0
    return ns


@pytest.mark.slow  # shares the tiny_study fixture: about 80 s of real training subprocesses
def test_plan_lists_every_point_with_cost_and_estimate(tiny_study, capsys):
    assert tiny_study.plan_rc == 0
    # the fixture's plan output was printed before this test's capture started: plan again, without timing
    assert study_main(["plan", str(tiny_study.cfg), "--no-timing"]) == 0
    text = capsys.readouterr().out
    for pid in ("lr-plain_none-0.003", "lr-plain_none-0.01", "lr-moment_none-0.003", "lr-moment_none-0.01",
                "plain_none-f1-s0", "moment_none-f1-s0"):
        assert pid in text
    assert "MACs/px" in text and "6 points" in text


@pytest.mark.slow  # shares the tiny_study fixture: about 80 s of real training subprocesses
def test_plan_estimates_time_from_timed_steps(tiny_study):
    from util.study.planning import plan_rows, plan_totals

    rows = plan_rows(load_study(tiny_study.cfg), jobs=2, threads=2, steps=1, echo=lambda s: None)
    fresh = [r for r in rows if r["point"].startswith("lr-")]
    assert all(r["s/step"] > 0 and r["params"] > 0 and r["MACs/px"] > 0 for r in fresh)
    plain = next(r for r in rows if r["arm"] == "plain_none")
    moment = next(r for r in rows if r["arm"] == "moment_none")
    assert plain["params"] != moment["params"]
    totals = plan_totals([dict(r, status="pending") for r in rows], jobs=2, threads_per_run=1, device="cpu")
    assert totals["to_train"] == 6 and totals["run_hours"] > 0
    assert totals["device_hours"] == pytest.approx(totals["run_hours"])  # 1 thread per run
    assert totals["wall_hours"] == pytest.approx(totals["run_hours"] / 2)


@pytest.mark.slow  # shares the tiny_study fixture: about 80 s of real training subprocesses
def test_jobs_run_concurrently(tiny_study):
    lines = tiny_study.kill_out.splitlines()
    first_end = next((i for i, s in enumerate(lines) if s.startswith(("done", "stopped", "FAIL"))), len(lines))
    assert sum(s.startswith("start ") for s in lines[:first_end]) == 2, tiny_study.kill_out
    assert "1 thread(s)" in tiny_study.kill_out


@pytest.mark.slow  # shares the tiny_study fixture: about 80 s of real training subprocesses
def test_killed_run_stops_with_a_checkpoint_and_no_row(tiny_study):
    assert tiny_study.kill_rc == 143, tiny_study.kill_out
    stopped = {k: v for k, v in tiny_study.after_kill.items() if v["ckpt"] and not v["metrics"]}
    assert stopped, tiny_study.after_kill
    assert all(0 < v["step"] < MAX_STEPS for v in stopped.values())
    assert not {k.rsplit("-", 1)[0] for k in stopped} & tiny_study.rows_after_kill


@pytest.mark.slow  # shares the tiny_study fixture: about 80 s of real training subprocesses
def test_rerun_resumes_the_killed_run_and_finishes_every_point(tiny_study):
    assert tiny_study.rerun_rc == 0, tiny_study.rerun_out
    rows = read_rows(tiny_study.out / "results" / "tiny_study" / "runs.csv")
    assert len(rows) == 6
    stopped = [k for k, v in tiny_study.after_kill.items() if v["ckpt"] and not v["metrics"]]
    for run_id in stopped:
        log = (tiny_study.out / "runs" / "tiny_study" / "logs" / f"{run_id}.log").read_text()
        assert "resuming from" in log
        with open(tiny_study.out / "runs" / "tiny_study" / run_id / "history.csv") as f:
            steps = [int(r["step"]) for r in csv.DictReader(f)]
        killed_at = tiny_study.after_kill[run_id]["step"]
        # every validation is kept: those before the kill in the checkpoint, one the SIGTERM landed in is
        # finished first (FinishValidationOnStop), the rest ran in the resumed process, up to the budget
        assert steps == sorted(set(steps)) and steps[-1] == MAX_STEPS
        assert set(range(2, MAX_STEPS + 1, 2)) <= set(steps), (killed_at, steps)
    for pid in ("plain_none-f1-s0", "moment_none-f1-s0"):  # equal to a search run: reused, not trained
        assert rows[pid]["source_point"].startswith("lr-") and rows[pid]["stage"] == "main"
        assert rows[pid]["run_id"] == rows[rows[pid]["source_point"]]["run_id"]
    for r in rows.values():
        assert float(r["macs_per_px"]) > 0 and int(r["parameters"]) > 0 and r["config_hash"]
        assert r["test_mF1"] != "" and r["mF1_rot90"] != "" and r["git_commit"] != ""


@pytest.mark.slow  # shares the tiny_study fixture: about 80 s of real training subprocesses
def test_points_files_hold_curves_and_per_image_counts(tiny_study):
    pts = tiny_study.out / "results" / "tiny_study" / "points"
    assert len(list(pts.glob("*.json"))) == 6
    doc = json.loads((pts / "moment_none-f1-s0.json").read_text())
    steps = doc["history"]["step"]
    assert steps[-1] == MAX_STEPS and len(steps) >= MAX_STEPS // 2 - 1 and all(s % 2 == 0 for s in steps)
    assert len(doc["history"]["elapsed_s"]) == len(doc["history"]["val_mF1"]) == len(steps)
    assert set(doc["test_sets"]) == {"test", "test_rot90", "test_flip"}
    table = doc["test_sets"]["test"]
    assert len(table["ids"]) == 2 and all(len(c) == 3 for c in table["BC"] + table["TC"])
    eq = doc["equivariance"]  # every element, not only the row's max
    assert eq["group"] == "D4" and set(eq["per_element"]) >= {"rot90", "flip"} and eq["per_element"]["rot90"] < 1e-4
    env = doc["environment"]  # what a rerun elsewhere is compared against
    assert env["packages"]["torch"] and env["python"] and env["cpu_capability"]


@pytest.fixture(scope="module")
def results_only(tiny_study, tmp_path_factory):
    """The finished study's results copied to a fresh place whose runs folder is empty."""
    out = tmp_path_factory.mktemp("results_only")
    shutil.copytree(tiny_study.out / "results", out / "results")
    doc = yaml.safe_load(tiny_study.cfg.read_text())
    doc.update(runs_dir=str(out / "runs"), results_dir=str(out / "results"), figures_dir=str(out / "vis"))
    cfg = out / "tiny_study.yaml"
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
    return SimpleNamespace(out=out, cfg=cfg)


@pytest.mark.slow  # shares the tiny_study fixture: about 80 s of real training subprocesses
def test_finished_points_are_skipped_with_and_without_run_folders(tiny_study, results_only, capsys):
    before = {d: (d / "metrics.json").stat().st_mtime for d in run_dirs(tiny_study.out)}
    assert study_main(["run", str(tiny_study.cfg), "--jobs", "2"]) == 0
    assert study_main(["run", str(results_only.cfg), "--jobs", "2"]) == 0
    text = capsys.readouterr().out
    assert "start " not in text and text.count("6 done") == 2, text
    assert {d: (d / "metrics.json").stat().st_mtime for d in run_dirs(tiny_study.out)} == before
    assert not list((results_only.out / "runs").glob("tiny_study/*/config.yaml"))


@pytest.mark.slow  # shares the tiny_study fixture: about 80 s of real training subprocesses
def test_report_writes_tables_readme_and_figures_from_results_alone(results_only):
    assert study_main(["report", str(results_only.cfg)]) == 0
    res = results_only.out / "results" / "tiny_study"
    with open(res / "summary.csv") as f:
        summary = list(csv.DictReader(f))
    assert [r["arm"] for r in summary] == ["plain_none", "moment_none"] and all(r["seeds"] == "1" for r in summary)
    for r in summary:
        assert float(r["mF1_ci_low"]) <= float(r["mF1_from_counts"]) <= float(r["mF1_ci_high"])
    with open(res / "contrasts.csv") as f:
        (contrast,) = list(csv.DictReader(f))
    assert contrast["arm"] == "moment_none" and contrast["vs"] == "plain_none" and contrast["diff"] != ""
    readme = (res / "README.md").read_text()
    assert "## The three contrasts" in readme and "Learning-rate search" in readme and "12 optimizer steps" in readme
    # plan --save-timing: one row per arm; the report compares arms by it (ratio 1 for the first arm)
    with open(res / "timing.csv") as f:
        timing = {r["arm"]: r for r in csv.DictReader(f)}
    assert set(timing) == {"plain_none", "moment_none"} and all(float(r["s_per_step"]) > 0 for r in timing.values())
    assert timing["plain_none"]["threads"] == "1" and timing["plain_none"]["device"] == "cpu"
    assert "Compute per step on an idle machine" in readme and "| × plain_none |" in readme
    ratio = float(timing["moment_none"]["s_per_step"]) / float(timing["plain_none"]["s_per_step"])
    assert f"| {ratio:.2f} |" in readme and "| 1.00 |" in readme
    for name in ("mf1_vs_fraction", "val_curves", "transformed_test", "time_to_target", "contrasts"):
        png = results_only.out / "vis" / "tiny_study" / f"{name}.png"
        assert png.stat().st_size > 1000
        assert f"({os.path.relpath(png, res)})" in readme


@pytest.mark.slow  # shares the tiny_study fixture; trains one tiny point twice more (about 20 s)
def test_reproduce_trains_a_point_again_and_compares_with_its_row(tiny_study, tmp_path, capsys, monkeypatch):
    from util.study import store

    args = ["reproduce", str(tiny_study.cfg), "lr-plain_none-0.003", "--scratch", str(tmp_path / "re")]
    committed = (tiny_study.out / "results" / "tiny_study" / "runs.csv").read_bytes()
    assert study_main(args + ["--tolerance", "1e-5"]) == 0  # the same threads: the same numbers
    out = capsys.readouterr().out
    assert "within the tolerance 1e-05" in out and "lr-plain_none-0.003" in out
    assert "environment of lr-plain_none-0.003: the same" in out  # same machine, packages and settings
    assert (tiny_study.out / "results" / "tiny_study" / "runs.csv").read_bytes() == committed
    real = store.read_rows

    def shifted(path):
        rows = real(path)
        rows["lr-plain_none-0.003"]["test_mF1"] = str(float(rows["lr-plain_none-0.003"]["test_mF1"]) + 0.1)
        return rows

    monkeypatch.setattr(store, "read_rows", shifted)
    assert study_main(args) == 1  # a row the rerun does not match is reported
    assert "NOT within the tolerance 0.005" in capsys.readouterr().out
    monkeypatch.setattr(store, "read_rows", real)
    assert study_main(["reproduce", str(tiny_study.cfg), "lr-nope-1"]) == 1
    assert "not a point of study" in capsys.readouterr().err
