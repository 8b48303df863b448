"""``train(config) -> RunResult``: one experiment end to end (see :mod:`util.training`)."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.utilities.exceptions import SIGTERMException

from model import build_model, count_parameters
from util.cells import training_mpp
from util.config import ExperimentConfig
from util.files import atomic_write
from util.metrics import flatten_scores
from util.ocelot import check_dataset_for_training
from util.tracking import CometTracker, find_secret, make_loggers
from util.training.callbacks import (FinishValidationOnStop, HistoryCallback, LastCheckpoint, PrintProgress,
                                     StopCheckpoint)
from util.training.checkpoints import CheckpointError, _maybe, latest_checkpoint, weights_checkpoint
from util.training.evaluation import (choose_detection, evaluate_model, load_model_from_checkpoint,
                                      trained_equivariance_error)
from util.training.data import OcelotDataModule
from util.training.module import NonFiniteLossError, SegmentationModule, model_kwargs
from util.training.runs import FAILED_FILE, RunResult, _json_clean, _mark_failed, _prepare_run_dir, resolve_run_dir
from util.training.settings import _env_rank, _world_size, trainer_settings


def train(config: ExperimentConfig, quiet: bool = False) -> RunResult:
    """Train (or resume) one run, evaluate it on the test split and write the run folder (see module doc).

    A run that fails (an exception other than a stop signal) gets ``failed.json`` (error type, message, step,
    time) in its folder; the comparison tools ignore such folders, and the next successful rerun removes it.
    With ``NUMERICS_EXACT_SQRT=1`` in the environment (a portable :mod:`util.numerics` mode) every float32
    square root of this process is computed correctly rounded.
    """
    import warnings

    from util.numerics import apply_from_env

    apply_from_env()

    warnings.filterwarnings("ignore", message=r".*The `srun` command is available on your system.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
    cfg = ExperimentConfig.from_dict(config.to_dict())  # never mutate the caller's config
    # every problem of the data visible up front, before a run folder exists (never after hours of training)
    check_dataset_for_training(cfg.data.root, splits=("train", "val", "test"))
    run_dir = resolve_run_dir(cfg)
    try:
        result = _train(cfg, run_dir, quiet)
    except CheckpointError:
        raise  # a refusal to resume changes nothing in the folder
    except Exception as e:
        if _env_rank() == 0 and run_dir.is_dir():
            _mark_failed(run_dir, e)
        raise
    if result.metrics and (run_dir / FAILED_FILE).is_file():
        (run_dir / FAILED_FILE).unlink()
    return result



def _train(cfg: ExperimentConfig, run_dir: Path, quiet: bool) -> RunResult:
    ckpt_dir = run_dir / "checkpoints"
    last_ckpt = ckpt_dir / "last.ckpt"
    is_child = _env_rank() != 0
    # where to resume from, decided before anything in the folder is written (a refusal changes nothing)
    ckpt_path = None
    if cfg.resume == "auto":
        found = latest_checkpoint(run_dir, report=not is_child)
        ckpt_path = str(found) if found else None
        history_csv = run_dir / "history.csv"
        if found is None and history_csv.is_file():
            rows = max(0, len(history_csv.read_text().splitlines()) - 1)
            if rows:
                raise CheckpointError(f"{run_dir}: history.csv holds {rows} validation(s) but there is no "
                                      f"checkpoint to resume from; nothing was changed. Pass resume=never to train "
                                      f"afresh in a new run folder")
        stale = sorted(run_dir.glob("hpc_ckpt_*.ckpt"))
        if found is None and stale:  # Lightning would resume from it silently under Slurm, elsewhere not at all
            raise CheckpointError(f"{run_dir}: {stale[-1].name} is an old Lightning Slurm checkpoint, which this "
                                  f"version does not resume from; nothing was changed. Rename it to "
                                  f"{run_dir / 'checkpoints' / 'last.ckpt'} to resume from it, or delete it")
    elif cfg.resume != "never":
        ckpt_path = cfg.resume
    if not is_child:
        _prepare_run_dir(cfg, run_dir)
    if cfg.data.manifest_dir is None:
        cfg.data.manifest_dir = str(run_dir)

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    settings = trainer_settings(cfg)
    world = _world_size(settings)
    data = OcelotDataModule(cfg, world)
    total_steps, val_every = data.total_steps, data.val_every
    module = SegmentationModule(build_model(cfg.model.name, **model_kwargs(cfg)), cfg, total_steps, val_every)

    history = HistoryCallback(run_dir / "history.csv")
    stopper = StopCheckpoint(last_ckpt, val_every)
    best_cb = ModelCheckpoint(dirpath=str(ckpt_dir), filename="best", monitor="val/mF1", mode="max", save_top_k=1,
                              save_last=False, auto_insert_metric_name=False, enable_version_counter=False)
    last_cb = LastCheckpoint(last_ckpt, cfg.checkpoint_every_n_steps, val_every)
    callbacks: list[Callback] = [FinishValidationOnStop(), history, stopper, best_cb, last_cb]
    if cfg.progress_bar and not quiet:
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, cfg.log_every_n_steps // 2)))
    elif not quiet:
        callbacks.append(PrintProgress(cfg.log_every_n_steps))
    loggers = make_loggers(cfg.tracking, run_dir, cfg.comet_project, cfg.comet_workspace,
                           experiment_name=f"{cfg.name}/{run_dir.name}", tags=[cfg.model.name, cfg.data.preset])

    trainer = pl.Trainer(max_steps=total_steps, max_epochs=-1, val_check_interval=val_every,
                         check_val_every_n_epoch=None, num_sanity_val_steps=0, callbacks=callbacks,
                         logger=loggers, log_every_n_steps=cfg.log_every_n_steps, default_root_dir=str(run_dir),
                         enable_progress_bar=cfg.progress_bar and not quiet, enable_model_summary=False,
                         gradient_clip_val=cfg.grad_clip, use_distributed_sampler=False, benchmark=False,
                         **settings)
    for lg in loggers:
        lg.log_hyperparams(cfg.to_dict())

    if ckpt_path and trainer.is_global_zero and not quiet:
        print(f"resuming from {ckpt_path}", flush=True)

    t0 = time.perf_counter()
    previous_env = os.environ.get("OCELOT_RUN_DIR")
    os.environ["OCELOT_RUN_DIR"] = str(run_dir)  # DDP worker processes started by Lightning inherit it
    try:
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path, weights_only=True)
    except SIGTERMException:
        _finalize_loggers(loggers)
        return RunResult(run_dir, cfg, {}, _maybe(ckpt_dir / "best.ckpt"), _maybe(last_ckpt),
                         stopped_by_signal=True)
    except NonFiniteLossError:
        _finalize_loggers(loggers)
        raise
    finally:
        if previous_env is None:
            os.environ.pop("OCELOT_RUN_DIR", None)
        else:
            os.environ["OCELOT_RUN_DIR"] = previous_env
    fit_wall = time.perf_counter() - t0
    if stopper.stopped_by_signal or trainer.received_sigterm:
        _finalize_loggers(loggers)
        return RunResult(run_dir, cfg, {}, _maybe(ckpt_dir / "best.ckpt"), _maybe(last_ckpt), stopped_by_signal=True)
    # final state of the run (idempotent on reruns: a finished run resumes at max_steps and does nothing)
    trainer.save_checkpoint(str(last_ckpt), weights_only=False)
    if not trainer.is_global_zero:
        return RunResult(run_dir, cfg)

    best = ckpt_dir / "best.ckpt"
    weights_from = weights_checkpoint(run_dir)
    model = load_model_from_checkpoint(cfg, weights_from)
    show = not quiet
    detection = choose_detection(model, cfg, progress=show) if cfg.detection.threshold == "auto" else None
    if detection and show:
        print(f"detection threshold chosen on val: {detection['threshold']} (val mF1 {detection['val_mF1']:.4f}; "
              f"at 0.5: {detection['val_mF1_at_0.5']:.4f}), min distance {detection['min_distance_um']} µm",
              flush=True)
    metrics = evaluate_model(model, cfg, "test", tta=cfg.tta, predictions_dir=run_dir / "predictions",
                             transforms=cfg.eval_transforms, progress=show,
                             threshold=detection["threshold"] if detection else None,
                             min_distance_um=detection["min_distance_um"] if detection else None)
    metrics["detection"] = detection or {"threshold": cfg.detection.threshold,
                                         "min_distance_um": cfg.detection.min_distance_um, "chosen_on": None}
    metrics["train_mpp"] = training_mpp(list(data.datasets["train"].mpp.values()))
    metrics.update(_run_summary(cfg, model, history, fit_wall, weights_from, trainer, total_steps))
    metrics["equivariance"] = trained_equivariance_error(model, cfg)
    atomic_write(run_dir / "metrics.json", json.dumps(_json_clean(metrics), indent=2))
    for lg in loggers:
        if isinstance(lg, CometTracker):
            lg.log_summary({"test": flatten_scores(metrics["test"]["cells"]) | {"mF1": metrics["test"]["mF1"]}})
    _finalize_loggers(loggers)
    leaked = find_secret(run_dir)
    if leaked:  # never expected; guard so that a key can never be shipped with a run folder
        for p in leaked:
            p.unlink()
        print(f"removed {len(leaked)} file(s) from the run folder that contained the Comet API key", file=sys.stderr)
    return RunResult(run_dir, cfg, metrics, _maybe(best), _maybe(last_ckpt))



def _finalize_loggers(loggers) -> None:
    for lg in loggers:
        try:
            if isinstance(lg, CometTracker):
                lg.close()
            else:
                lg.finalize("success")
        except Exception as e:  # noqa: BLE001 - never lose a run to a logger
            print(f"logger {type(lg).__name__} failed to finalize: {type(e).__name__}", file=sys.stderr)



def _run_summary(cfg: ExperimentConfig, model: nn.Module, history: HistoryCallback, fit_wall: float,
                 weights_from: Path, trainer: pl.Trainer, total_steps: int) -> dict[str, Any]:
    rows = history.rows
    target = cfg.target_mf1
    hit = next((r for r in rows if target is not None and r["val_mF1"] >= target), None)
    best_row = max(rows, key=lambda r: r["val_mF1"]) if rows else None
    return {
        "model": cfg.model.name, "model_kwargs": cfg.model.kwargs, "group": getattr(model, "group", None),
        "preset": cfg.data.preset, "subset_fraction": cfg.data.subset_fraction, "seed": cfg.seed,
        "parameters": count_parameters(model),
        "steps": int(trainer.global_step), "max_steps": total_steps,
        "train_wall_s": history.elapsed(), "fit_wall_s_this_session": fit_wall,
        "best_val_mF1": best_row["val_mF1"] if best_row else None,
        "best_val_step": best_row["step"] if best_row else None,
        "target_mF1": target,
        "time_to_target_s": hit["elapsed_s"] if hit else None,
        "steps_to_target": hit["step"] if hit else None,
        "weights": weights_from.name,
        "device": "cuda" if torch.cuda.is_available() and cfg.accelerator != "cpu" else "cpu",
    }
