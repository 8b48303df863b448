"""Nothing lost: resume and evaluation fall back to a readable checkpoint, never silently start afresh over a
run's history; failed runs are marked and left out of comparisons."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from model import register_model
from tests.test_training import NanAfter
from util.config import load_config
from util.training import CheckpointError, NonFiniteLossError, load_checkpoint, train

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def tiny(root: Path, runs: Path, *overrides: str):
    # 4 training patches, batch 2: a validation (and a best/last checkpoint) every 2 steps
    return load_config(TINY, [f"data.root={root}", f"runs_dir={runs}", "eval_transforms=[]", *overrides])


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}


def test_truncated_last_ckpt_resumes_from_best_and_says_so(tiny_ocelot_root, tmp_path, capfd):
    # an interrupted run: 6 of 12 steps, checkpoints every 2 steps (best.ckpt at the best of steps 2, 4, 6)
    cfg = tiny(tiny_ocelot_root, tmp_path, "max_steps=12")
    from util.training import resolve_run_dir

    run_dir = resolve_run_dir(cfg)
    first = train(cfg.replace(["max_steps=12"]), quiet=True)
    assert first.metrics and first.run_dir == run_dir
    best_step = load_checkpoint(run_dir / "checkpoints" / "best.ckpt")["global_step"]
    assert load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 12
    history_before = list(csv.DictReader((run_dir / "history.csv").open()))
    (run_dir / "metrics.json").unlink()  # as if stopped before the end
    truncate(run_dir / "checkpoints" / "last.ckpt")
    capfd.readouterr()
    res = train(cfg, quiet=False)
    out = capfd.readouterr()
    text = out.out + out.err
    assert "skipped unreadable checkpoint" in text and "last.ckpt" in text
    assert f"resuming from {run_dir / 'checkpoints' / 'best.ckpt'}" in text
    assert res.metrics["steps"] == 12
    # the validations up to best.ckpt's step are kept; later ones were redone
    rows = list(csv.DictReader((run_dir / "history.csv").open()))
    assert [r["step"] for r in rows] == [r["step"] for r in history_before]
    kept = [r for r in history_before if int(r["step"]) <= best_step]
    assert rows[: len(kept)] == kept


def test_no_readable_checkpoint_with_history_refuses_and_changes_nothing(tiny_ocelot_root, tmp_path):
    cfg = tiny(tiny_ocelot_root, tmp_path, "max_steps=4")
    res = train(cfg, quiet=True)
    for name in ("last.ckpt", "best.ckpt"):
        truncate(res.run_dir / "checkpoints" / name)
    (res.run_dir / "metrics.json").unlink()
    before = snapshot(res.run_dir)
    with pytest.raises(CheckpointError, match=r"none of its checkpoints can be read.*resume=never") as err:
        train(cfg, quiet=True)
    assert "last.ckpt" in str(err.value) and "best.ckpt" in str(err.value)
    assert snapshot(res.run_dir) == before
    # history without any checkpoint: refused too
    for name in ("last.ckpt", "best.ckpt"):
        (res.run_dir / "checkpoints" / name).unlink()
    with pytest.raises(CheckpointError, match=r"history.csv holds \d+ validation"):
        train(cfg, quiet=True)
    assert (res.run_dir / "history.csv").read_bytes() == before["history.csv"]
    # resume=never trains afresh in a new folder and leaves this one alone
    fresh = train(cfg.replace(["resume=never"]), quiet=True)
    assert fresh.run_dir != res.run_dir and fresh.metrics


def test_evaluation_falls_back_to_last_when_best_is_corrupt(tiny_ocelot_root, tmp_path, capfd):
    from util.training import evaluate, load_run

    res = train(tiny(tiny_ocelot_root, tmp_path, "max_steps=4"), quiet=True)
    truncate(res.run_dir / "checkpoints" / "best.ckpt")
    capfd.readouterr()
    run = load_run(res.run_dir)
    assert run.checkpoint.name == "last.ckpt"
    err = capfd.readouterr().err
    assert "skipped unreadable checkpoint" in err and "best.ckpt" in err and "instead of the unreadable" in err
    assert evaluate(res.run_dir, write=False, progress=False)["checkpoint"].endswith("last.ckpt")
    truncate(res.run_dir / "checkpoints" / "last.ckpt")
    with pytest.raises(CheckpointError, match="none of its checkpoints can be read"):
        load_run(res.run_dir)


def test_failure_before_the_first_checkpoint_is_marked_and_ignored(tiny_ocelot_root, tmp_path):
    from util.visualize import find_runs

    register_model("nan_from_test", NanAfter)
    cfg = tiny(tiny_ocelot_root, tmp_path, "model.name=nan_from_test", "model.kwargs.nan_at=0", "max_steps=4")
    with pytest.raises(NonFiniteLossError, match="no checkpoint had been written yet") as err:
        train(cfg, quiet=True)
    assert "last good checkpoint is kept" not in str(err.value)
    (run_dir,) = [p.parent for p in tmp_path.glob("*/*/config.yaml")]
    failed = json.loads((run_dir / "failed.json").read_text())
    assert failed["error"] == "NonFiniteLossError" and "step 0" in failed["message"]
    assert failed["last_checkpoint_step"] is None
    assert find_runs(tmp_path) == []
    # a run that failed once (marked) and then succeeds on the rerun loses the mark
    ok_cfg = tiny(tiny_ocelot_root, tmp_path / "ok", "max_steps=2")
    from util.training import resolve_run_dir

    ok_dir = resolve_run_dir(ok_cfg)
    ok_dir.mkdir(parents=True)
    (ok_dir / "failed.json").write_text('{"error": "OSError", "message": "disk full"}')
    ok = train(ok_cfg, quiet=True)
    assert ok.run_dir == ok_dir and not (ok_dir / "failed.json").exists()
    assert find_runs(tmp_path / "ok") == [ok_dir]


def test_run_files_are_written_atomically_no_temporaries_left(tiny_ocelot_root, tmp_path):
    res = train(tiny(tiny_ocelot_root, tmp_path, "max_steps=2"), quiet=True)
    leftovers = [p for p in res.run_dir.rglob("*") if ".tmp" in p.name]
    assert leftovers == []
    assert torch.load(res.run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2


def test_checkpoint_of_another_model_is_reported_as_a_mismatch(tiny_ocelot_root, tmp_path, capsys):
    from util.evaluate import main as evaluate_main
    from util.training import load_model_from_checkpoint

    res = train(tiny(tiny_ocelot_root, tmp_path, "max_steps=2"), quiet=True)
    ckpt = res.run_dir / "checkpoints" / "last.ckpt"
    other = res.config.replace(["model.kwargs.width=6"])
    with pytest.raises(ValueError, match="config and checkpoint disagree") as err:
        load_model_from_checkpoint(other, ckpt)
    assert str(ckpt) in str(err.value) and "'width': 6" in str(err.value) and "wrong-shape" in str(err.value)
    # the CLI on a run folder whose config.yaml was edited: one clear line, no state-dict dump
    (res.run_dir / "config.yaml").write_text(other.to_yaml())
    assert evaluate_main([str(res.run_dir), "--quiet"]) == 1
    err_text = capsys.readouterr().err
    assert "config and checkpoint disagree" in err_text and len(err_text.splitlines()) <= 3
    # a YAML file given instead of a run folder is named as such
    assert evaluate_main([str(res.run_dir / "config.yaml")]) == 1
    assert "expected a run folder" in capsys.readouterr().err


def test_a_lone_old_hpc_checkpoint_is_refused_not_silently_resumed(tiny_ocelot_root, tmp_path):
    """Lightning resumes from ``hpc_ckpt_*.ckpt`` on its own under Slurm; the engine has one resume path
    (``last.ckpt``/``best.ckpt``), so a folder whose only state is such a file is refused with the way out."""
    from util.training import atomic_torch_save, resolve_run_dir

    cfg = tiny(tiny_ocelot_root, tmp_path, "max_steps=2")
    run_dir = resolve_run_dir(cfg)
    run_dir.mkdir(parents=True)
    atomic_torch_save({"global_step": 1, "state_dict": {}}, run_dir / "hpc_ckpt_3.ckpt")
    before = snapshot(run_dir)
    with pytest.raises(CheckpointError, match=r"hpc_ckpt_3\.ckpt.*Rename it to .*last\.ckpt"):
        train(cfg, quiet=True)
    assert snapshot(run_dir) == before
