"""The shipped real default set (data/brca_m2c): a short training on it, evaluation on other resolutions and
class sets (``util.evaluate --data-root``)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import BRCA_M2C as BRCA


@pytest.fixture(scope="module")
def brca_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small plain U-Net trained briefly on brca_m2c (enough to detect cells; classes are not the point)."""
    from util.config import load_config
    from util.training import train

    runs = tmp_path_factory.mktemp("brca_runs")
    cfg = load_config("configs/default.yaml", [
        f"data.root={BRCA}", f"runs_dir={runs}", "name=brca_small", "model.kwargs={width: 8, depth: 3}",
        "data.crop_size=128", "data.batch_size=8", "max_steps=120", "val_every_n_epochs=5", "eval_transforms=[]",
        "learning_rate=3e-3", "warmup_steps=10", "progress_bar=false", "tracking=csv"])
    return train(cfg, quiet=True).run_dir


@pytest.mark.slow
def test_evaluation_at_another_resolution_keeps_class_agnostic_detection(brca_run, tmp_path):
    from util.convert import convert_resample
    from util.training import evaluate

    # the same 8 test patches at the original 0.5 µm/px (re-saved losslessly) and upsampled to 0.25 µm/px
    same = tmp_path / "same"
    fine = tmp_path / "fine"
    convert_resample(BRCA, same, mpp=0.5, splits=("test",), limit=8)
    convert_resample(BRCA, fine, mpp=0.25, splits=("test",), limit=8)
    assert json.loads((fine / "metadata.json").read_text())["sample_pairs"]["090"]["mpp"] == pytest.approx(0.25,
                                                                                                           abs=1e-3)
    a = evaluate(brca_run, data_root=same, transforms=[], progress=False)
    b = evaluate(brca_run, data_root=fine, transforms=[], progress=False)
    assert b["model_mpp"] == pytest.approx(0.5, abs=0.01)
    f_same, f_fine = a["test"]["detection"]["f1"], b["test"]["detection"]["f1"]
    assert f_same > 0.5, f"the briefly trained model should detect cells (class-agnostic F1 {f_same})"
    assert abs(f_same - f_fine) <= 0.03, (f_same, f_fine)
    # the points of the fine set are in its own pixel frame (twice the coordinates)
    pred = json.loads((brca_run / "predictions_fine" / "test.json").read_text())
    xs = [p["point"][0] for p in pred["points"]]
    assert max(xs) > 448
    # without resampling the model sees cells twice their trained size: detection degrades (the check has teeth)
    from util.training import evaluate_model, load_run

    run = load_run(brca_run)
    cfg = run.cfg.replace([f"data.root={fine}"])
    raw = evaluate_model(run.model, cfg, threshold=run.threshold, model_mpp=None, progress=False)
    assert raw["test"]["detection"]["f1"] < f_fine - 0.03


@pytest.mark.slow
def test_a_one_class_set_gets_detection_f1_as_headline(brca_run, tmp_path):
    from util.training import evaluate, format_metrics_table

    one = tmp_path / "one_class"
    shutil.copytree(BRCA, one, ignore=shutil.ignore_patterns("train", "val"))
    for csv in (one / "annotations" / "test" / "cell").glob("*.csv"):
        rows = [r.split(",") for r in csv.read_text().splitlines() if r.strip()]
        csv.write_text("".join(f"{x},{y},1\n" for x, y, _ in rows))
    res = evaluate(brca_run, data_root=one, transforms=[], progress=False, write=False)
    assert res["test"]["headline"] == "detection_f1" and res["classes_present"] == [1]
    assert "headline is class-agnostic detection F1" in format_metrics_table(res)
    both = evaluate(brca_run, transforms=[], progress=False, write=False)
    assert both["test"]["headline"] == "mF1" and both["classes_present"] == [1, 2]
    # class-agnostic detection does not depend on the labels' classes
    assert res["test"]["detection"] == both["test"]["detection"]


@pytest.mark.slow
def test_evaluate_cli_on_a_data_root_and_its_errors(brca_run, tmp_path, capsys):
    from util.evaluate import main

    assert main([str(brca_run), "--data-root", str(tmp_path / "absent")]) == 1
    assert "absent" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 1
    assert "not a run folder" in capsys.readouterr().err
    empty_run = tmp_path / "run_without_ckpt"
    empty_run.mkdir()
    shutil.copy(brca_run / "config.yaml", empty_run / "config.yaml")
    assert main([str(empty_run)]) == 1
    err = capsys.readouterr().err
    assert "no checkpoint" in err and str(empty_run) in err
    with pytest.raises(SystemExit) as bad:
        main([str(brca_run), "--threshold", "1.5"])
    assert bad.value.code == 2 and "--threshold 1.5" in capsys.readouterr().err
    assert main([str(brca_run), "--no-transforms", "--quiet", "--threshold", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "threshold 0.5" in out and "det_F1" in out
    m = json.loads((brca_run / "metrics.json").read_text())
    assert m["detection"]["chosen_on"] == "val" and np.isfinite(m["test"]["eval_wall_s"])
