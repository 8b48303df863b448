"""Training and evaluation engine: LightningModule, Trainer assembly, run folders, resume, evaluation.

``train(config) -> RunResult`` runs one experiment end to end and writes ``<runs_dir>/<name>/<run_id>/``:

* ``config.yaml``: the fully resolved :class:`~util.config.ExperimentConfig`;
* ``history.csv``: one row per validation (step, wall time, train/val loss, val mF1, F1 and Dice per class, lr);
* ``metrics.json``: test Dice/IoU per class, cell P/R/F1 per class and mF1 (also on the 90°-rotated and flipped
  test images), equivariance error of the trained model, wall time, time to target, parameter count, ...;
* ``checkpoints/best.ckpt`` (highest validation mF1) and ``checkpoints/last.ckpt``;
* ``predictions/test.json`` (and ``test_gt.json``) in the OCELOT 2023 point format (see :func:`write_points_json`);
* ``env.json``: package versions, git commit, device; ``logs/v<session>/metrics.csv`` (CSV logger), ``comet/`` (offline
  Comet archives, when used).

Training is step-based: the training stream is a sequence of ``max_steps`` batches drawn by
:class:`ResumableSampler` (a fresh seeded permutation every pass over the data, each sample's crop and
augmentation seeded by its position in the stream). Checkpoints hold the Lightning loop state and the number
of batches consumed, so a run stopped anywhere (SIGTERM, Slurm pre-emption) and restarted with ``resume=auto``
continues with exactly the batches an uninterrupted run would have seen. Checkpoints are written atomically
(temporary file, fsync, ``os.replace``) and loaded with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

import lightning.pytorch as pl
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.utilities.exceptions import SIGTERMException

from model import build_model, count_parameters
from util.cells import (Threshold, apply_threshold, choose_threshold, detection_scores, logits_at, probabilities,
                        resolve_threshold, training_mpp)
from util.cells import detect as detect_with
from util.config import ExperimentConfig, load_config
from util.dataloader import OcelotDataset, collate
from util.inference import predict_logits
from util.metrics import CLASS_NAMES, SegmentationAccumulator, cell_detection_scores, cutoff_px, flatten_scores
from util.ocelot import check_dataset_for_training
from util.tracking import CometTracker, find_secret, make_loggers

NUM_CLASSES = 3


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or inf; the message names the step."""


# ============================================================================================ data stream
class ResumableSampler(Sampler):
    """A deterministic stream of ``(dataset index, item seed)`` for ``total_batches`` batches on one rank.

    The global stream visits the dataset in a fresh permutation per pass (``seed`` and pass number); global
    batch ``b`` holds stream positions ``[b·B·W, (b+1)·B·W)``, rank ``r`` takes its ``B`` consecutive ones.
    ``start_batch`` skips the batches a resumed run has already trained on. The item seed is derived from
    ``(seed, stream position)`` so a sample's crop and augmentation do not depend on what ran before.
    """

    def __init__(self, n: int, batch_size: int, total_batches: int, seed: int, rank: int = 0,
                 world_size: int = 1, start_batch: int = 0):
        if n <= 0:
            raise ValueError("ResumableSampler: empty dataset")
        self.n, self.batch_size, self.total_batches = n, batch_size, total_batches
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.start_batch = start_batch
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, p: int) -> np.ndarray:
        if p not in self._perms:
            self._perms = {p: np.random.default_rng([self.seed, p, 7919]).permutation(self.n)}
        return self._perms[p]

    def position(self, batch: int, j: int) -> int:
        return (batch * self.world_size + self.rank) * self.batch_size + j

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for b in range(self.start_batch, self.total_batches):
            for j in range(self.batch_size):
                pos = self.position(b, j)
                idx = int(self._perm(pos // self.n)[pos % self.n])
                item_seed = int(np.random.default_rng([self.seed, pos, 104729]).integers(0, 2**31 - 1))
                yield idx, item_seed

    def __len__(self) -> int:
        return self.total_batches * self.batch_size


class SeededItems(Dataset):
    """Wraps a dataset with a ``reseed(seed)`` method so that ``ds[(index, seed)]`` is a pure function."""

    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, seed = key
        if hasattr(self.base, "reseed"):
            self.base.reseed(seed)
        return self.base[index]


class ResumableLoader(DataLoader):
    """A DataLoader whose state (batches consumed, read from the trainer) is saved in Lightning checkpoints."""

    def __init__(self, *args: Any, progress_fn=None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.progress_fn = progress_fn

    def state_dict(self) -> dict[str, int]:
        return {"batches_done": int(self.progress_fn()) if self.progress_fn else 0}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.start_batch = int(state.get("batches_done", 0))  # type: ignore[attr-defined]


def training_loader(ds: Dataset, cfg: ExperimentConfig, total_steps: int, rank: int = 0, world_size: int = 1,
                    start_batch: int = 0, progress_fn=None) -> ResumableLoader:
    """The engine's training stream: ``total_steps`` batches of ``cfg.data.batch_size`` samples for one rank.

    Each sample is ``ds[(index, item seed)]`` with the seed fixed by its stream position, so the batches are
    the same for any ``cfg.data.num_workers`` and a loader started at ``start_batch`` continues the stream.
    """
    sampler = ResumableSampler(len(ds), cfg.data.batch_size, total_steps, cfg.seed, rank=rank,
                               world_size=world_size, start_batch=start_batch)
    return ResumableLoader(SeededItems(ds), batch_size=cfg.data.batch_size, sampler=sampler,
                           num_workers=cfg.data.num_workers, collate_fn=collate, persistent_workers=False,
                           progress_fn=progress_fn)


# ======================================================================================= checkpoint I/O
class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes checkpoints to a temporary file, fsyncs, then ``os.replace``s it over the target (atomic on
    POSIX): an interrupted write never replaces the previous good checkpoint. Loads with ``weights_only=True``."""

    def save_checkpoint(self, checkpoint: dict, path: str | Path, storage_options: Any = None) -> None:
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path: str | Path, map_location: Any = None, weights_only: bool | None = None) -> dict:
        return load_checkpoint(path, map_location=map_location or "cpu")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically (temporary file in the same folder + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict:
    """``torch.load(path, weights_only=True)`` with a clear error for missing/corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise RuntimeError(f"cannot load checkpoint {path} with weights_only=True: {e}") from e


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


# =========================================================================================== the module
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


def steps_per_epoch(n_train: int, batch_size: int, world_size: int = 1) -> int:
    return max(1, math.ceil(n_train / (batch_size * world_size)))


class SegmentationModule(pl.LightningModule):
    """A registry model trained with MONAI ``DiceCELoss``; validation computes OCELOT mF1 and Dice."""

    def __init__(self, cfg: ExperimentConfig, total_steps: int, val_every: int):
        super().__init__()
        self.cfg = cfg
        self.model = build_model(cfg.model.name, **model_kwargs(cfg))
        self.loss_fn = make_loss(cfg)
        self.total_steps = total_steps
        self.val_every = val_every
        self._val: dict[str, list] = {}
        self._train_losses: list[float] = []
        self.last_val: dict[str, float] = {}
        self.train_ds: OcelotDataset | None = None

    # -------------------------------------------------------------------------------- data
    def _dataset(self, split: str) -> OcelotDataset:
        d = self.cfg.data
        if split == "train":
            manifest = Path(d.manifest_dir) / "subset_manifest.json" if d.manifest_dir else None
            return OcelotDataset(d.root, "train", crop_size=d.crop_size, transforms=d.preset,
                                 mask_radius_um=d.mask_radius_um, subset_fraction=d.subset_fraction,
                                 subset_seed=d.subset_seed, manifest_path=manifest, seed=self.cfg.seed)
        return OcelotDataset(d.root, split, mask_radius_um=d.mask_radius_um)

    def train_dataloader(self) -> DataLoader:
        ds = self.train_ds or self._dataset("train")
        trainer = self.trainer
        return training_loader(ds, self.cfg, self.total_steps, rank=self.global_rank,
                               world_size=trainer.world_size, start_batch=getattr(self, "_resume_batches", 0),
                               progress_fn=lambda: trainer.global_step)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self._dataset("val"), batch_size=1, shuffle=False, collate_fn=collate,
                          num_workers=self.cfg.data.num_workers)

    def _kept_checkpoint(self) -> str:
        run_dir = os.environ.get("OCELOT_RUN_DIR")
        last = Path(run_dir) / "checkpoints" / "last.ckpt" if run_dir else None
        if last is not None and last.is_file():
            return f"the last good checkpoint is kept ({last})"
        return "no checkpoint had been written yet (lower the learning rate or check the data)"

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._resume_batches = int(checkpoint.get("global_step", 0))

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
        logits = predict_logits(self.model, batch["image"], **_inference_kwargs(self.cfg))
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


def _inference_kwargs(cfg: ExperimentConfig, tta: bool | None = None) -> dict[str, Any]:
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


# ============================================================================================ callbacks
class HistoryCallback(Callback):
    """Writes ``history.csv`` (one row per validation) and keeps the training wall time across resumes."""

    FIELDS = ["step", "elapsed_s", "train_loss", "val_loss", "val_mF1", "val_F1_BC", "val_F1_TC", "val_dice_BC",
              "val_dice_TC", "val_threshold", "lr"]

    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict] = []
        self.elapsed_before = 0.0
        self._t0: float | None = None

    def elapsed(self) -> float:
        return self.elapsed_before + (time.perf_counter() - self._t0 if self._t0 is not None else 0.0)

    def on_train_start(self, trainer, pl_module) -> None:
        self._t0 = time.perf_counter()

    def on_validation_end(self, trainer, pl_module: SegmentationModule) -> None:
        if trainer.sanity_checking or not pl_module.last_val:
            return
        v = pl_module.last_val
        losses = pl_module._train_losses
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
        row = {"step": trainer.global_step, "elapsed_s": round(self.elapsed(), 3),
               "train_loss": float(np.mean(losses)) if losses else float("nan"),
               "val_loss": v["val/loss"], "val_mF1": v["val/mF1"], "val_F1_BC": v["val/F1_BC"],
               "val_F1_TC": v["val/F1_TC"], "val_dice_BC": v["val/dice_BC"], "val_dice_TC": v["val/dice_TC"],
               "val_threshold": v.get("val/threshold"), "lr": lr}
        pl_module._train_losses = []
        self.rows = [r for r in self.rows if r["step"] < row["step"]] + [row]
        if trainer.is_global_zero:
            self.write()

    def write(self) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self.FIELDS)
        w.writeheader()
        w.writerows(self.rows)
        _atomic_write_text(self.path, buf.getvalue())

    def state_dict(self) -> dict:
        return {"rows": json.dumps(self.rows), "elapsed": self.elapsed()}

    def load_state_dict(self, state: dict) -> None:
        self.rows = json.loads(state.get("rows", "[]"))
        self.elapsed_before = float(state.get("elapsed", 0.0))


class StopCheckpoint(Callback):
    """On SIGTERM (or Slurm's pre-emption warning), save ``last.ckpt`` at the next step boundary and stop."""

    def __init__(self, last_path: Path):
        self.last_path = last_path
        self.saved_step = -1
        self.stopped_by_signal = False

    def _save(self, trainer) -> None:
        if self.saved_step != trainer.global_step:
            trainer.save_checkpoint(str(self.last_path), weights_only=False)
            self.saved_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.received_sigterm:
            self._save(trainer)
            self.stopped_by_signal = True
            raise SIGTERMException()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            self.stopped_by_signal = True
            if self.saved_step != trainer.global_step and trainer.global_step > 0:
                self._save(trainer)


class FinishValidationOnStop(Callback):
    """A stop signal that lands inside a validation waits for that validation to finish, when it will within
    ``grace_s`` seconds (estimated from the batches so far), so its history row and best-checkpoint chance
    are kept and ``last.ckpt`` is saved after it; a longer validation is abandoned as Lightning does.

    Lightning checks ``trainer.received_sigterm`` after every validation batch and raises ``SIGTERMException``;
    this callback hides the flag while the validation finishes and sets it again at its end (the training
    loop then stops at once). Slurm's warning comes 120 s before the kill (``--signal=B:USR1@120``).
    """

    def __init__(self, grace_s: float = 60.0):
        self.grace_s = grace_s
        self.deferred = False
        self._t0 = 0.0

    def on_validation_start(self, trainer, pl_module) -> None:
        self.deferred, self._t0 = False, time.perf_counter()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        connector = trainer._signal_connector
        if trainer.sanity_checking or not connector.received_sigterm:
            return
        if not self.deferred:
            total = trainer.num_val_batches[dataloader_idx]
            done = batch_idx + 1
            remaining_s = (time.perf_counter() - self._t0) / done * max(0, total - done)
            if remaining_s > self.grace_s:
                return  # too long: stop now, losing this validation
            self.deferred = True
            if trainer.is_global_zero:
                print(f"stop signal at validation batch {done}/{total} of step {trainer.global_step}: finishing "
                      f"the validation (about {remaining_s:.0f} s) before stopping", flush=True)
        connector.received_sigterm = False

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.deferred:
            trainer._signal_connector.received_sigterm = True
            self.deferred = False


class LastCheckpoint(ModelCheckpoint):
    """``checkpoints/last.ckpt`` after every validation, and every ``every`` steps in between.

    Saved after the validation of a step (a step-triggered ``ModelCheckpoint`` saves before it), so the checkpoint
    holds that validation's history row and a run resumed from it never skips a validation. It subclasses
    ``ModelCheckpoint`` only for its place in the hook order: Lightning runs checkpoint callbacks last, in list
    order, so this one runs after the best-checkpoint callback and ``last.ckpt`` holds its updated best score.
    """

    def __init__(self, path: Path, every: int | None, val_every: int):
        super().__init__(dirpath=str(path.parent), filename=path.stem, save_top_k=0, save_last=False,
                         enable_version_counter=False)
        self.path, self.every, self.val_every = path, every, max(1, val_every)

    def _save(self, trainer) -> None:
        trainer.save_checkpoint(str(self.path), weights_only=False)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every and step % self.every == 0 and step % self.val_every != 0:
            self._save(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._save(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        pass

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass


class PrintProgress(Callback):
    """Plain-text progress lines (used when the progress bar is off: logs, Slurm, tests)."""

    def __init__(self, every: int):
        self.every = max(1, every)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if trainer.is_global_zero and (step % self.every == 0 or step == trainer.max_steps):
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            print(f"step {step}/{trainer.max_steps} loss {float(loss):.4f}", flush=True)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero and not trainer.sanity_checking and getattr(pl_module, "last_val", None):
            print(f"val step {trainer.global_step}: mF1 {pl_module.last_val['val/mF1']:.4f}", flush=True)


# ============================================================================================= run folder
@dataclass
class RunResult:
    """What :func:`train` returns."""

    run_dir: Path
    config: ExperimentConfig
    metrics: dict[str, Any] = field(default_factory=dict)
    best_checkpoint: Path | None = None
    last_checkpoint: Path | None = None
    stopped_by_signal: bool = False


def resolve_run_dir(cfg: ExperimentConfig) -> Path:
    """``<runs_dir>/<name>/<run_id>``: ``run_id`` defaults to ``<model>-s<seed>-<config hash>`` so rerunning the
    same command finds the same folder (and resumes); ``resume=never`` picks a fresh ``-N`` suffix."""
    env = os.environ.get("OCELOT_RUN_DIR")
    if env:  # set by rank 0 for DDP worker processes
        return Path(env)
    base = Path(cfg.runs_dir) / cfg.name
    run_id = cfg.run_id or f"{cfg.model.name}-s{cfg.seed}-{cfg.config_hash()}"
    run_dir = base / run_id
    if cfg.resume == "never" and run_dir.exists():
        k = 2
        while (base / f"{run_id}-{k}").exists():
            k += 1
        run_dir = base / f"{run_id}-{k}"
    return run_dir


def git_commit(repo: Path | None = None) -> dict[str, Any]:
    repo = repo or Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        # dirty: the code differs from the commit; study results and run folders written beside it do not count
        dirty = subprocess.run(["git", "status", "--porcelain", "--", ".", ":(exclude)results", ":(exclude)runs"],
                               cwd=repo, capture_output=True, text=True, timeout=10)
        return {"commit": sha.stdout.strip() if sha.returncode == 0 else None,
                "dirty": bool(dirty.stdout.strip()) if dirty.returncode == 0 else None}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def environment_info() -> dict[str, Any]:
    """Package versions, git commit, device (no environment variables, so no secrets)."""
    from importlib import metadata

    pkgs = {}
    for name in ("torch", "lightning", "monai", "torchmetrics", "numpy", "scipy", "albumentations", "escnn", "e2cnn",
                 "comet_ml", "pyyaml", "pandas"):
        try:
            pkgs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pkgs[name] = None
    dev: dict[str, Any] = {"cuda": torch.cuda.is_available(), "cpu_threads": torch.get_num_threads(),
                           "cpu_count": os.cpu_count()}
    if torch.cuda.is_available():
        dev["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {"python": sys.version.split()[0], "platform": platform.platform(), "packages": pkgs,
            "git": git_commit(), "device": dev,
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "hostname": platform.node()}


# ========================================================================================== trainer setup
def _under_slurm() -> bool:
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return SLURMEnvironment.detect()


def _slurm_tasks() -> int:
    try:
        return int(os.environ.get("SLURM_NTASKS", "1"))
    except ValueError:
        return 1


def trainer_settings(cfg: ExperimentConfig) -> dict[str, Any]:
    """Accelerator, devices, strategy, precision and cluster plugins for this machine/config."""
    gpu = torch.cuda.is_available() and cfg.accelerator in ("auto", "gpu", "cuda")
    accelerator = cfg.accelerator if cfg.accelerator != "auto" else ("gpu" if gpu else "cpu")
    precision = cfg.precision
    if precision == "auto":
        precision = ("bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed") if gpu else "32-true"
    elif precision in ("16-mixed", "bf16-mixed") and not gpu:
        print(f"precision={precision} needs a GPU; using 32-true on CPU", file=sys.stderr)
        precision = "32-true"
    devices = cfg.devices
    n_dev = devices if isinstance(devices, int) else (torch.cuda.device_count() if gpu else 1)
    plugins = []
    if _under_slurm():
        from lightning.fabric.plugins.environments import SLURMEnvironment

        plugins.append(SLURMEnvironment(auto_requeue=True, requeue_signal=signal.SIGUSR1))
    multi = n_dev * cfg.num_nodes > 1 or _slurm_tasks() > 1
    strategy = cfg.strategy
    if strategy == "auto" and multi:
        strategy = "ddp"
    return {"accelerator": accelerator, "devices": devices, "num_nodes": cfg.num_nodes, "strategy": strategy,
            "precision": precision, "plugins": plugins + [AtomicCheckpointIO()],
            "deterministic": True if (cfg.deterministic and accelerator == "cpu") else
            ("warn" if cfg.deterministic else False)}


def _world_size(settings: dict[str, Any]) -> int:
    d = settings["devices"]
    n = d if isinstance(d, int) else 1
    return max(n * settings["num_nodes"], _slurm_tasks() if _under_slurm() else 1)


def _env_rank() -> int:
    """Global rank of this process from the launcher's environment (0 when not launched as a worker)."""
    for var in ("RANK", "LOCAL_RANK"):
        if var in os.environ:
            try:
                return int(os.environ[var])
            except ValueError:
                pass
    if _under_slurm() and _slurm_tasks() > 1:
        return int(os.environ.get("SLURM_PROCID", "0"))
    return 0


# ================================================================================================= train
#: Written into a run folder when its training or evaluation fails (the reason); removed when the run finishes.
FAILED_FILE = "failed.json"


def train(config: ExperimentConfig, quiet: bool = False) -> RunResult:
    """Train (or resume) one run, evaluate it on the test split and write the run folder (see module doc).

    A run that fails (an exception other than a stop signal) gets ``failed.json`` (error type, message, step,
    time) in its folder; the comparison tools ignore such folders, and the next successful rerun removes it.
    """
    import warnings

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


def _mark_failed(run_dir: Path, error: BaseException) -> None:
    step = None
    last = run_dir / "checkpoints" / "last.ckpt"
    try:
        step = _checkpoint_step(last) if last.is_file() else None
    except RuntimeError:
        pass
    doc = {"error": type(error).__name__, "message": str(error), "last_checkpoint_step": step,
           "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        _atomic_write_text(run_dir / FAILED_FILE, json.dumps(doc, indent=2))
    except OSError:
        pass


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
    elif cfg.resume != "never":
        ckpt_path = cfg.resume
    if not is_child:
        _prepare_run_dir(cfg, run_dir)
    if cfg.data.manifest_dir is None:
        cfg.data.manifest_dir = str(run_dir)

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    settings = trainer_settings(cfg)
    world = _world_size(settings)
    train_ds = OcelotDataset(cfg.data.root, "train", crop_size=cfg.data.crop_size, transforms=cfg.data.preset,
                             mask_radius_um=cfg.data.mask_radius_um, subset_fraction=cfg.data.subset_fraction,
                             subset_seed=cfg.data.subset_seed,
                             manifest_path=Path(cfg.data.manifest_dir) / "subset_manifest.json", seed=cfg.seed)
    spe = steps_per_epoch(len(train_ds), cfg.data.batch_size, world)
    total_steps = cfg.max_steps or cfg.epochs * spe
    val_every = max(1, min(total_steps, spe * cfg.val_every_n_epochs))
    module = SegmentationModule(cfg, total_steps, val_every)
    module.train_ds = train_ds

    history = HistoryCallback(run_dir / "history.csv")
    stopper = StopCheckpoint(last_ckpt)
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
        trainer.fit(module, ckpt_path=ckpt_path, weights_only=True)
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
    metrics["train_mpp"] = training_mpp(list(train_ds.mpp.values()))
    metrics.update(_run_summary(cfg, model, history, fit_wall, weights_from, trainer, total_steps))
    metrics["equivariance"] = trained_equivariance_error(model, cfg)
    _atomic_write_text(run_dir / "metrics.json", json.dumps(_json_clean(metrics), indent=2))
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


class CheckpointError(RuntimeError):
    """Checkpoints exist in a run folder but none can be used; the message names each file and why."""


def _checkpoint_step(path: Path) -> int:
    """Optimizer steps of a full training state (raises RuntimeError when unreadable or not a full state)."""
    ck = load_checkpoint(path)
    if not isinstance(ck, dict) or "state_dict" not in ck or "global_step" not in ck:
        raise RuntimeError(f"{path} is not a full training state (no state_dict/global_step)")
    return int(ck["global_step"])


def resume_candidates(run_dir: Path) -> list[Path]:
    """The full training states a run can resume from, in order of preference on equal steps:
    ``checkpoints/last.ckpt``, Lightning's Slurm pre-emption ``hpc_ckpt_*.ckpt``, ``checkpoints/best.ckpt``."""
    return [run_dir / "checkpoints" / "last.ckpt"] + sorted(run_dir.glob("hpc_ckpt_*.ckpt")) + \
        [run_dir / "checkpoints" / "best.ckpt"]


def pick_checkpoint(paths: Sequence[Path], most_steps: bool = True) -> tuple[Path | None, list[str]]:
    """The first readable checkpoint of ``paths`` (or, with ``most_steps``, the readable one with the most steps;
    earlier paths win ties) and one line per file that was passed over, saying why."""
    notes: list[str] = []
    best: tuple[int, int, Path] | None = None
    for i, p in enumerate(paths):
        if not p.is_file():
            continue
        try:
            step = _checkpoint_step(p)
        except RuntimeError as e:
            notes.append(f"skipped unreadable checkpoint {p}: {e}")
            continue
        if not most_steps:
            return p, notes
        if best is None or (step, -i) > best[:2]:
            if best is not None:
                notes.append(f"passed over {best[2]} (step {best[0]}): {p} has step {step}")
            best = (step, -i, p)
        else:
            notes.append(f"passed over {p} (step {step}): {best[2]} has step {best[0]}")
    return (best[2] if best else None), notes


def latest_checkpoint(run_dir: Path, report: bool = True) -> Path | None:
    """The checkpoint ``resume=auto`` continues from: the readable full state with the most optimizer steps among
    ``checkpoints/last.ckpt``, ``hpc_ckpt_*.ckpt`` (Slurm pre-emption) and ``checkpoints/best.ckpt``; ties go in that
    order. Unreadable ones are skipped, saying so (stderr). When checkpoints exist but none is readable this raises
    :class:`CheckpointError` instead of returning None, so a rerun never silently starts afresh over a run's history
    (``resume=never`` starts a fresh run folder)."""
    paths = resume_candidates(run_dir)
    found, notes = pick_checkpoint(paths)
    if report:
        for line in notes:
            print(line, file=sys.stderr)
    existing = [p for p in paths if p.is_file()]
    if found is None and existing:
        raise CheckpointError(
            f"{run_dir}: none of its checkpoints can be read ({'; '.join(notes)}). Nothing was changed. Remove or "
            f"repair them to resume, or pass resume=never to train afresh in a new run folder")
    return found


def weights_checkpoint(run_dir: Path) -> Path:
    """The checkpoint to evaluate: ``best.ckpt`` when readable, else ``last.ckpt`` (saying why), else the most
    advanced readable ``hpc_ckpt_*``; :class:`CheckpointError` naming every file when none is usable."""
    ck = run_dir / "checkpoints"
    paths = [ck / "best.ckpt", ck / "last.ckpt"] + sorted(run_dir.glob("hpc_ckpt_*.ckpt"))
    if not any(p.is_file() for p in paths):
        raise FileNotFoundError(f"{run_dir}: no checkpoint (checkpoints/best.ckpt or checkpoints/last.ckpt); "
                                f"train the run first")
    found, notes = pick_checkpoint(paths, most_steps=False)
    for line in notes:
        print(line, file=sys.stderr)
    if found is None:
        raise CheckpointError(f"{run_dir}: none of its checkpoints can be read ({'; '.join(notes)})")
    if found.name != "best.ckpt" and (ck / "best.ckpt").is_file():
        print(f"evaluating {found} instead of the unreadable best.ckpt", file=sys.stderr)
    return found


def _maybe(p: Path) -> Path | None:
    return p if p.is_file() else None


def _finalize_loggers(loggers) -> None:
    for lg in loggers:
        try:
            if isinstance(lg, CometTracker):
                lg.close()
            else:
                lg.finalize("success")
        except Exception as e:  # noqa: BLE001 - never lose a run to a logger
            print(f"logger {type(lg).__name__} failed to finalize: {type(e).__name__}", file=sys.stderr)


def _prepare_run_dir(cfg: ExperimentConfig, run_dir: Path) -> None:
    """Create the folder; refuse to resume into a folder that holds a different config."""
    cfg_path = run_dir / "config.yaml"
    if cfg_path.is_file() and cfg.resume == "auto":
        try:
            old = load_config(cfg_path)
        except Exception:  # noqa: BLE001
            old = None
        if old is not None and old.config_hash() != cfg.config_hash():
            raise ValueError(f"run folder {run_dir} holds a run with a different configuration "
                             f"(config hash {old.config_hash()} vs {cfg.config_hash()}); use another run_id, "
                             f"or resume=never for a fresh folder")
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    cfg_to_save = ExperimentConfig.from_dict(cfg.to_dict())
    cfg_to_save.run_id = run_dir.name
    if cfg_to_save.data.manifest_dir is None:
        cfg_to_save.data.manifest_dir = str(run_dir)
    _atomic_write_text(cfg_path, cfg_to_save.to_yaml())
    _atomic_write_text(run_dir / "env.json", json.dumps(environment_info(), indent=2))


def _json_clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


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


# ============================================================================================ evaluation
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
    infer = _inference_kwargs(cfg, tta)
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
        probs = probabilities(model, s["image"], mpp, None, **_inference_kwargs(cfg, cfg.tta))
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


def write_points_json(path: Path, points: Sequence[np.ndarray], ids: Sequence[str], mpps: Sequence[float]) -> None:
    """Points in the OCELOT 2023 challenge format (what the official evaluation reads)::

        {"type": "Multiple points",
         "points": [{"name": "image_0", "point": [x, y, class], "probability": p}, ...],
         "version": {"major": 1, "minor": 0},
         "images": [{"name": "image_0", "id": "<sample id>", "mpp": 0.2}, ...]}

    ``name`` is ``image_<index>`` in the order of the split's sorted ids; x, y are integer pixel coordinates
    (column, row) of the cell patch; class 1 = BC, 2 = TC; ``probability`` is the detection confidence (1.0 for
    ground truth). ``images`` (not part of the challenge file; ignored by its evaluation) maps names to ids.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    pts = []
    for k, arr in enumerate(points):
        arr = np.asarray(arr, dtype=np.float64).reshape(-1, arr.shape[1] if np.ndim(arr) == 2 else 3)
        for row in arr:
            prob = float(row[3]) if arr.shape[1] > 3 else 1.0
            pts.append({"name": f"image_{k}", "point": [int(round(row[0])), int(round(row[1])), int(row[2])],
                        "probability": round(prob, 6)})
    doc = {"type": "Multiple points", "points": pts, "version": {"major": 1, "minor": 0},
           "images": [{"name": f"image_{k}", "id": i, "mpp": m} for k, (i, m) in enumerate(zip(ids, mpps))]}
    _atomic_write_text(path, json.dumps(doc))


def read_points_json(path: str | Path) -> tuple[list[np.ndarray], list[str]]:
    """Inverse of :func:`write_points_json`: per-image arrays N×4 (x, y, class, probability) and ids."""
    doc = json.loads(Path(path).read_text())
    if not isinstance(doc, dict) or "points" not in doc:
        raise ValueError(f"{path}: not an OCELOT points file (expected an object with 'points')")
    images = doc.get("images") or []
    n = max([len(images)] + [int(p["name"].split("_")[-1]) + 1 for p in doc["points"]])
    per: list[list] = [[] for _ in range(n)]
    for p in doc["points"]:
        k = int(p["name"].split("_")[-1])
        per[k].append([*p["point"][:3], p.get("probability", 1.0)])
    return [np.array(v, dtype=np.float64).reshape(-1, 4) for v in per], [im.get("id") for im in images]


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
            run_dir = p.parent  # hpc_ckpt_*.ckpt lies in the run folder itself
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
        _atomic_write_text(run.run_dir / name, json.dumps(_json_clean(res), indent=2))
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
        probs = probabilities(run.model, t.float(), m, run.model_mpp, **_inference_kwargs(run.cfg, tta))
        out.append(detect(probs, m, run.cfg, threshold=run.threshold, min_distance_um=run.min_distance_um))
    return out


# ================================================================================================ tables
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


__all__ = ["train", "evaluate", "predict", "load_run", "LoadedRun", "choose_detection", "per_image_counts", "RunResult", "SegmentationModule", "ResumableSampler",
           "AtomicCheckpointIO", "atomic_torch_save", "load_checkpoint", "load_model_from_checkpoint",
           "evaluate_model", "write_points_json", "read_points_json", "format_metrics_table", "NonFiniteLossError",
           "resolve_run_dir", "trainer_settings", "environment_info", "latest_checkpoint",
           "weights_checkpoint", "CheckpointError", "FAILED_FILE"]
