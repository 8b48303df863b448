"""Refactoring keeps results bit for bit: a fixed tiny run trained by this checkout and by the reference
commit (main before the engine was split up) ends with identical weights and identical test predictions.

The reference tree is taken from git (``git archive``) and run as its own ``python -m util.train`` with the
same Python environment, one CPU thread, the same data and the same overrides; only the code differs.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
#: main just before the refactoring of issue "One room per job" (util/training.py as one file)
REFERENCE_COMMIT = "b7f7823"
OVERRIDES = ["max_steps=6", "eval_transforms=[rot90]", "seed=3", "data.preset=full", "tracking=csv"]


def _reference_tree(dest: Path) -> Path:
    archive = dest.with_suffix(".tar")
    proc = subprocess.run(["git", "archive", "--format=tar", "-o", str(archive), REFERENCE_COMMIT],
                          cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"reference commit {REFERENCE_COMMIT} is not in this checkout's history "
                    f"({proc.stderr.strip()[:200]}); a shallow clone cannot run this test")
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return dest


def _train(tree: Path, data_root: Path, runs: Path) -> Path:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": str(tree)}
    env.pop("COMET_API_KEY", None)
    cmd = [sys.executable, "-m", "util.train", "configs/tiny.yaml", f"data.root={data_root}", f"runs_dir={runs}",
           *OVERRIDES]
    proc = subprocess.run(cmd, cwd=tree, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    (run_dir,) = [p for p in (runs / "tiny").iterdir() if p.is_dir()]
    return run_dir


def _weights_digest(run_dir: Path) -> str:
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.slow
def test_tiny_run_matches_the_reference_commit_bit_for_bit(tiny_ocelot_root, tmp_path):
    ref = _train(_reference_tree(tmp_path / "reference"), tiny_ocelot_root, tmp_path / "runs_ref")
    new = _train(ROOT, tiny_ocelot_root, tmp_path / "runs_new")
    assert _weights_digest(new) == _weights_digest(ref)
    assert (new / "predictions" / "test.json").read_bytes() == (ref / "predictions" / "test.json").read_bytes()
    assert _without_times(new / "history.csv") == _without_times(ref / "history.csv")
    assert _scores(new) == _scores(ref)


def _without_times(history: Path) -> list[list[str]]:
    """history.csv rows without ``elapsed_s`` (wall-clock differs between any two runs)."""
    rows = [line.split(",") for line in history.read_text().splitlines()]
    col = rows[0].index("elapsed_s")
    return [r[:col] + r[col + 1:] for r in rows]


def _scores(run_dir: Path) -> dict:
    """Every score in metrics.json (test and its rotated copy, threshold, best validation), no timings."""
    import json

    m = json.loads((run_dir / "metrics.json").read_text())
    keep = ("test", "test_rot90", "threshold", "min_distance_um", "best_val_mF1", "best_val_step", "parameters",
            "equivariance", "detection")
    return _no_timings({k: m.get(k) for k in keep})


def _no_timings(obj):
    if isinstance(obj, dict):
        return {k: _no_timings(v) for k, v in obj.items() if not (k.endswith("_s") or "wall" in k)}
    if isinstance(obj, list):
        return [_no_timings(v) for v in obj]
    return obj
