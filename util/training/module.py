"""The LightningModule: an injected model trained with MONAI ``DiceCELoss``; validation scores OCELOT mF1."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import lightning.pytorch as pl

from util.cells import Threshold, apply_threshold, choose_threshold
from util.cells import detect as detect_with
from util.config import ExperimentConfig
from util.inference import predict_logits
from util.metrics import CLASS_NAMES, SegmentationAccumulator, cell_detection_scores, cutoff_px
from util.training.data import steps_per_epoch  # noqa: F401  (old home of the name)


NUM_CLASSES = 3



class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or inf; the message names the step."""



def make_loss(cfg: ExperimentConfig) -> nn.Module:
    """MONAI ``DiceCELoss`` (softmax on logits, one-hot targets) or its parts, from the config."""
    from monai.losses import DiceCELoss, DiceLoss

    weight = torch.tensor(cfg.class_weights, dtype=torch.float32) if cfg.class_weights else None
    if cfg.loss == "dice_ce":
        return DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=cfg.lambda_dice, lambda_ce=cfg.lambda_ce,
                          weight=weight)
    if cfg.loss == "dice":
        return DiceLoss(to_onehot_y=True, softmax=True)
    return DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.0, lambda_ce=1.0, weight=weight)



def model_kwargs(cfg: ExperimentConfig) -> dict[str, Any]:
    kw = dict(cfg.model.kwargs)
    kw.setdefault("in_channels", 3)
    kw["num_classes"] = NUM_CLASSES
    return kw



class SegmentationModule(pl.LightningModule):
    """Trains an injected segmentation model with MONAI ``DiceCELoss``; validation computes OCELOT mF1 and Dice.

    The data come from a LightningDataModule (:class:`util.training.data.OcelotDataModule` in the engine).

    Args:
        model: maps images ``B×C×H×W`` to class logits ``B×3×H×W`` (0 no cell, 1 background, 2 tumour cell),
            e.g. ``build_model(cfg.model.name, **model_kwargs(cfg))``.
        cfg: the run's config (loss, optimizer, schedule, detection and inference settings).
        total_steps: optimizer steps of the whole run (the learning-rate schedule's length).
        val_every: optimizer steps between validations.
    """

    def __init__(self, model: nn.Module, cfg: ExperimentConfig, total_steps: int, val_every: int):
        super().__init__()
        self.cfg = cfg
        self.model = model
        self.loss_fn = make_loss(cfg)
        self.total_steps = total_steps
        self.val_every = val_every
        self._val: dict[str, list] = {}
        self._train_losses: list[float] = []
        self.last_val: dict[str, float] = {}

    def _kept_checkpoint(self) -> str:
        run_dir = os.environ.get("OCELOT_RUN_DIR")
        last = Path(run_dir) / "checkpoints" / "last.ckpt" if run_dir else None
        if last is not None and last.is_file():
            return f"the last good checkpoint is kept ({last})"
        return "no checkpoint had been written yet (lower the learning rate or check the data)"

    # ------------------------------------------------------------------------------ forward
    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        logits = self.model(batch["image"])
        loss = self.loss_fn(logits, batch["mask"].unsqueeze(1))
        bad = not bool(torch.isfinite(loss))
        if self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            raise NonFiniteLossError(
                f"non-finite training loss ({float(loss.detach())}) at step {self.global_step} "
                f"(0-based; {self.global_step} optimizer steps completed, batch ids {batch['id']}). "
                f"Stopping; {self._kept_checkpoint()}")
        self.log("train/loss", loss.detach(), on_step=True, on_epoch=False, prog_bar=True,
                 batch_size=batch["image"].shape[0])
        self._train_losses.append(float(loss.detach()))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = predict_logits(self.model, batch["image"], **inference_kwargs(self.cfg))
        loss = self.loss_fn(logits, batch["mask"].unsqueeze(1))
        probs = logits.softmax(1)
        v = self._val
        v.setdefault("loss", []).append(float(loss))
        v.setdefault("seg", SegmentationAccumulator(NUM_CLASSES)).update(probs.argmax(1), batch["mask"])
        for i in range(probs.shape[0]):
            mpp = float(batch["mpp"][i])
            v.setdefault("pred", []).append(detect(probs[i], mpp, self.cfg, threshold=_validation_threshold(self.cfg)))
            v.setdefault("gt", []).append(batch["points"][i].cpu().numpy())
            v.setdefault("cutoff", []).append(cutoff_px(mpp, self.cfg.detection.cutoff_um))

    def on_validation_epoch_end(self) -> None:
        v, self._val = self._val, {}
        if not v:
            return
        det = self.cfg.detection
        threshold = det.threshold
        if threshold == "auto":  # the best global threshold on the grid: checkpoint choice free of calibration
            threshold, _ = choose_threshold(v["pred"], v["gt"], v["cutoff"], det.threshold_grid,
                                            tolerance=det.threshold_tolerance)
        pred = [apply_threshold(p, threshold) for p in v["pred"]]
        scores = cell_detection_scores(pred, v["gt"], cutoff=v["cutoff"])
        seg = v["seg"].compute()
        vals = {"val/loss": float(np.mean(v["loss"])), "val/mF1": scores["mF1"], "val/threshold": float(threshold)}
        for name in CLASS_NAMES.values():
            vals[f"val/F1_{name}"] = scores[name]["f1"]
            vals[f"val/dice_{name}"] = seg["dice"][name]
        vals = {k: (0.0 if not np.isfinite(x) else x) for k, x in vals.items()}
        self.log_dict(vals, prog_bar=False, sync_dist=self.trainer.world_size > 1)
        self.log("val_mF1", vals["val/mF1"], prog_bar=True, sync_dist=self.trainer.world_size > 1)
        self.last_val = vals

    # -------------------------------------------------------------------------- optimisers
    def configure_optimizers(self):
        cfg = self.cfg
        params = self.model.parameters()
        if cfg.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=cfg.learning_rate, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                  nesterov=cfg.momentum > 0)
        elif cfg.optimizer == "adam":
            opt = torch.optim.Adam(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        else:
            opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        if cfg.schedule == "none":
            return opt
        total, warm = self.total_steps, cfg.warmup_steps
        if cfg.schedule == "onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.learning_rate, total_steps=total)
        elif cfg.schedule == "step":
            sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[int(total * 0.6), int(total * 0.85)],
                                                         gamma=0.1)
        else:
            sched = torch.optim.lr_scheduler.LambdaLR(opt, _CosineWarmup(total, warm))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}



class _CosineWarmup:
    """Linear warm-up for ``warm`` steps, then cosine decay to 1 % of the peak at ``total``."""

    def __init__(self, total: int, warm: int):
        self.total, self.warm = max(1, total), warm

    def __call__(self, step: int) -> float:
        if step < self.warm:
            return (step + 1) / self.warm
        t = min(1.0, (step - self.warm) / max(1, self.total - self.warm))
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t))



def inference_kwargs(cfg: ExperimentConfig, tta: bool | None = None) -> dict[str, Any]:
    """The keyword arguments of :func:`util.inference.predict_logits` from the config's ``inference`` section."""
    i = cfg.inference
    return {"tile_size": i.tile_size, "overlap": i.overlap, "blend": i.blend, "sw_batch_size": i.sw_batch_size,
            "tta": cfg.tta if tta is None else tta}



def detect(probs: Tensor, mpp: float, cfg: ExperimentConfig, threshold: Threshold | None = None,
           min_distance_um: float | None = None) -> np.ndarray:
    """Cells (N×4: x, y, class, confidence) in one probability map, with the config's µm settings
    (``threshold``/``min_distance_um`` override the config's; see :func:`util.cells.detect`)."""
    return detect_with(probs, mpp, cfg.detection, threshold=threshold, min_distance_um=min_distance_um)



def _validation_threshold(cfg: ExperimentConfig) -> Threshold:
    """The threshold validation detects at: the config's number, or for ``auto`` the lowest value of the grid
    (the sweep then keeps cells above each grid value; see :mod:`util.cells`)."""
    d = cfg.detection
    return min(d.threshold_grid) if d.threshold == "auto" else d.threshold


_inference_kwargs = inference_kwargs  # old private name
