"""End to end: training learns (not just runs). A plain and a moment D4 U-Net trained long enough on a synthetic
set: the loss falls, test mF1 beats the non-learned colour/blob rule, the D4 net scores the same on the rotated and
flipped test copies with a near-zero trained equivariance error while the plain net's is clearly non-zero, and
the rot45 copy and time-to-target are filled in.

Shown to have teeth: with ``LEARNING_TEST_LR=1e-9`` (training that does not move the weights) the mF1 and loss
checks fail.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LR = os.environ.get("LEARNING_TEST_LR", "3e-3")


@pytest.fixture(scope="module")
def learning_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from util.synthetic import make_synthetic_ocelot

    return make_synthetic_ocelot(tmp_path_factory.mktemp("learn") / "set", n_train=12, n_val=3, n_test=4,
                                 size=128, seed=3)


@pytest.fixture(scope="module")
def baseline_mf1(learning_set: Path, tmp_path_factory: pytest.TempPathFactory) -> float:
    spec = importlib.util.spec_from_file_location("baseline_rule", REPO / "benchmarks" / "baseline_rule.py")
    rule = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rule)
    out = tmp_path_factory.mktemp("rule") / "rule.json"
    assert rule.main(["--root", str(learning_set), "--json", str(out)]) == 0
    return json.loads(out.read_text())["test_mF1"]


def _train(root: Path, runs: Path, *overrides: str) -> dict:
    from util.config import load_config
    from util.training import train

    cfg = load_config(REPO / "configs" / "synthetic.yaml", [
        f"data.root={root}", f"runs_dir={runs}", "name=learn", "data.crop_size=96", "data.batch_size=6",
        "max_steps=160", "val_every_n_epochs=4", "warmup_steps=10", f"learning_rate={LR}", "target_mf1=0.5",
        "eval_transforms=[rot90, flip, rot45]", "tracking=csv", "progress_bar=false", *overrides])
    res = train(cfg, quiet=True)
    rows = list(csv.DictReader((res.run_dir / "history.csv").open()))
    return res.metrics | {"history": rows}


@pytest.mark.slow
def test_plain_unet_learns_and_beats_the_rule(learning_set, baseline_mf1, tmp_path):
    m = _train(learning_set, tmp_path, "model.name=unet", "model.kwargs={width: 8, depth: 3}",
               "data.preset=flips_rot90")
    losses = [float(r["train_loss"]) for r in m["history"]]
    assert losses[-1] < 0.6 * losses[0], losses
    assert m["test"]["mF1"] > baseline_mf1 + 0.1, (m["test"]["mF1"], baseline_mf1)
    assert m["test"]["detection"]["f1"] > 0.8
    assert m["time_to_target_s"] is not None and 0 < m["time_to_target_s"] <= m["train_wall_s"]
    assert 0 < m["steps_to_target"] <= m["steps"]
    # the interpolated 45° copy is scored (cells inside the central disk) and the model still finds cells there
    assert m["test_rot45"]["n_images"] == 4 and m["test_rot45"]["detection"]["f1"] > 0.5
    # a plain U-Net is not equivariant: its trained D4 error is far from zero
    assert m["equivariance"]["group"] == "D4" and m["equivariance"]["max"] > 1e-2


@pytest.mark.slow
def test_moment_d4_unet_scores_the_same_on_rotated_and_flipped_copies(learning_set, baseline_mf1, tmp_path):
    m = _train(learning_set, tmp_path, "model.name=moment_unet", "model.kwargs={width: 8, depth: 3, group: D4}",
               "data.preset=none")
    assert m["test"]["mF1"] > baseline_mf1 + 0.1, (m["test"]["mF1"], baseline_mf1)
    assert m["equivariance"]["group"] == "D4" and m["equivariance"]["max"] < 1e-4
    for copy in ("test_rot90", "test_flip"):
        assert abs(m[copy]["mF1"] - m["test"]["mF1"]) <= 2e-3, (copy, m[copy]["mF1"], m["test"]["mF1"])
        assert abs(m[copy]["detection"]["f1"] - m["test"]["detection"]["f1"]) <= 2e-3
