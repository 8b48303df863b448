"""Evaluation of a trained model: test sets and their rotated/flipped copies, the validation threshold,
the trained equivariance error, re-scoring and prediction from a run folder, the metrics table."""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from model import build_model
from util.cells import (Threshold, apply_threshold, choose_threshold, detection_scores, logits_at, probabilities,
                        resolve_threshold, training_mpp)
from util.config import ExperimentConfig, load_config
from util.dataloader import OcelotDataset
from util.files import atomic_write
from util.metrics import CLASS_NAMES, SegmentationAccumulator, cell_detection_scores, cutoff_px
from util.ocelot import write_points_json
from util.training.checkpoints import load_checkpoint, weights_checkpoint
from util.training.module import NUM_CLASSES, inference_kwargs, detect, model_kwargs
from util.training.runs import _json_clean


def load_model_from_checkpoint(cfg: ExperimentConfig, path: str | Path) -> nn.Module:
    """Build ``cfg``'s model and load the weights of a Lightning checkpoint (``weights_only=True``)."""
    ckpt = load_checkpoint(path)
    state = ckpt.get("state_dict", ckpt)
    state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")} or state
    model = build_model(cfg.model.name, **model_kwargs(cfg))
    mine = model.state_dict()
    missing = [k for k in mine if k not in state]
    unexpected = [k for k in state if k not in mine]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in mine.items()
              if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        first = (shapes or [f"missing {k}" for k in missing] or [f"unexpected {k}" for k in unexpected])[0]
        raise ValueError(
            f"config and checkpoint disagree: {path} does not hold the weights of model {cfg.model.name!r} with "
            f"{cfg.model.kwargs} ({len(missing)} missing, {len(unexpected)} unexpected, {len(shapes)} wrong-shape "
            f"tensors; first: {first}). Evaluate it with the config.yaml of the run that wrote it")
    model.load_state_dict(state)
    return model.eval()



_TRANSFORM_ELEMENTS = {"rot90": (90.0, False), "rot180": (180.0, False), "rot270": (270.0, False),
                       "flip": (0.0, True), "rot45": (45.0, False)}



@torch.no_grad()
def evaluate_model(model: nn.Module, cfg: ExperimentConfig, split: str = "test", tta: bool = False,
                   predictions_dir: Path | None = None, transforms: Sequence[str] = (),
                   device: str | torch.device | None = None, threshold: Threshold | None = None,
                   min_distance_um: float | None = None, model_mpp: float | None = None,
                   progress: bool = True) -> dict[str, Any]:
    """Dice/IoU per class, OCELOT cell scores and class-agnostic detection on a split (full patches), also on
    transformed copies.

    For each name in ``transforms`` (``rot90``, ``rot180``, ``rot270``, ``flip``, ``rot45``) the test image is
    transformed, predicted, and the prediction mapped back (exactly for multiples of 90° and flips) before
    detection and scoring against the original annotations. For ``rot45`` (interpolated) only cells inside the
    central disk are scored.

    ``threshold``/``min_distance_um`` override the config's detection settings (``threshold`` is required when
    the config says ``auto``: pass the one chosen on validation). ``model_mpp``: the resolution the model was
    trained at; images of ``cfg.data.root`` at another resolution are resampled to it (:mod:`util.cells`).
    Each entry also holds ``per_image`` TP/FP/FN counts per class (for bootstrap intervals), ``detection``
    (class-agnostic P/R/F1), ``headline`` (``mF1``, or ``detection_f1`` when every annotated cell of the split
    has one class) and its wall time.
    """
    from tqdm.auto import tqdm

    from model.equivariance import GroupElement, act, act_inverse, central_disk

    threshold = threshold if threshold is not None else resolve_threshold(cfg.detection, None)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() and cfg.accelerator != "cpu" else "cpu"))
    model = model.to(device).eval()
    ds = OcelotDataset(cfg.data.root, split, mask_radius_um=cfg.data.mask_radius_um)
    variants = {"": None} | {t: GroupElement(*_TRANSFORM_ELEMENTS[t]) for t in transforms}
    acc = {k: {"pred": [], "gt": [], "cutoff": [], "seg": SegmentationAccumulator(NUM_CLASSES), "wall": 0.0}
           for k in variants}
    ids, mpps = [], []
    infer = inference_kwargs(cfg, tta)
    t0 = time.perf_counter()
    bar = tqdm(total=len(ds) * len(variants), desc=f"evaluate {split}", unit="img", disable=not progress,
               mininterval=2.0, file=sys.stderr, dynamic_ncols=True)
    for i in range(len(ds)):
        s = ds[i]
        x = s["image"].unsqueeze(0).to(device)
        mpp = float(s["mpp"])
        ids.append(s["id"])
        mpps.append(mpp)
        gt = s["points"].numpy()
        for name, g in variants.items():
            bar.set_postfix_str(f"{s['id']} {name or 'original'}", refresh=False)
            tv = time.perf_counter()
            xi = x if g is None else act(x, g)
            logits = logits_at(model, xi[0], mpp, model_mpp, **infer)
            if g is not None:
                logits = act_inverse(logits.unsqueeze(0), g)[0]
            probs = logits.softmax(0)
            pred = detect(probs, mpp, cfg, threshold=threshold, min_distance_um=min_distance_um)
            gt_i = gt
            if g is not None and not g.exact:
                h, w = probs.shape[-2:]
                disk = central_disk(h, w, margin=2.0).numpy()
                inside = lambda p: disk[np.clip(p[:, 1].astype(int), 0, h - 1), np.clip(p[:, 0].astype(int), 0, w - 1)]  # noqa: E731
                pred = pred[inside(pred)] if len(pred) else pred
                gt_i = gt[inside(gt)] if len(gt) else gt
            a = acc[name]
            a["pred"].append(pred)
            a["gt"].append(gt_i)
            a["cutoff"].append(cutoff_px(mpp, cfg.detection.cutoff_um))
            a["seg"].update(probs.argmax(0, keepdim=True).cpu(), s["mask"].unsqueeze(0))
            a["wall"] += time.perf_counter() - tv
            bar.update(1)
    bar.close()
    classes_present = sorted({int(c) for g in acc[""]["gt"] for c in np.asarray(g).reshape(-1, 3)[:, 2]})
    out: dict[str, Any] = {}
    for name, a in acc.items():
        t_score = time.perf_counter()
        cells = cell_detection_scores(a["pred"], a["gt"], cutoff=a["cutoff"])
        seg = a["seg"].compute()
        agnostic = detection_scores(a["pred"], a["gt"], a["cutoff"])
        entry = {"mF1": cells["mF1"], "cells": {k: cells[k] for k in CLASS_NAMES.values()}, "dice": seg["dice"],
                 "iou": seg["iou"], "detection": agnostic, "n_images": len(a["pred"]),
                 "headline": "detection_f1" if len(classes_present) == 1 else "mF1",
                 "per_image": per_image_counts(a["pred"], a["gt"], a["cutoff"], ids)}
        entry["eval_wall_s"] = a["wall"] + time.perf_counter() - t_score
        out[split if not name else f"{split}_{name}"] = entry
        if name == "" and predictions_dir is not None:
            suffix = "_tta" if tta else ""
            write_points_json(predictions_dir / f"{split}{suffix}.json", a["pred"], ids, mpps)
            write_points_json(predictions_dir / f"{split}_gt.json", a["gt"], ids, mpps)
    out["eval_wall_s"] = time.perf_counter() - t0
    out["tta"] = tta
    out["inference"] = infer
    out["threshold"] = threshold
    out["min_distance_um"] = cfg.detection.min_distance_um if min_distance_um is None else min_distance_um
    out["model_mpp"] = model_mpp
    out["data_root"] = str(cfg.data.root)
    out["classes_present"] = classes_present
    return out



def per_image_counts(pred: Sequence[np.ndarray], gt: Sequence[np.ndarray], cutoffs: Sequence[float],
                     ids: Sequence[str]) -> list[dict[str, Any]]:
    """Per image ``{"id", "BC": [tp, fp, fn], "TC": [...]}`` by the OCELOT rule (the sums give the split's scores)."""
    rows = []
    for p, g, c, i in zip(pred, gt, cutoffs, ids):
        s = cell_detection_scores([p], [g], cutoff=c)
        rows.append({"id": i} | {n: [s[n]["tp"], s[n]["fp"], s[n]["fn"]] for n in CLASS_NAMES.values()})
    return rows



@torch.no_grad()
def choose_detection(model: nn.Module, cfg: ExperimentConfig, split: str = "val",
                     device: str | torch.device | None = None, progress: bool = True) -> dict[str, Any]:
    """For ``detection.threshold: auto``: the threshold (per class with ``per_class_threshold``) and, with
    ``min_distance_grid_um``, the minimum distance that maximise mF1 on ``split`` (validation), with the model
    as it will be tested. Returns ``{"threshold", "min_distance_um", "val_mF1", "val_mF1_at_0.5", "curve", ...}``.
    """
    from tqdm.auto import tqdm

    d = cfg.detection
    device = torch.device(device or ("cuda" if torch.cuda.is_available() and cfg.accelerator != "cpu" else "cpu"))
    model = model.to(device).eval()
    ds = OcelotDataset(cfg.data.root, split, mask_radius_um=cfg.data.mask_radius_um)
    distances = list(d.min_distance_grid_um or [d.min_distance_um])
    low = min(d.threshold_grid + [0.5])
    t0 = time.perf_counter()
    cells: dict[float, list[np.ndarray]] = {m: [] for m in distances}
    gts, cutoffs = [], []
    for i in tqdm(range(len(ds)), desc=f"threshold on {split}", unit="img", disable=not progress,
                  mininterval=2.0, file=sys.stderr, dynamic_ncols=True):
        s = ds[i]
        mpp = float(s["mpp"])
        probs = probabilities(model, s["image"], mpp, None, **inference_kwargs(cfg, cfg.tta))
        for m in distances:
            cells[m].append(detect(probs, mpp, cfg, threshold=low, min_distance_um=m))
        gts.append(s["points"].numpy())
        cutoffs.append(cutoff_px(mpp, d.cutoff_um))
    best: dict[str, Any] | None = None
    for m in distances:
        thr, info = choose_threshold(cells[m], gts, cutoffs, d.threshold_grid, per_class=d.per_class_threshold,
                                     tolerance=d.threshold_tolerance)
        at_half = cell_detection_scores([apply_threshold(c, 0.5) for c in cells[m]], gts, cutoff=cutoffs)["mF1"]
        cand = {"threshold": thr, "min_distance_um": m, "val_mF1": info["mF1"], "val_mF1_at_0.5": at_half,
                "curve": info["curve"]}
        # ties keep the configured distance (listed first when present), then the smaller one
        if best is None or cand["val_mF1"] > best["val_mF1"] + 1e-12:
            best = cand
    assert best is not None
    best.update({"chosen_on": split, "grid": list(d.threshold_grid), "per_class": d.per_class_threshold,
                 "tolerance": d.threshold_tolerance,
                 "min_distance_grid_um": d.min_distance_grid_um, "wall_s": time.perf_counter() - t0})
    return best



@torch.no_grad()
def trained_equivariance_error(model: nn.Module, cfg: ExperimentConfig) -> dict[str, Any]:
    """``model.equivariance.equivariance_error`` of the trained model on a central test crop (model's group, or
    D4 for non-equivariant models)."""
    from model.equivariance import equivariance_error, max_error

    from util.inference import size_multiple

    ds = OcelotDataset(cfg.data.root, "test", mask_radius_um=cfg.data.mask_radius_um)
    img = ds[0]["image"]
    mult = size_multiple(model)
    side = min(256, (min(img.shape[-2:]) // mult) * mult)
    h, w = img.shape[-2:]
    y0, x0 = (h - side) // 2, (w - side) // 2
    x = img[:, y0:y0 + side, x0:x0 + side].unsqueeze(0).to(next(model.parameters()).device)
    group = getattr(model, "group", None) or "D4"
    errs = equivariance_error(model.eval(), x, group)
    return {"group": group, "crop": side, "max": max_error(errs), "per_element": errs}



@dataclass
class LoadedRun:
    """A finished (or interrupted) run folder ready for inference: :func:`load_run`."""

    run_dir: Path
    cfg: ExperimentConfig
    checkpoint: Path
    model: nn.Module
    threshold: Threshold | None  #: the config's number, or the one chosen on validation (None: auto, not chosen)
    min_distance_um: float
    model_mpp: float | None  #: the training resolution (µm/px), None when unknown
    metrics: dict[str, Any] = field(default_factory=dict)



def load_run(run_or_checkpoint: str | Path) -> LoadedRun:
    """The model, config, checkpoint and chosen detection settings of a run folder (or a checkpoint inside one).

    The weights are ``checkpoints/best.ckpt``, else ``last.ckpt``; the threshold and minimum distance are the
    config's, or for ``threshold: auto`` those stored in ``metrics.json`` (``detection``); the training resolution
    is ``metrics.json``'s ``train_mpp``, else the median over the config's training split when its data exists.
    """
    p = Path(run_or_checkpoint)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such run folder or checkpoint")
    if p.is_file():
        if p.suffix != ".ckpt":
            raise ValueError(f"{p}: expected a run folder (runs/<name>/<run-id>) or a .ckpt file inside one, "
                             f"got a {p.suffix or 'plain'} file")
        ckpt, run_dir = p, p.parent.parent
        if ckpt.parent.name != "checkpoints" and not (run_dir / "config.yaml").is_file():
            run_dir = p.parent  # a checkpoint copied into the run folder itself
    else:
        run_dir = p
        ckpt = None
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no config.yaml)")
    if ckpt is None:
        ckpt = weights_checkpoint(run_dir)
    cfg = load_config(cfg_path)
    metrics: dict[str, Any] = {}
    if (run_dir / "metrics.json").is_file():
        try:
            metrics = json.loads((run_dir / "metrics.json").read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{run_dir / 'metrics.json'}: not valid JSON ({e.msg}, line {e.lineno})") from None
    chosen = metrics.get("detection") or {}
    threshold = cfg.detection.threshold if cfg.detection.threshold != "auto" else chosen.get("threshold")
    if threshold == "auto":
        threshold = None
    min_distance = chosen.get("min_distance_um") or cfg.detection.min_distance_um
    model_mpp = metrics.get("train_mpp")
    if model_mpp is None and Path(cfg.data.root).is_dir():
        try:
            model_mpp = training_mpp(list(OcelotDataset(cfg.data.root, "train").mpp.values()))
        except (OSError, ValueError):
            model_mpp = None
    model = load_model_from_checkpoint(cfg, ckpt)
    return LoadedRun(run_dir, cfg, ckpt, model, threshold, float(min_distance), model_mpp, metrics)



def evaluate(run_or_checkpoint: str | Path, split: str = "test", tta: bool = False,
             transforms: Sequence[str] | None = None, write: bool = True, data_root: str | Path | None = None,
             threshold: Threshold | None = None, progress: bool = True) -> dict[str, Any]:
    """Evaluate a finished run folder (its ``best.ckpt``, else ``last.ckpt``) or a checkpoint inside one.

    ``data_root``: another OCELOT-layout folder (any image size, resolution and class set: images are resampled
    to the run's training µm/px, points mapped back; class-agnostic detection is reported for every set).
    ``threshold``: a number instead of the run's (chosen on validation for ``auto``); ``"auto"`` chooses one
    afresh on the run's validation split with this checkpoint (e.g. for runs trained with a fixed threshold).
    Writes ``<run>/eval_<split>[_tta][_<data folder>].json`` and the predictions when ``write``.
    """
    run = load_run(run_or_checkpoint)
    cfg = run.cfg
    if data_root is not None:
        root = Path(data_root)
        if not root.is_dir():
            raise FileNotFoundError(f"--data-root {root}: no such folder")
        cfg = cfg.replace([f"data.root={root}"])
    chosen = None
    if threshold == "auto":  # choose afresh on the run's own validation split, with this checkpoint
        auto_cfg = run.cfg.replace(["detection.threshold=auto"])
        chosen = choose_detection(run.model, auto_cfg, progress=progress)
        threshold = chosen["threshold"]
    thr = threshold if threshold is not None else run.threshold
    if thr is None:
        raise ValueError(f"{run.run_dir}: detection.threshold is 'auto' but metrics.json holds no chosen threshold "
                         f"(the run has not finished); pass a threshold, e.g. --threshold 0.5")
    tag = "" if data_root is None else "_" + Path(data_root).resolve().name
    tag += "" if threshold is None else ("_tauto" if chosen else f"_t{threshold}")
    res = evaluate_model(run.model, cfg, split, tta=tta,
                         predictions_dir=run.run_dir / f"predictions{tag}" if write else None,
                         transforms=cfg.eval_transforms if transforms is None else transforms, threshold=thr,
                         min_distance_um=run.min_distance_um, model_mpp=run.model_mpp, progress=progress)
    res["checkpoint"] = str(run.checkpoint)
    res["run_dir"] = str(run.run_dir)
    if chosen:
        res["detection"] = chosen
    if write:
        name = f"eval_{split}{'_tta' if tta else ''}{tag}.json"
        atomic_write(run.run_dir / name, json.dumps(_json_clean(res), indent=2))
    return res



@torch.no_grad()
def predict(run_or_checkpoint: str | Path, images: Sequence[Tensor | np.ndarray], mpp: float | Sequence[float] = 0.2,
            tta: bool = False) -> list[np.ndarray]:
    """Cells (N×4: x, y, class, confidence) for images (C×H×W float in [0, 1], or H×W×3 uint8) at ``mpp`` µm/px,
    with the run's detection settings (see :func:`load_run`; images are resampled to the training resolution)."""
    run = load_run(run_or_checkpoint)
    if run.threshold is None:
        raise ValueError(f"{run.run_dir}: no detection threshold chosen yet (the run has not finished)")
    mpps = [float(mpp)] * len(images) if np.isscalar(mpp) else [float(m) for m in mpp]
    out = []
    for img, m in zip(images, mpps):
        t = torch.as_tensor(img)
        if t.dtype == torch.uint8:
            t = t.permute(2, 0, 1).float() / 255.0
        probs = probabilities(run.model, t.float(), m, run.model_mpp, **inference_kwargs(run.cfg, tta))
        out.append(detect(probs, m, run.cfg, threshold=run.threshold, min_distance_um=run.min_distance_um))
    return out



def format_metrics_table(metrics: dict[str, Any], split: str = "test") -> str:
    """A plain-text table of mF1, P/R/F1 and Dice/IoU per class for a split and its transformed copies."""
    lines = []
    keys = [k for k in metrics if k == split or k.startswith(f"{split}_")]
    keys = [k for k in keys if isinstance(metrics[k], dict) and "mF1" in metrics[k]]
    head = f"{'set':<14}{'mF1':>8}{'P_BC':>8}{'R_BC':>8}{'F1_BC':>8}{'P_TC':>8}{'R_TC':>8}{'F1_TC':>8}" \
           f"{'Dice_BC':>9}{'Dice_TC':>9}{'IoU_BC':>8}{'IoU_TC':>8}{'det_F1':>8}"
    lines.append(head)
    lines.append("-" * len(head))
    for k in keys:
        e = metrics[k]
        c = e["cells"]

        def f(v: Any) -> str:
            return "     n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:8.4f}"

        lines.append(f"{k:<14}{f(e['mF1'])}{f(c['BC']['precision'])}{f(c['BC']['recall'])}{f(c['BC']['f1'])}"
                     f"{f(c['TC']['precision'])}{f(c['TC']['recall'])}{f(c['TC']['f1'])} "
                     f"{f(e['dice']['BC'])} {f(e['dice']['TC'])}{f(e['iou']['BC'])}{f(e['iou']['TC'])}"
                     f"{f((e.get('detection') or {}).get('f1'))}")
    extra = []
    for key, label in (("parameters", "parameters"), ("train_wall_s", "train wall time (s)"),
                       ("time_to_target_s", "time to target (s)"), ("best_val_mF1", "best val mF1")):
        if key in metrics and metrics[key] is not None:
            v = metrics[key]
            fmt = ".4f" if key == "best_val_mF1" else ".1f"
            extra.append(f"{label}: {v:{fmt}}" if isinstance(v, float) else f"{label}: {v}")
    first = metrics.get(split)
    if isinstance(first, dict) and first.get("headline") == "detection_f1":
        extra.append(f"every annotated cell of this set has one class: the headline is class-agnostic detection "
                     f"F1 = {first['detection']['f1']:.4f} (det_F1 column)")
    det = metrics.get("detection")
    if isinstance(det, dict) and det.get("chosen_on"):
        extra.append(f"detection threshold {det['threshold']} (chosen on {det['chosen_on']}: mF1 {det['val_mF1']:.4f}, "
                     f"at 0.5: {det['val_mF1_at_0.5']:.4f}), min distance {det['min_distance_um']} µm")
    elif "threshold" in metrics:
        extra.append(f"detection threshold {metrics['threshold']}")
    if "eval_wall_s" in metrics:
        extra.append(f"evaluation wall time (s): {metrics['eval_wall_s']:.1f}")
    if "equivariance" in metrics:
        eq = metrics["equivariance"]
        extra.append(f"equivariance error ({eq['group']}, max): {eq['max']:.3g}")
    return "\n".join(lines + extra)
