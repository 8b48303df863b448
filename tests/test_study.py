"""util.study: study files, points, the runner (jobs, kill + resume, skip), the report and its statistics."""
from __future__ import annotations

import csv
import itertools
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from util.config import ConfigError
from util.study import (Runner, bootstrap_mf1, bootstrap_paired, cell_summary, child_env, choose_lr,
                        contrast_table, counts_array, expand_points, f1_from_counts, first_reach, in_shard,
                        load_results, load_study, macs_per_pixel, mean_std, median_curve_by_step,
                        median_curve_by_time, mf1_from_counts, point_status, read_rows, runs_csv, upsert_row)
from util.study.__main__ import main as study_main
from util.study.store import lock_path, write_point_record

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


# ============================================================================== points, shards, runner
def test_points_reuse_the_winning_search_run_and_split_into_shards(tmp_path, tiny_ocelot_root):
    cfg = write_study(tmp_path / "s.yaml", tiny_ocelot_root, tmp_path, fractions=[0.5, 1.0], seeds=[0, 1])
    study = load_study(cfg)
    waiting = expand_points(study)
    assert [p.stage for p in waiting] == ["lr"] * 4 + ["main"] * 8
    assert all(p.config is None and point_status(p, {}) in ("waiting", "reuse-wait") for p in waiting[4:])
    rows = {p.id: {"val_mF1": v, "config_hash": p.config.config_hash()}
            for p, v in zip(waiting[:4], (0.4, 0.5, 0.7, 0.6))}
    points = expand_points(study, rows)
    main = {p.id: p for p in points if p.stage == "main"}
    assert main["plain_none-f1-s0"].source == "lr-plain_none-0.01"
    assert main["moment_none-f1-s0"].source == "lr-moment_none-0.003"
    assert main["plain_none-f0.5-s1"].source is None and main["plain_none-f0.5-s1"].learning_rate == 0.01
    assert point_status(main["plain_none-f1-s0"], rows) == "reuse"
    assert main["plain_none-f0.5-s1"].config.data.subset_seed == 1
    assert main["plain_none-f0.5-s1"].config.data.subset_fraction == 0.5
    shards = [{p.id for p in points if in_shard(p, (i, 3))} for i in range(3)]
    assert set().union(*shards) == {p.id for p in points} and sum(map(len, shards)) == len(points)
    assert {p.id for p in points if p.index % 3 == 1} == shards[1]


def test_matched_arm_gets_the_target_parameter_count(tmp_path, tiny_ocelot_root):
    from model import build_model, count_parameters

    arms = [{"label": "moment_none", "model": {"name": "moment_unet", "kwargs": {"group": "D4", "width": 8}},
             "preset": "none"},
            {"label": "plain_pm", "preset": "none", "match_params": "moment_none"}]
    study = load_study(write_study(tmp_path / "s.yaml", tiny_ocelot_root, tmp_path, arms=arms, contrasts=[],
                                   lr_search=None))
    pts = {p.arm.label: p for p in expand_points(study)}
    target = count_parameters(build_model("moment_unet", group="D4", width=8, depth=2))
    got = count_parameters(build_model("unet", **pts["plain_pm"].config.model.kwargs))
    assert pts["plain_pm"].width != 8 and abs(got - target) <= 0.05 * target
    assert pts["plain_pm"].arm.comparison == "equal_params:moment_none"


def test_choose_lr_takes_the_best_validation_score_and_waits_for_all():
    study = SimpleNamespace(lr_values=[1e-3, 3e-3, 1e-2])
    rows = {"lr-a-0.001": {"val_mF1": "0.5"}, "lr-a-0.003": {"val_mF1": "0.62"}}
    assert choose_lr(study, "a", rows)[0] is None
    rows["lr-a-0.01"] = {"val_mF1": "0.62"}  # tie: the value listed first wins
    lr, scores = choose_lr(study, "a", rows)
    assert lr == 3e-3 and scores == {1e-3: 0.5, 3e-3: 0.62, 1e-2: 0.62}
    rows["lr-a-0.001"] = {"val_mF1": ""}  # a run without a score never wins
    assert choose_lr(study, "a", rows)[0] == 3e-3


def test_max_minutes_zero_starts_nothing(tmp_path, tiny_ocelot_root):
    study = load_study(write_study(tmp_path / "s.yaml", tiny_ocelot_root, tmp_path))
    said: list[str] = []
    assert Runner(study, jobs=2, max_minutes=0, echo=said.append).run() == 0
    assert not any(s.startswith("start") for s in said) and "4 pending" in said[-1]
    assert not list((tmp_path / "runs").glob("tiny_study/*/config.yaml"))


def test_child_env_sets_threads_and_gpu():
    e = child_env(3, "1")
    assert e["OMP_NUM_THREADS"] == e["MKL_NUM_THREADS"] == "3" and e["CUDA_VISIBLE_DEVICES"] == "1"
    assert child_env(1, None).get("CUDA_VISIBLE_DEVICES") == os.environ.get("CUDA_VISIBLE_DEVICES")


def test_load_study_rejects_bad_files(tmp_path, tiny_ocelot_root):
    bad = [{"lerning_rate": 1}, {"arms": [{"label": "a", "match_params": "nope"}]},
           {"contrasts": [{"kind": "d", "arm": "plain_none", "vs": "plain_none"}]},
           {"arms": [{"label": "a"}, {"label": "a"}]}, {"budget": {}}, {"fractions": [1.5]}]
    for i, change in enumerate(bad):
        with pytest.raises(ConfigError):
            load_study(write_study(tmp_path / f"bad{i}.yaml", tiny_ocelot_root, tmp_path, **change))


@pytest.mark.parametrize("name", ["brca_cpu", "brca_gpu", "ocelot_gpu"])
def test_shipped_study_files_describe_the_fair_arms(name):
    study = load_study(REPO / "configs" / "study" / f"{name}.yaml")
    arms = {a.label: a for a in study.arms}
    assert {("unet", "none"), ("unet", "flips_rot90"), ("unet", "full"), ("moment_unet", "none"),
            ("moment_unet", "flips_rot90"), ("escnn_unet", "none")} <= {(a.model, a.preset) for a in study.arms}
    for eq in ("moment_d4_none", "escnn_c8_none"):  # narrowed plain arms with and without augmentation
        assert {arms[a].preset for a in arms if arms[a].match_params == eq} == {"none", "flips_rot90"}
    assert {c.kind for c in study.contrasts} == {"a", "b", "c"}
    assert len(study.seeds) >= 3 and 1.0 in study.fractions and len(study.lr_values) == 3
    if name == "brca_cpu":
        assert study.fractions == [0.25, 1.0] and arms["plain_none"].kwargs["width"] >= 16
    else:
        assert study.fractions == [0.1, 0.25, 0.5, 1.0] and len(study.seeds) == 5


# ========================================================================================== statistics
def test_f1_from_counts_by_the_ocelot_rule():
    assert f1_from_counts([8, 2, 2]) == pytest.approx(0.8, abs=1e-6)  # P = R = 0.8
    assert f1_from_counts([0, 0, 0]) == 0.0 and f1_from_counts([0, 5, 5]) == 0.0
    assert f1_from_counts([3, 1, 0]) == pytest.approx(2 * 0.75 * 1 / 1.75, abs=1e-6)
    assert mf1_from_counts([[8, 2, 2], [3, 1, 0]]) == pytest.approx((0.8 + 1.5 / 1.75) / 2, abs=1e-6)


def _record(point: str, ids, bc, tc, steps=(), times=(), val=()):
    return {"point": point, "study": "fake", "labels": {}, "config_hash": "x", "run_id": point,
            "source_point": point, "history": {"step": list(steps), "elapsed_s": list(times), "val_mF1": list(val)},
            "test_sets": {"test": {"ids": list(ids), "BC": [list(c) for c in bc], "TC": [list(c) for c in tc]}}}


def test_counts_array_aligns_images_by_id():
    a = _record("a", ["1", "2"], [[1, 0, 0], [2, 0, 0]], [[0, 1, 0], [0, 2, 0]])
    b = _record("b", ["2", "1", "3"], [[5, 0, 0], [4, 0, 0], [9, 9, 9]], [[0, 5, 0], [0, 4, 0], [9, 9, 9]])
    counts, ids = counts_array([a, b])
    assert ids == ["1", "2"] and counts.shape == (2, 2, 2, 3)
    assert counts[1, :, 0, 0].tolist() == [4, 5] and counts[0, :, 1, 1].tolist() == [1, 2]


def test_bootstrap_of_a_constant_is_that_constant():
    counts = np.tile(np.array([[6, 2, 1], [3, 3, 3]], float), (3, 4, 1, 1))  # 3 seeds, 4 images, all equal
    value = float(mf1_from_counts(counts.sum(axis=1))[0])
    res = bootstrap_mf1(counts, replicates=500, seed=1)
    assert res["estimate"] == pytest.approx(value) and res["low"] == pytest.approx(value)
    assert res["high"] == pytest.approx(value)
    diff = bootstrap_paired(counts, counts, replicates=200)
    assert (diff["estimate"], diff["low"], diff["high"]) == (0.0, 0.0, 0.0)


def test_bootstrap_matches_brute_force_enumeration():
    """2 seeds × 2 images: the 16 equally likely (seed draw, image draw) outcomes, enumerated."""
    counts = np.array([[[[5, 1, 0], [2, 2, 2]], [[1, 3, 4], [0, 1, 3]]],
                       [[[6, 0, 1], [3, 1, 1]], [[2, 2, 2], [1, 0, 2]]]], float)
    values = []
    for seeds in itertools.product(range(2), repeat=2):
        for images in itertools.product(range(2), repeat=2):
            values.append(np.mean([mf1_from_counts(counts[s][list(images)].sum(axis=0)) for s in seeds]))
    res = bootstrap_mf1(counts, replicates=8000, seed=0)
    assert res["low"] == pytest.approx(min(values)) and res["high"] == pytest.approx(max(values))
    assert res["replicates"].mean() == pytest.approx(np.mean(values), abs=0.005)
    assert res["estimate"] == pytest.approx(np.mean([mf1_from_counts(counts[s].sum(axis=0)) for s in range(2)]))
    a = bootstrap_mf1(counts, replicates=300, seed=7)["replicates"]
    assert np.array_equal(a, bootstrap_mf1(counts, replicates=300, seed=7)["replicates"])  # reproducible


def test_paired_bootstrap_sees_a_consistent_gain():
    rng = np.random.default_rng(0)
    b = rng.integers(1, 10, size=(3, 6, 2, 3)).astype(float)
    a = b.copy()
    a[..., 0] += 3  # three more true positives on every image, class and seed
    res = bootstrap_paired(a, b, replicates=1000)
    assert 0 < res["low"] <= res["estimate"] <= res["high"]
    with pytest.raises(ValueError):
        bootstrap_paired(a, b[:2])


def test_mean_std_over_seeds():
    assert mean_std([0.5, 0.6, 0.7]) == pytest.approx((0.6, 0.1))
    m, s = mean_std([0.4, float("nan")])
    assert m == 0.4 and np.isnan(s)


def test_summary_and_contrasts_from_hand_written_points(tmp_path, tiny_ocelot_root):
    study = load_study(write_study(tmp_path / "s.yaml", tiny_ocelot_root, tmp_path, fractions=[1.0],
                                   seeds=[0, 1, 2], lr_search=None, target_mf1=0.6))
    ids = ["a", "b"]
    cells = {"moment_none": ([[8, 2, 2], [8, 2, 2]], [[3, 1, 0], [3, 1, 0]]),  # mF1 (0.8 + 6/7) / 2
             "plain_none": ([[1, 1, 0], [1, 1, 0]], [[1, 0, 1], [1, 0, 1]])}  # F1 2/3 and 2/3
    scores = {"moment_none": [0.8, 0.82, 0.84], "plain_none": [0.6, 0.6, 0.6]}
    for arm, (bc, tc) in cells.items():
        for seed, score in zip(study.seeds, scores[arm]):
            pid = f"{arm}-f1-s{seed}"
            write_point_record(study, _record(pid, ids, bc, tc, [2, 4], [1.0, 2.0], [0.3, 0.7]))
            upsert_row(runs_csv(study), {"point": pid, "stage": "main", "arm": arm, "fraction": 1.0, "seed": seed,
                                         "test_mF1": score, "model": "m", "preset": "none"}, lock_path(study))
    df, records = load_results(study)
    summary = cell_summary(study, df, records).set_index("arm")
    assert summary.loc["moment_none", "mF1_mean"] == pytest.approx(0.82)
    assert summary.loc["moment_none", "mF1_std"] == pytest.approx(0.02)
    assert summary.loc["plain_none", "mF1_std"] == pytest.approx(0.0)
    good = (0.8 + 6 / 7) / 2
    assert summary.loc["moment_none", "mF1_ci_low"] == pytest.approx(good, abs=1e-6)
    assert summary.loc["moment_none", "mF1_ci_high"] == pytest.approx(good, abs=1e-6)
    assert summary.loc["plain_none", "time_to_target_s_median"] == 2.0  # val mF1 0.7 >= 0.6 at t = 2 s
    (row,) = contrast_table(study, df, records).to_dict("records")
    assert row["diff"] == pytest.approx(good - 2 / 3, abs=1e-6) and row["ci_low"] == pytest.approx(row["diff"])
    assert row["seeds"] == 3 and row["images"] == 2 and row["reading"] == "moment_none better"


def test_time_to_target_and_median_curves():
    h1 = {"step": [10, 20, 30], "elapsed_s": [5.0, 10.0, 15.0], "val_mF1": [0.2, 0.5, 0.6]}
    h2 = {"step": [10, 20, 30], "elapsed_s": [4.0, 8.0, 12.0], "val_mF1": [0.4, 0.3, 0.7]}
    h3 = {"step": [10, 20, 30], "elapsed_s": [6.0, 12.0, 18.0], "val_mF1": [0.1, 0.2, 0.3]}
    assert first_reach(h1, 0.5) == 10.0 and first_reach(h1, 0.5, "step") == 20 and np.isnan(first_reach(h3, 0.5))
    steps, med = median_curve_by_step([h1, h2, h3])
    assert steps.tolist() == [10, 20, 30] and med.tolist() == [0.2, 0.3, 0.6]
    t, m = median_curve_by_time([h1, h2], n=16)  # grid 0, 1, ..., 15 s (the longer run's end)
    assert t.tolist() == list(range(16)) and np.isnan(m[3])  # before any validation
    assert m[4] == pytest.approx(0.4)  # only h2 has validated
    assert m[10] == pytest.approx((0.5 + 0.3) / 2)
    assert m[15] == pytest.approx((0.6 + 0.7) / 2)  # h2 ended at 12 s: its last value counts after that


def test_macs_per_pixel_counts_convolutions():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert macs_per_pixel(conv, 16) == 3 * 8 * 9
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 2, 1))
    assert macs_per_pixel(net, 16) == 3 * 4 * 9 + 4 * 2 / 4  # the 1×1 conv runs on a quarter of the pixels


def _upsert_many(args) -> None:
    path, lock, worker = args
    for k in range(15):
        upsert_row(Path(path), {"point": f"w{worker}-{k}", "test_mF1": k / 10}, Path(lock))


def test_concurrent_writers_keep_every_row(tmp_path):
    path, lock = tmp_path / "runs.csv", tmp_path / ".lock"
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2) as pool:
        pool.map(_upsert_many, [(str(path), str(lock), w) for w in range(2)])
    rows = read_rows(path)
    assert len(rows) == 30 and rows["w1-14"]["test_mF1"] == "1.4"
