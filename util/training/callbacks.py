"""Training callbacks: the history file, the stop-signal checkpoint, ``last.ckpt`` after validations,
progress lines."""
from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from util.files import atomic_write
from util.training.module import SegmentationModule


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
        atomic_write(self.path, buf.getvalue())

    def state_dict(self) -> dict:
        return {"rows": json.dumps(self.rows), "elapsed": self.elapsed()}

    def load_state_dict(self, state: dict) -> None:
        self.rows = json.loads(state.get("rows", "[]"))
        self.elapsed_before = float(state.get("elapsed", 0.0))



class StopCheckpoint(Callback):
    """On SIGTERM, save ``last.ckpt`` at the next step boundary and stop: the training's one stop mechanism.

    Slurm's time-limit warning reaches the job script, which sends SIGTERM to the training and requeues the job
    (:mod:`util.cluster.supervise`); a rerun or the requeued job resumes from ``last.ckpt``.

    A step that ends with a validation (``step % val_every == 0``) is not stopped at its batch end: its
    validation runs first (:class:`FinishValidationOnStop` keeps the signal from cutting it short when it fits the
    grace time), ``last.ckpt`` is saved after it with its history row, and Lightning stops right after. Stopping
    before that validation would resume past it, and the run would lose that history row for good. For the same
    reason a validation abandoned part-way (longer than the grace time) saves nothing: the ``last.ckpt`` of the
    previous validation (or of ``checkpoint_every_n_steps``) is kept, and the rerun trains those steps again.

    Args:
        last_path: where ``last.ckpt`` is written.
        val_every: training steps between validations (the trainer's ``val_check_interval``).
    """

    def __init__(self, last_path: Path, val_every: int = 0):
        self.last_path = last_path
        self.val_every = val_every
        self.saved_step = -1
        self.stopped_by_signal = False
        self.in_validation = False

    def _save(self, trainer) -> None:
        if self.saved_step != trainer.global_step:
            trainer.save_checkpoint(str(self.last_path), weights_only=False)
            self.saved_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.received_sigterm:
            self.stopped_by_signal = True
            if self.val_every and trainer.global_step % self.val_every == 0:
                return  # this step's validation comes first; Lightning raises SIGTERMException after it
            self._save(trainer)
            raise SIGTERMException()

    def on_validation_start(self, trainer, pl_module) -> None:
        self.in_validation = not trainer.sanity_checking

    def on_validation_end(self, trainer, pl_module) -> None:
        self.in_validation = False

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            self.stopped_by_signal = True
            if self.in_validation:
                if trainer.is_global_zero:
                    print(f"stop signal: the validation of step {trainer.global_step} was abandoned; keeping the "
                          "previous last.ckpt, so the rerun trains those steps again", flush=True)
                return
            if self.saved_step != trainer.global_step and trainer.global_step > 0:
                self._save(trainer)



class FinishValidationOnStop(Callback):
    """A stop signal that lands inside a validation waits for that validation to finish, when it will within
    ``grace_s`` seconds (estimated from the batches so far), so its history row and best-checkpoint chance
    are kept and ``last.ckpt`` is saved after it; a longer validation is abandoned as Lightning does (and
    :class:`StopCheckpoint` keeps the previous ``last.ckpt``).

    Lightning checks ``trainer.received_sigterm`` after every validation batch and raises ``SIGTERMException``;
    this callback hides the flag while the validation finishes and sets it again at its end (the training
    loop then stops at once). Slurm's warning comes 120 s before the kill (``--signal=B:USR1@120``; the job
    script passes it on as SIGTERM).
    """

    grace_s: float = 60.0  #: the longest a validation may still take after the signal to be finished

    def __init__(self, grace_s: float | None = None):
        if grace_s is not None:
            self.grace_s = grace_s
        self.deferred = False
        self._t0 = 0.0

    def on_validation_start(self, trainer, pl_module) -> None:
        self.deferred, self._t0 = False, time.perf_counter()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        # Lightning keeps the flag on a private connector (public ``trainer.received_sigterm`` is read-only); a
        # Lightning without it loses only this deferral: the stop then behaves as Lightning's own
        connector = getattr(trainer, "_signal_connector", None)
        if trainer.sanity_checking or not getattr(connector, "received_sigterm", False):
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
            trainer._signal_connector.received_sigterm = True  # present: deferred is only set when it is
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
