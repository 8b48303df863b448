"""Detection thresholds chosen on validation (``detection.threshold: auto``) and the run's use of them."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from util.cells import (apply_threshold, choose_threshold, class_agnostic, class_thresholds, detection_scores,
                        resample_scale, resolve_threshold)
from util.config import ConfigError, DetectionConfig, load_config
from util.metrics import cell_detection_scores, detect_cells


def _random_probs(seed: int, h: int = 96, w: int = 80) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(1, 3, h // 8, w // 8, generator=g) * 3
    logits = torch.nn.functional.interpolate(logits, size=(h, w), mode="bicubic", align_corners=False)
    return logits.softmax(1)[0]


@pytest.mark.parametrize("seed", range(6))
def test_detecting_once_at_the_lowest_threshold_then_filtering_equals_detecting_at_each(seed):
    probs = _random_probs(seed)
    low = detect_cells(probs, min_distance=3, threshold=0.05, sigma=1.0)
    for t in (0.1, 0.3, 0.5, 0.7, 0.9):
        direct = detect_cells(probs, min_distance=3, threshold=t, sigma=1.0)
        np.testing.assert_array_equal(apply_threshold(low, t), direct)


def test_per_class_threshold_keeps_each_class_above_its_own_value():
    cells = np.array([[1, 1, 1, 0.3], [2, 2, 1, 0.6], [3, 3, 2, 0.3], [4, 4, 2, 0.45]], float)
    kept = apply_threshold(cells, {"BC": 0.5, "TC": 0.4})
    np.testing.assert_array_equal(kept[:, 0], [2, 4])
    assert class_thresholds(0.25) == {1: 0.25, 2: 0.25}
    with pytest.raises(ValueError, match="TC"):
        class_thresholds({"BC": 0.5})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        class_thresholds(2.0)
    with pytest.raises(ValueError, match="auto"):
        class_thresholds("auto")


def test_choose_threshold_finds_the_grid_optimum_by_hand():
    # image 1: two true cells of each class; predictions: true ones at 0.8, a false one per class at 0.4/0.6
    gt = [np.array([[10, 10, 1], [40, 10, 1], [10, 40, 2], [40, 40, 2]], float)]
    pred = [np.array([[10, 10, 1, 0.8], [40, 10, 1, 0.8], [70, 70, 1, 0.4],
                      [10, 40, 2, 0.8], [40, 40, 2, 0.3], [70, 10, 2, 0.6]], float)]
    # grid 0.2: BC 2 TP 1 FP -> F1 0.8; TC 2 TP 1 FP -> 0.8.  0.5: BC F1 1.0; TC 1 TP (0.8) 1 FP (0.6) 1 FN -> 0.5
    # 0.7: BC 1.0; TC 1 TP 0 FP 1 FN -> 0.667.  So the global optimum is 0.7 (mF1 0.8333)
    thr, info = choose_threshold(pred, gt, [5.0], grid=[0.2, 0.5, 0.7])
    assert thr == 0.7
    assert info["mF1"] == pytest.approx((1.0 + 2 / 3) / 2, abs=1e-4)
    assert [round(r[0], 2) for r in info["curve"]] == [0.2, 0.5, 0.7]
    # per class: BC best 0.5 or 0.7 (tie -> closest to 0.5), TC best 0.7 (0.667) vs 0.2 (0.8) -> 0.2
    # a tolerance makes near-best values ties, and ties go to the value closest to 0.5
    thr_tol, info_tol = choose_threshold(pred, gt, [5.0], grid=[0.2, 0.5, 0.7], tolerance=0.1)
    assert thr_tol == 0.5 and info_tol["mF1"] == pytest.approx(0.75, abs=1e-4)
    assert info_tol["best_mF1"] == pytest.approx(info["mF1"])
    assert choose_threshold(pred, gt, [5.0], grid=[0.2, 0.5, 0.7], tolerance=0.05)[0] == 0.7
    thr_pc, info_pc = choose_threshold(pred, gt, [5.0], grid=[0.2, 0.5, 0.7], per_class=True)
    assert thr_pc == {"BC": 0.5, "TC": 0.2}
    assert info_pc["mF1"] == pytest.approx((1.0 + 0.8) / 2, abs=1e-4)


def test_config_threshold_auto_is_the_default_and_values_are_checked():
    assert DetectionConfig().threshold == "auto"
    cfg = load_config("configs/default.yaml", ["detection.threshold=0.35"])
    assert cfg.detection.threshold == 0.35
    with pytest.raises(ConfigError, match="detection.threshold=2.0"):
        load_config("configs/default.yaml", ["detection.threshold=2"])
    with pytest.raises(ConfigError, match="detection.threshold='best'"):
        load_config("configs/default.yaml", ["detection.threshold=best"])
    with pytest.raises(ConfigError, match="detection.threshold_grid"):
        load_config("configs/default.yaml", ["detection.threshold_grid=[0.5, 1.5]"])
    with pytest.raises(ValueError, match="no threshold was chosen"):
        resolve_threshold(DetectionConfig(), None)
    assert resolve_threshold(DetectionConfig(threshold=0.4), 0.9) == 0.4


def test_resample_scale_and_class_agnostic_scores():
    assert resample_scale(0.5, 0.5) == 1.0
    assert resample_scale(0.52, 0.5) == 1.0  # within the 10 % tolerance
    assert resample_scale(0.25, 0.5) == 0.5
    assert resample_scale(0.25, None) == 1.0
    gt = [np.array([[10, 10, 1], [30, 30, 3]], float)]  # a class this toolkit does not know still counts as a cell
    pred = [np.array([[10, 11, 2, 0.9], [30, 30, 1, 0.8], [60, 60, 1, 0.7]], float)]
    s = detection_scores(pred, gt, [3.0])
    assert (s["tp"], s["fp"], s["fn"]) == (2, 1, 0)
    assert class_agnostic(np.zeros((0, 3))).shape == (0, 3)
    # the class-aware score sees no match: the first cell has the wrong class, the second an unknown one
    aware = cell_detection_scores(pred, gt, cutoff=3.0)
    assert aware["BC"]["tp"] == 0 and aware["TC"]["tp"] == 0


def test_auto_threshold_run_stores_it_and_uses_it_for_test_and_copies(tiny_ocelot_root, tmp_path):
    from util.training import evaluate, train

    cfg = load_config("configs/tiny.yaml", [f"data.root={tiny_ocelot_root}", f"runs_dir={tmp_path}",
                                            "max_steps=8", "detection.threshold_grid=[0.2, 0.4, 0.6, 0.8]"])
    assert cfg.detection.threshold == "auto"
    res = train(cfg, quiet=True)
    m = json.loads((res.run_dir / "metrics.json").read_text())
    det = m["detection"]
    assert det["chosen_on"] == "val" and det["threshold"] in (0.2, 0.4, 0.6, 0.8)
    curve = {round(r[0], 2): r[1] for r in det["curve"]}
    assert det["val_mF1"] == curve[det["threshold"]] >= max(curve.values()) - det["tolerance"]
    assert det["tolerance"] == 0.005
    assert m["test"]["n_images"] == 2 and "test_rot90" in m and m["threshold"] == det["threshold"]
    assert m["train_mpp"] == pytest.approx(0.2)
    assert sum(r["TC"][0] for r in m["test"]["per_image"]) == m["test"]["cells"]["TC"]["tp"]
    # util.evaluate reproduces the stored test scores with the stored threshold ...
    again = evaluate(res.run_dir, write=False, progress=False)
    assert again["test"]["mF1"] == m["test"]["mF1"] and again["test_flip"]["mF1"] == m["test_flip"]["mF1"]
    # ... and a fixed threshold can be asked for, written to its own file
    fixed = evaluate(res.run_dir, threshold=0.5, progress=False)
    assert fixed["threshold"] == 0.5 and (res.run_dir / "eval_test_t0.5.json").is_file()
    # the history records the validation threshold of every validation
    head = (res.run_dir / "history.csv").read_text().splitlines()
    assert "val_threshold" in head[0].split(",")


def test_fixed_threshold_run_uses_it(tiny_ocelot_root, tmp_path):
    from util.training import evaluate, train

    cfg = load_config("configs/tiny.yaml", [f"data.root={tiny_ocelot_root}", f"runs_dir={tmp_path}",
                                            "max_steps=2", "detection.threshold=0.3", "eval_transforms=[]"])
    res = train(cfg, quiet=True)
    assert res.metrics["detection"] == {"threshold": 0.3, "min_distance_um": 1.6, "chosen_on": None}
    assert res.metrics["threshold"] == 0.3
    # a threshold passed to the evaluation wins over the config's fixed one; "auto" chooses afresh on val
    assert evaluate(res.run_dir, threshold=0.7, write=False, progress=False)["threshold"] == 0.7
    fresh = evaluate(res.run_dir, threshold="auto", write=False, progress=False)
    assert fresh["detection"]["chosen_on"] == "val" and fresh["threshold"] == fresh["detection"]["threshold"]
