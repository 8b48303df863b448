"""OCELOT metric on hand-made cases (expected P/R/F1 worked out by hand), detection and Dice/IoU."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from util.metrics import SegmentationAccumulator, cell_detection_scores, cutoff_px, detect_cells


def segmentation_scores(pred: torch.Tensor, target: torch.Tensor, num_classes: int = 3) -> dict[str, dict[str, float]]:
    """Dice and IoU per class of one batch ``(B, H, W)`` of label maps (see :class:`SegmentationAccumulator`)."""
    acc = SegmentationAccumulator(num_classes)
    acc.update(pred, target)
    return acc.compute()


def P(*rows):
    """Prediction array N×4 (x, y, class, confidence)."""
    return np.array(rows, dtype=float).reshape(-1, 4)


def G(*rows):
    """Ground-truth array M×3 (x, y, class)."""
    return np.array(rows, dtype=float).reshape(-1, 3)


def check(scores, cls, p, r, f1, tp=None, fp=None, fn=None):
    s = scores[cls]
    assert s["precision"] == pytest.approx(p, abs=1e-4), s
    assert s["recall"] == pytest.approx(r, abs=1e-4), s
    assert s["f1"] == pytest.approx(f1, abs=1e-4), s
    for key, val in (("tp", tp), ("fp", fp), ("fn", fn)):
        if val is not None:
            assert s[key] == val, (key, s)


def test_exact_hits():
    s = cell_detection_scores([P((10, 10, 1, 0.9), (50, 50, 2, 0.8))], [G((10, 10, 1), (50, 50, 2))])
    check(s, "BC", 1, 1, 1, tp=1, fp=0, fn=0)
    check(s, "TC", 1, 1, 1, tp=1, fp=0, fn=0)
    assert s["mF1"] == pytest.approx(1.0, abs=1e-4)


def test_cutoff_boundary_inclusive():
    # one BC cell per image at (100, 100); predictions 14, 15 (inclusive -> hit) and 16 px away (miss)
    gts = [G((100, 100, 1))] * 3
    preds = [P((114, 100, 1, 0.9)), P((100, 115, 1, 0.9)), P((116, 100, 1, 0.9))]
    s = cell_detection_scores(preds, gts, cutoff=15)
    # BC: TP = 2, FP = 1, GT = 3 -> P = 2/3, R = 2/3, F1 = 2/3
    check(s, "BC", 2 / 3, 2 / 3, 2 / 3, tp=2, fp=1, fn=1)
    # TC: nothing predicted, nothing there -> the official rule gives 0, 0, 0
    check(s, "TC", 0, 0, 0, tp=0, fp=0, fn=0)
    assert s["mF1"] == pytest.approx(1 / 3, abs=1e-4)
    # a diagonal near-miss: (11, 11) from the origin is 15.56 px > 15 -> miss; (10, 11) is 14.87 -> hit
    s = cell_detection_scores([P((11, 11, 2, 0.5)), P((10, 11, 2, 0.5))], [G((0, 0, 2)), G((0, 0, 2))])
    check(s, "TC", 0.5, 0.5, 0.5, tp=1, fp=1, fn=1)


def test_cutoff_parameter_and_per_image_cutoffs():
    gts = [G((0, 0, 1)), G((0, 0, 1))]
    preds = [P((20, 0, 1, 1.0)), P((20, 0, 1, 1.0))]
    check(cell_detection_scores(preds, gts, cutoff=15), "BC", 0, 0, 0)
    check(cell_detection_scores(preds, gts, cutoff=25), "BC", 1, 1, 1)
    # per-image cut-offs: 25 px for the first image, 15 px for the second -> TP 1, FP 1, GT 2
    check(cell_detection_scores(preds, gts, cutoff=[25, 15]), "BC", 0.5, 0.5, 0.5)
    assert cutoff_px(0.2) == pytest.approx(15.0)
    assert cutoff_px(0.5) == pytest.approx(6.0)
    with pytest.raises(ValueError, match="mpp"):
        cutoff_px(0)


def test_wrong_class():
    # BC cell predicted as TC: an FP for TC and an FN for BC; a correct TC elsewhere
    s = cell_detection_scores([P((10, 10, 2, 0.9), (60, 60, 2, 0.8))], [G((10, 10, 1), (60, 60, 2))])
    check(s, "BC", 0, 0, 0, tp=0, fp=0, fn=1)
    # TC: TP 1, FP 1, GT 1 -> P = 1/2, R = 1, F1 = 2·0.5·1/1.5 = 2/3
    check(s, "TC", 0.5, 1.0, 2 / 3, tp=1, fp=1, fn=0)
    assert s["mF1"] == pytest.approx(1 / 3, abs=1e-4)


def test_one_prediction_near_two_cells_takes_the_nearest():
    # GT b = (40, 20) listed before a = (20, 20). p1 = (28, 20): 8 px from a, 12 px from b -> takes a.
    # p2 = (10, 20): 10 px from a (taken), 30 px from b (out of range) -> FP. b stays unmatched -> FN.
    s = cell_detection_scores([P((28, 20, 1, 0.9), (10, 20, 1, 0.5))], [G((40, 20, 1), (20, 20, 1))])
    # TP 1, FP 1, GT 2 -> P = 0.5, R = 0.5, F1 = 0.5 (matching p1 to b instead would give 1, 1, 1)
    check(s, "BC", 0.5, 0.5, 0.5, tp=1, fp=1, fn=1)


def test_confidence_order_decides():
    # GT a = (50, 50), b = (50, 70), both TC. p_lo = (50, 45) conf 0.3 is listed first and is nearest to a;
    # p_hi = (50, 58) conf 0.9: 8 px from a, 12 px from b. By confidence p_hi goes first and takes a (nearest),
    # then p_lo finds a taken and b 25 px away -> FP. TP 1, FP 1, GT 2 -> P = R = F1 = 0.5.
    # (In list order p_lo would take a and p_hi b: P = R = F1 = 1.)
    s = cell_detection_scores([P((50, 45, 2, 0.3), (50, 58, 2, 0.9))], [G((50, 50, 2), (50, 70, 2))])
    check(s, "TC", 0.5, 0.5, 0.5, tp=1, fp=1, fn=1)
    # swapping the confidences lets p_lo go first: it takes a, p_hi takes b -> all hits
    s = cell_detection_scores([P((50, 45, 2, 0.9), (50, 58, 2, 0.3))], [G((50, 50, 2), (50, 70, 2))])
    check(s, "TC", 1, 1, 1, tp=2, fp=0, fn=0)


def test_empty_predictions():
    s = cell_detection_scores([P(), np.zeros((0, 4))], [G((1, 1, 1), (30, 30, 1)), G((5, 5, 2))])
    check(s, "BC", 0, 0, 0, tp=0, fp=0, fn=2)
    check(s, "TC", 0, 0, 0, tp=0, fp=0, fn=1)
    assert s["mF1"] == 0


def test_empty_ground_truth():
    s = cell_detection_scores([P((1, 1, 1, 0.9), (40, 40, 2, 0.2))], [G()])
    check(s, "BC", 0, 0, 0, tp=0, fp=1, fn=0)
    check(s, "TC", 0, 0, 0, tp=0, fp=1, fn=0)


def test_counts_are_summed_over_images_not_averaged():
    # image 1: one BC found; image 2: three BC missed. Summed: TP 1, FP 0, GT 4 -> P = 1, R = 1/4,
    # F1 = 2·1·0.25/1.25 = 0.4 (averaging per-image F1 would give (1 + 0)/2 = 0.5)
    s = cell_detection_scores([P((5, 5, 1, 0.9)), P()], [G((5, 5, 1)), G((1, 1, 1), (50, 50, 1), (90, 90, 1))])
    check(s, "BC", 1.0, 0.25, 0.4, tp=1, fp=0, fn=3)


def test_other_classes_ignored_and_bad_input():
    s = cell_detection_scores([P((5, 5, 3, 0.9), (5, 5, 1, 0.8))], [G((5, 5, 1))])
    check(s, "BC", 1, 1, 1)
    with pytest.raises(ValueError, match="prediction"):
        cell_detection_scores([P()], [])
    with pytest.raises(ValueError, match=r"predictions\[0\]"):
        cell_detection_scores([np.zeros((2, 3))], [G()])
    with pytest.raises(ValueError, match="NaN"):
        cell_detection_scores([P((np.nan, 1, 1, 1))], [G()])


def _official_transcription(pred_all, gt_all, cutoff):
    """The official OCELOT 2023 eval.py logic, transcribed structure-for-structure (cross-check)."""
    results = []
    for pred, gt in zip(pred_all, gt_all):
        one = {}
        for cls_idx in (1, 2):
            pred_cls = np.array([p for p in pred if p[2] == cls_idx], np.float32)
            gt_cls = np.array([g for g in gt if g[2] == cls_idx], np.float32)
            if len(gt_cls) == 0:
                gt_cls = np.zeros(shape=(0, 3))
            if len(pred_cls) == 0:
                distance = np.zeros([0, len(gt_cls)])
                confidence = np.zeros([0, len(gt_cls)])
            else:
                distance = np.linalg.norm(pred_cls[:, :2].reshape([-1, 1, 2]) - gt_cls[:, :2].reshape([1, -1, 2]),
                                          axis=2)
                confidence = pred_cls[:, 3]
            one[cls_idx] = (distance, confidence)
        results.append(one)
    scores = {}
    for cls_idx, name in ((1, "BC"), (2, "TC")):
        n_gt = n_tp = n_fp = 0
        for one in results:
            distance, confidence = one[cls_idx]
            num_pred, num_gt = distance.shape
            order = np.argsort(-confidence)
            mask = distance <= cutoff
            for i in order:
                nb = mask[i].nonzero()[0]
                if len(nb) == 0:
                    n_fp += 1
                else:
                    j = min(nb, key=lambda k: distance[i, k])
                    n_tp += 1
                    mask[:, j] = False
            n_gt += num_gt
        p = n_tp / (n_tp + n_fp + 1e-7)
        r = n_tp / (n_gt + 1e-7)
        f = 2 * p * r / (p + r + 1e-7)
        scores[name] = (round(p, 4), round(r, 4), round(f, 4))
    return scores


def test_matches_transcription_of_official_script_on_random_data():
    rng = np.random.default_rng(0)
    preds, gts = [], []
    for _ in range(6):
        n, m = rng.integers(0, 40), rng.integers(0, 40)
        gts.append(np.c_[rng.integers(0, 128, (m, 2)), rng.integers(1, 3, m)].astype(float))
        # distinct confidences so that the (unstable) argsort order is unambiguous
        conf = rng.permutation(n) / max(n, 1) + 0.001
        preds.append(np.c_[rng.integers(0, 128, (n, 2)), rng.integers(1, 3, n), conf].astype(float))
    ours = cell_detection_scores(preds, gts, cutoff=15)
    ref = _official_transcription(preds, gts, 15)
    for name in ("BC", "TC"):
        assert (ours[name]["precision"], ours[name]["recall"], ours[name]["f1"]) == pytest.approx(ref[name])
    assert ours["BC"]["tp"] > 0 and ours["BC"]["fp"] > 0  # the random case exercises both outcomes


def _blob_probs(points, h=96, w=96, sigma=2.5):
    """Softmax-like probability maps with a Gaussian blob of the given class at each point."""
    yy, xx = np.mgrid[:h, :w]
    cells = np.zeros((3, h, w))
    for x, y, c in points:
        cells[c] = np.maximum(cells[c], 0.95 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2)))
    probs = np.zeros((3, h, w))
    probs[1:] = cells[1:]
    probs[0] = 1 - cells[1:].sum(0)
    return torch.tensor(probs, dtype=torch.float32)


def test_detect_cells_finds_blobs_with_classes():
    pts = [(20, 30, 1), (60, 30, 2), (70, 75, 2), (15, 80, 1)]
    det = detect_cells(_blob_probs(pts), min_distance=4, threshold=0.5, sigma=1.0)
    assert det.shape == (4, 4)
    s = cell_detection_scores([det], [np.array(pts, float)], cutoff=2)
    assert s["mF1"] == pytest.approx(1.0, abs=1e-4)
    assert ((det[:, 3] > 0.5) & (det[:, 3] <= 1)).all()
    # below threshold -> nothing
    assert detect_cells(_blob_probs(pts) * torch.tensor([1, 0.3, 0.3])[:, None, None] +
                        torch.tensor([1, 0, 0])[:, None, None] * 0.7, threshold=0.5).shape == (0, 4)
    with pytest.raises(ValueError, match="shape"):
        detect_cells(torch.zeros(96, 96))


def test_detect_cells_min_distance_merges_close_peaks():
    det = detect_cells(_blob_probs([(40, 40, 1), (44, 40, 1)], sigma=1.0), min_distance=6, sigma=0.0)
    assert len(det) == 1
    det = detect_cells(_blob_probs([(40, 40, 1), (50, 40, 1)], sigma=1.0), min_distance=3, sigma=0.0)
    assert len(det) == 2


def test_segmentation_scores_by_hand():
    pred = torch.tensor([[[0, 1, 1], [2, 2, 0]]])
    target = torch.tensor([[[0, 1, 0], [2, 0, 0]]])
    s = segmentation_scores(pred, target)
    # background: |P|=2, |T|=4, overlap 2 -> Dice 4/6, IoU 2/4; BC: |P|=2, |T|=1, overlap 1 -> 2/3, 1/2;
    # TC: |P|=2, |T|=1, overlap 1 -> 2/3, 1/2
    for name in ("background", "BC", "TC"):
        assert s["dice"][name] == pytest.approx(2 / 3, abs=1e-6)
        assert s["iou"][name] == pytest.approx(0.5, abs=1e-6)
    # accumulating two batches equals one batch of both; an absent class is NaN
    acc = SegmentationAccumulator()
    acc.update(pred, target)
    acc.update(torch.zeros(1, 2, 3, dtype=torch.long), torch.zeros(1, 2, 3, dtype=torch.long))
    s2 = acc.compute()
    assert s2["dice"]["BC"] == pytest.approx(2 / 3, abs=1e-6)
    assert s2["dice"]["background"] == pytest.approx(2 * 8 / (8 + 10), abs=1e-6)
    assert np.isnan(segmentation_scores(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2))["dice"]["TC"])
