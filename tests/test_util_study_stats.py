"""util.study statistics and stores: F1 from counts, bootstrap intervals, summaries and contrasts from hand-written
points, time to target and median curves, MACs per pixel, concurrent writers of runs.csv."""
from __future__ import annotations

import itertools
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
from torch import nn

from tests.test_study import write_study
from util.study import (bootstrap_mf1, bootstrap_paired, cell_summary, contrast_table, counts_array, f1_from_counts,
                        first_reach, load_results, load_study, macs_per_pixel, mean_std, median_curve_by_step,
                        median_curve_by_time, mf1_from_counts, read_rows, runs_csv, upsert_row)
from util.study.store import lock_path, write_point_record


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
