"""The training engine: run folder, resume after SIGTERM, atomic checkpoints, NaN stop, DDP, CLIs."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from model import build_model, count_parameters, register_model
from model.unet import UNet
from util.config import load_config
from util.dataloader import OcelotDataset
from util.metrics import cell_detection_scores
from util.training import (NonFiniteLossError, ResumableSampler, atomic_torch_save, evaluate, load_checkpoint,
                           model_kwargs, read_points_json, train, training_loader)

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"


def tiny(root: Path, runs: Path, *overrides: str):
    return load_config(TINY, [f"data.root={root}", f"runs_dir={runs}", *overrides])


def run_cli(args: list[str], **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("COMET_API_KEY", None)
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, env=env,
                          timeout=600, **kw)


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ck = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    return ck["state_dict"]


CLASS_OF_LABEL = {"1": "BC", "2": "TC"}


def gt_cells_per_class(data_root: Path, split: str = "test") -> dict[str, int]:
    """Cells per class counted straight from the split's annotation CSVs (``x,y,label`` rows)."""
    counts = {"BC": 0, "TC": 0}
    for path in sorted((Path(data_root) / "annotations" / split / "cell").glob("*.csv")):
        for row in csv.reader(path.open()):
            if row:
                counts[CLASS_OF_LABEL[row[2].strip()]] += 1
    return counts


def predicted_cells_per_class(points_json: Path) -> dict[str, int]:
    counts = {"BC": 0, "TC": 0}
    for p in json.loads(points_json.read_text())["points"]:
        counts[CLASS_OF_LABEL[str(p["point"][2])]] += 1
    return counts


def check_run_folder(run_dir: Path) -> dict:
    """The run folder is complete and its numbers agree with what they are computed from.

    Every count is checked against an independent source: TP + FN of each class against the cells in the
    test CSVs on disk, TP + FP against the points in ``predictions/test.json``, F1 against 2TP/(2TP+FP+FN),
    mF1 against the mean of the class F1s, the best validation score against ``history.csv``.
    """
    for name in ("config.yaml", "history.csv", "metrics.json", "env.json", "checkpoints/best.ckpt",
                 "checkpoints/last.ckpt", "predictions/test.json", "predictions/test_gt.json"):
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    cfg = load_config(run_dir / "config.yaml")
    gt = gt_cells_per_class(cfg.data.root)
    assert predicted_cells_per_class(run_dir / "predictions" / "test_gt.json") == gt
    predicted = predicted_cells_per_class(run_dir / "predictions" / "test.json")
    for split in ("test", "test_rot90", "test_flip"):
        m = metrics[split]
        assert set(m["dice"]) == {"background", "BC", "TC"} and set(m["iou"]) == set(m["dice"])
        f1s = []
        for cls, c in m["cells"].items():
            assert c["tp"] + c["fn"] == gt[cls], (split, cls, c, gt)  # every ground-truth cell counted once
            if split == "test":
                assert c["tp"] + c["fp"] == predicted[cls], (cls, c, predicted)
            denom = 2 * c["tp"] + c["fp"] + c["fn"]
            assert c["f1"] == pytest.approx(2 * c["tp"] / denom if denom else 0.0, abs=1e-4), (split, cls, c)
            f1s.append(c["f1"])
        assert sorted(m["cells"]) == ["BC", "TC"]
        assert m["mF1"] == pytest.approx(sum(f1s) / len(f1s), abs=1e-4)
    model = build_model(cfg.model.name, **model_kwargs(cfg))
    assert metrics["parameters"] == count_parameters(model) > 0
    assert metrics["train_wall_s"] > 0
    eq = metrics["equivariance"]
    per = eq["per_element"]
    assert eq["group"] == "D4" and len(per) == 8 and per["e"] == 0.0 and eq["max"] == max(per.values()) > 0
    assert "time_to_target_s" in metrics and metrics["steps"] == metrics["max_steps"]
    env = json.loads((run_dir / "env.json").read_text())
    assert env["packages"]["torch"] and "git" in env and "device" in env
    rows = list(csv.DictReader((run_dir / "history.csv").open()))
    assert rows and {"step", "elapsed_s", "val_mF1", "train_loss"} <= set(rows[0])
    scored = [float(r["val_mF1"]) for r in rows if r["val_mF1"] not in ("", "nan")]
    assert scored and metrics["best_val_mF1"] == pytest.approx(max(scored), abs=1e-4)
    return metrics


def test_sampler_stream_is_resumable():
    full = ResumableSampler(5, 2, 7, seed=3)
    resumed = ResumableSampler(5, 2, 7, seed=3, start_batch=4)
    items = list(full)
    assert len(items) == 14 and list(resumed) == items[8:]
    # every pass over the data is a permutation; passes differ
    idx = [i for i, _ in items]
    assert sorted(idx[:5]) == list(range(5)) and sorted(idx[5:10]) == list(range(5)) and idx[:5] != idx[5:10]
    # two DDP ranks split each global batch without overlap
    r0 = list(ResumableSampler(5, 2, 3, seed=3, rank=0, world_size=2))
    r1 = list(ResumableSampler(5, 2, 3, seed=3, rank=1, world_size=2))
    single = list(ResumableSampler(5, 4, 3, seed=3))
    assert [r0[0], r0[1], r1[0], r1[1]] == single[:4]


def _stream(root: Path, runs: Path, workers: int, start_batch: int = 0, seed: int = 0, batches: int = 4):
    cfg = tiny(root, runs, "data.preset=full", f"data.num_workers={workers}", f"seed={seed}")
    ds = OcelotDataset(cfg.data.root, "train", crop_size=cfg.data.crop_size, transforms=cfg.data.preset,
                       mask_radius_um=cfg.data.mask_radius_um, seed=cfg.seed)
    return list(training_loader(ds, cfg, batches, start_batch=start_batch))


def test_engine_loader_is_the_same_with_worker_processes(tiny_ocelot_root, tmp_path):
    """The engine's training stream (random crops + `full` augmentation) does not depend on num_workers, and
    a loader resumed at batch 2 continues it; another seed gives another stream (the control)."""
    inline = _stream(tiny_ocelot_root, tmp_path, workers=0)
    workers = _stream(tiny_ocelot_root, tmp_path, workers=2)
    resumed = _stream(tiny_ocelot_root, tmp_path, workers=2, start_batch=2)
    other = _stream(tiny_ocelot_root, tmp_path, workers=2, seed=1)
    assert len(inline) == len(workers) == 4 and len(resumed) == 2
    for a, b in zip(inline, workers):
        assert a["id"] == b["id"] and torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    for a, b in zip(inline[2:], resumed):
        assert a["id"] == b["id"] and torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert not all(torch.equal(a["image"], c["image"]) for a, c in zip(inline, other))


def test_train_writes_a_complete_run_folder(tiny_ocelot_root, tmp_path):
    cfg = tiny(tiny_ocelot_root, tmp_path, "max_steps=4")
    res = train(cfg, quiet=True)
    assert res.run_dir.parent.parent == tmp_path and res.run_dir.parent.name == "tiny"
    metrics = check_run_folder(res.run_dir)
    assert load_config(res.run_dir / "config.yaml").config_hash() == cfg.config_hash()
    # checkpoints load with weights_only=True and hold only safe types
    ck = torch.load(res.run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    assert ck["global_step"] > 0 and any(k.startswith("model.") for k in ck["state_dict"])
    # predictions: official OCELOT point format, and scoring them reproduces metrics.json
    doc = json.loads((res.run_dir / "predictions" / "test.json").read_text())
    assert doc["type"] == "Multiple points" and doc["version"] == {"major": 1, "minor": 0}
    for p in doc["points"]:
        assert set(p) == {"name", "point", "probability"} and p["name"].startswith("image_")
        assert len(p["point"]) == 3 and p["point"][2] in (1, 2) and 0 <= p["probability"] <= 1
    preds, ids = read_points_json(res.run_dir / "predictions" / "test.json")
    gts, _ = read_points_json(res.run_dir / "predictions" / "test_gt.json")
    assert len(ids) == 2
    rescored = cell_detection_scores(preds, [g[:, :3] for g in gts], cutoff=15)
    assert rescored["mF1"] == pytest.approx(metrics["test"]["mF1"], abs=1e-4)
    # evaluate() on the run folder reproduces the test numbers (and TTA runs)
    ev = evaluate(res.run_dir, "test", transforms=[])
    assert ev["test"]["mF1"] == pytest.approx(metrics["test"]["mF1"], abs=1e-6)
    # predict() on a raw image gives the points written for that image
    from util.dataloader import OcelotDataset
    from util.training import predict

    first = OcelotDataset(tiny_ocelot_root, "test")[0]
    direct = predict(res.run_dir, [first["image"]], mpp=first["mpp"])[0]
    assert ids[0] == first["id"]
    assert np.array_equal(np.rint(direct[:, :3]), preds[0][:, :3])
    ev_tta = evaluate(res.run_dir, "test", tta=True, transforms=[])
    assert (res.run_dir / "eval_test_tta.json").is_file() and (res.run_dir / "predictions" / "test_tta.json").is_file()
    tta_preds, _ = read_points_json(res.run_dir / "predictions" / "test_tta.json")
    tta_rescored = cell_detection_scores(tta_preds, [g[:, :3] for g in gts], cutoff=15)
    assert ev_tta["test"]["mF1"] == pytest.approx(tta_rescored["mF1"], abs=1e-4)


def test_rerun_of_a_finished_run_resumes_and_changes_nothing(tiny_ocelot_root, tmp_path):
    cfg = tiny(tiny_ocelot_root, tmp_path, "max_steps=3", "eval_transforms=[]")
    first = train(cfg, quiet=True)
    w1 = final_weights(first.run_dir)
    again = train(cfg, quiet=True)
    assert again.run_dir == first.run_dir
    w2 = final_weights(again.run_dir)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    fresh = train(cfg.replace(["resume=never"]), quiet=True)
    assert fresh.run_dir != first.run_dir and fresh.run_dir.name.startswith(first.run_dir.name)


def test_resume_into_a_folder_with_another_config_is_refused(tiny_ocelot_root, tmp_path):
    train(tiny(tiny_ocelot_root, tmp_path, "max_steps=2", "eval_transforms=[]", "run_id=fixed"), quiet=True)
    with pytest.raises(ValueError, match="different configuration"):
        train(tiny(tiny_ocelot_root, tmp_path, "max_steps=2", "eval_transforms=[]", "run_id=fixed",
                   "learning_rate=0.1"), quiet=True)


class _Boom:
    def __reduce__(self):
        raise RuntimeError("simulated crash while the checkpoint is being written")


def test_interrupted_checkpoint_write_keeps_the_previous_one(tmp_path):
    path = tmp_path / "last.ckpt"
    good = {"state_dict": {"w": torch.arange(10.0)}, "global_step": 5}
    atomic_torch_save(good, path)
    bad = {"state_dict": {"w": torch.zeros(1_000_000)}, "global_step": 6, "x": _Boom()}
    with pytest.raises(RuntimeError, match="simulated crash"):
        atomic_torch_save(bad, path)
    back = torch.load(path, weights_only=True)
    assert back["global_step"] == 5 and torch.equal(back["state_dict"]["w"], good["state_dict"]["w"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary file left behind
    # control: a plain torch.save into the same path is destroyed by the same crash
    plain = tmp_path / "plain.ckpt"
    torch.save(good, plain)
    with pytest.raises(RuntimeError):
        torch.save(bad, plain)
    with pytest.raises(Exception):
        torch.load(plain, weights_only=True)


class NanAfter(UNet):
    """A U-Net whose training forward returns NaN from its ``nan_at``-th call (0-based) on."""

    def __init__(self, nan_at: int = 3, **kw):
        super().__init__(**kw)
        self.nan_at, self.calls = nan_at, 0

    def forward(self, x):
        y = super().forward(x)
        if self.training:
            self.calls += 1
            if self.calls > self.nan_at:
                return y * float("nan")
        return y


def test_nan_loss_stops_naming_the_step_and_keeps_last_good_checkpoint(tiny_ocelot_root, tmp_path):
    register_model("nan_after_test", NanAfter)
    cfg = tiny(tiny_ocelot_root, tmp_path, "model.name=nan_after_test", "model.kwargs.nan_at=5", "max_steps=10",
               "checkpoint_every_n_steps=2", "val_every_n_epochs=100")
    with pytest.raises(NonFiniteLossError, match=r"non-finite training loss \(nan\) at step 5\b"):
        train(cfg, quiet=True)
    run_dir = next((tmp_path / "tiny").iterdir())
    ck = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert ck["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in ck["state_dict"].values() if v.is_floating_point())
    assert not (run_dir / "metrics.json").exists()


class SignalAt(UNet):
    """A U-Net that sends SIGTERM to its own process once, from its ``at``-th forward (0-based) in ``phase``
    ("eval": a validation batch; "train": a training step, before that step's optimizer step)."""

    fired = False

    def __init__(self, at: int = 2, phase: str = "eval", **kw):
        super().__init__(**kw)
        self.at, self.phase, self.calls = at, phase, 0

    def forward(self, x):
        if self.training == (self.phase == "train"):
            if self.calls == self.at and not SignalAt.fired:
                SignalAt.fired = True
                os.kill(os.getpid(), signal.SIGTERM)
            self.calls += 1
        return super().forward(x)


def signalled_run(root: Path, runs: Path, phase: str, at: int):
    """Train the tiny config for 8 steps (validation every 2) with :class:`SignalAt` sending SIGTERM once;
    returns the config and the stopped run."""
    register_model("signal_at_test", SignalAt)
    SignalAt.fired = False
    cfg = tiny(root, runs, "model.name=signal_at_test", f"model.kwargs.at={at}", f"model.kwargs.phase={phase}",
               "max_steps=8", "eval_transforms=[]")
    first = train(cfg, quiet=True)
    assert SignalAt.fired and first.stopped_by_signal
    return cfg, first


def history_steps(run_dir: Path) -> list[int]:
    return [int(r["step"]) for r in csv.DictReader((run_dir / "history.csv").open())]


def last_checkpoint_steps(run_dir: Path) -> tuple[int, list[int]]:
    """``last.ckpt``'s global step and the validation steps of the history rows it holds."""
    ck = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    rows = json.loads(next(v for k, v in ck["callbacks"].items() if "HistoryCallback" in k)["rows"])
    return ck["global_step"], [r["step"] for r in rows]


@pytest.mark.parametrize("phase, at", [("eval", 2), ("train", 3)])
def test_sigterm_at_a_validation_step_keeps_its_row_and_resumes(tiny_ocelot_root, tmp_path, phase, at):
    """SIGTERM on the first batch of step 4's validation (2 val images, 2 steps per pass), or inside step 4's
    training forward (before its optimizer step and validation): the validation runs to its end, its row is in
    history.csv and in last.ckpt (step 4); the rerun completes every validation."""
    cfg, first = signalled_run(tiny_ocelot_root, tmp_path, phase, at)
    assert history_steps(first.run_dir) == [2, 4]
    assert last_checkpoint_steps(first.run_dir) == (4, [2, 4])
    second = train(cfg, quiet=True)
    assert not second.stopped_by_signal and second.run_dir == first.run_dir
    assert history_steps(first.run_dir) == [2, 4, 6, 8]


@pytest.mark.parametrize("phase, at", [("eval", 2), ("train", 3)])
def test_sigterm_in_a_validation_too_long_to_finish_keeps_the_previous_checkpoint(tiny_ocelot_root, tmp_path,
                                                                                  monkeypatch, phase, at):
    """The same two signals, but no validation fits the grace time: step 4's validation is abandoned, nothing is
    saved over the step-2 last.ckpt, and the rerun trains steps 3-4 again and keeps every validation row."""
    from util.training.callbacks import FinishValidationOnStop
    monkeypatch.setattr(FinishValidationOnStop, "grace_s", 0.0)
    cfg, first = signalled_run(tiny_ocelot_root, tmp_path, phase, at)
    assert last_checkpoint_steps(first.run_dir) == (2, [2])
    second = train(cfg, quiet=True)
    assert not second.stopped_by_signal and second.run_dir == first.run_dir
    assert history_steps(first.run_dir) == [2, 4, 6, 8]


def test_finish_validation_on_stop_defers_the_flag_and_needs_no_private_connector():
    """The deferral hides Lightning's stop flag while a short validation finishes and sets it again at its end; a
    Lightning without the private ``_signal_connector`` gets no deferral and no error (every validation batch
    calls this hook, so an AttributeError there would break every training)."""
    from types import SimpleNamespace

    from util.training.callbacks import FinishValidationOnStop

    cb = FinishValidationOnStop(grace_s=60.0)
    connector = SimpleNamespace(received_sigterm=True)
    trainer = SimpleNamespace(_signal_connector=connector, sanity_checking=False, num_val_batches=[4],
                              is_global_zero=False, global_step=4)
    cb.on_validation_start(trainer, None)
    cb.on_validation_batch_end(trainer, None, None, None, 0)
    assert cb.deferred and connector.received_sigterm is False  # the validation goes on
    cb.on_validation_end(trainer, None)
    assert connector.received_sigterm is True and not cb.deferred  # and the stop happens after it
    bare = SimpleNamespace(sanity_checking=False, num_val_batches=[4], is_global_zero=False, global_step=4)
    cb.on_validation_start(bare, None)
    cb.on_validation_batch_end(bare, None, None, None, 0)
    cb.on_validation_end(bare, None)
    assert not cb.deferred


def test_sigterm_between_validations_stops_at_that_step(tiny_ocelot_root, tmp_path):
    """SIGTERM inside step 3's training forward: the run stops at step 3 (no validation is waited for) and the
    rerun validates at 4, 6 and 8."""
    cfg, first = signalled_run(tiny_ocelot_root, tmp_path, "train", 2)
    assert load_checkpoint(first.run_dir / "checkpoints" / "last.ckpt")["global_step"] == 3
    assert history_steps(first.run_dir) == [2]
    train(cfg, quiet=True)
    assert history_steps(first.run_dir) == [2, 4, 6, 8]


@pytest.mark.slow
def test_sigterm_mid_run_then_rerun_equals_uninterrupted(tiny_ocelot_root, tmp_path):
    common = ["util.train", str(TINY), f"data.root={tiny_ocelot_root}", "max_steps=24", "val_every_n_epochs=5",
              "eval_transforms=[]"]
    ref = run_cli([*common, f"runs_dir={tmp_path / 'a'}"])
    assert ref.returncode == 0, ref.stderr[-3000:]
    cmd = [sys.executable, "-m", *common, f"runs_dir={tmp_path / 'b'}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    out = []
    for line in proc.stdout:
        out.append(line)
        if line.startswith("step 7/"):  # mid-way through the 3rd pass over the 4 training images
            proc.send_signal(signal.SIGTERM)
            break
    out.append(proc.stdout.read())
    assert proc.wait(timeout=300) == 143, "".join(out)[-3000:]
    run_b = next((tmp_path / "b" / "tiny").iterdir())
    ck = load_checkpoint(run_b / "checkpoints" / "last.ckpt")  # a valid checkpoint, loadable weights-only
    stopped_at = ck["global_step"]
    assert 7 <= stopped_at < 24, stopped_at
    resumed = run_cli([*common, f"runs_dir={tmp_path / 'b'}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout
    run_a = next((tmp_path / "a" / "tiny").iterdir())
    wa, wb = final_weights(run_a), final_weights(run_b)
    assert wa.keys() == wb.keys()
    diff = max((wa[k].double() - wb[k].double()).abs().max().item() for k in wa)
    assert diff <= 1e-6, f"stopped at step {stopped_at}: max weight difference {diff}"
    ha = list(csv.DictReader((run_a / "history.csv").open()))
    hb = list(csv.DictReader((run_b / "history.csv").open()))
    assert [r["step"] for r in ha] == [r["step"] for r in hb]
    assert [float(r["val_mF1"]) for r in ha] == pytest.approx([float(r["val_mF1"]) for r in hb], abs=1e-6)


@pytest.mark.slow
def test_ddp_two_cpu_processes(tiny_ocelot_root, tmp_path):
    res = run_cli(["util.train", str(TINY), f"data.root={tiny_ocelot_root}", f"runs_dir={tmp_path}", "devices=2",
                   "accelerator=cpu", "max_steps=4"])
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-3000:])
    runs = list((tmp_path / "tiny").iterdir())
    assert len(runs) == 1, runs  # both processes used one run folder
    check_run_folder(runs[0])
    assert "Starting with 2 processes" in res.stdout + res.stderr


def test_cli_reports_bad_override(tmp_path, capsys):
    from util import evaluate as evaluate_cli
    from util import train as train_cli

    assert train_cli.main([str(TINY), "lerning_rate=0.1"]) == 1
    assert "did you mean 'learning_rate'" in capsys.readouterr().err
    assert train_cli.main([str(REPO / "configs" / "grid_example.yaml")]) == 1
    assert "--grid-index" in capsys.readouterr().err
    assert train_cli.main([str(REPO / "configs" / "grid_example.yaml"), "--list-grid"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 16
    assert evaluate_cli.main([str(tmp_path)]) == 1
    assert "not a run folder" in capsys.readouterr().err


def test_resume_picks_the_most_advanced_checkpoint(tmp_path):
    from util.training import latest_checkpoint

    assert latest_checkpoint(tmp_path) is None
    atomic_torch_save({"global_step": 5, "state_dict": {}}, tmp_path / "checkpoints" / "last.ckpt")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "last.ckpt"
    atomic_torch_save({"global_step": 7, "state_dict": {}}, tmp_path / "checkpoints" / "best.ckpt")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "best.ckpt"  # more steps
    atomic_torch_save({"global_step": 7, "state_dict": {}}, tmp_path / "checkpoints" / "last.ckpt")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "last.ckpt"  # ties go to last.ckpt
    (tmp_path / "checkpoints" / "best.ckpt").write_bytes(b"truncated garbage")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "last.ckpt"


def test_lightning_slurm_checkpoints_are_not_read(tmp_path):
    """One pre-emption path: a stop writes checkpoints/last.ckpt; Lightning's hpc_ckpt_*.ckpt (nothing writes them
    now: its Slurm auto-requeue is off) is neither resumed nor evaluated, however many steps it holds."""
    from util.training import latest_checkpoint, weights_checkpoint

    atomic_torch_save({"global_step": 9, "state_dict": {}}, tmp_path / "hpc_ckpt_1.ckpt")
    assert latest_checkpoint(tmp_path) is None
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        weights_checkpoint(tmp_path)
    atomic_torch_save({"global_step": 5, "state_dict": {}}, tmp_path / "checkpoints" / "last.ckpt")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "last.ckpt"
    assert weights_checkpoint(tmp_path) == tmp_path / "checkpoints" / "last.ckpt"
