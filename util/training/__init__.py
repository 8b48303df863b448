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

The package, one job a module (the public names are re-exported here: ``from util.training import X``):

=================  ==========================================================================================
``data``           :class:`OcelotDataModule`: the resumable, seeded training stream and the val patches
``module``         the LightningModule (:class:`SegmentationModule`, model injected), loss, schedule
``callbacks``      ``history.csv``, the stop-signal checkpoint, ``last.ckpt`` after validations, progress
``checkpoints``    atomic save, safe load, which checkpoint to resume from or evaluate
``runs``           run folders: location, provenance (``env.json``), failure marks
``settings``       Trainer settings: device, precision, DDP, Slurm
``fit``            :func:`train`: one experiment end to end
``evaluation``     test sets and transformed copies, threshold choice, equivariance error, :func:`evaluate`
=================  ==========================================================================================
"""
from util.training.callbacks import (FinishValidationOnStop, HistoryCallback, LastCheckpoint, PrintProgress,
                                     StopCheckpoint)  # noqa: F401
from util.training.checkpoints import (AtomicCheckpointIO, CheckpointError, atomic_torch_save, latest_checkpoint,
                                       load_checkpoint, pick_checkpoint, resume_candidates, weights_checkpoint)  # noqa: F401
from util.training.data import (OcelotDataModule, ResumableLoader, ResumableSampler, SeededItems, steps_per_epoch,
                                training_loader)  # noqa: F401
from util.training.evaluation import (LoadedRun, choose_detection, evaluate, evaluate_model, format_metrics_table,
                                      load_model_from_checkpoint, load_run, per_image_counts, predict,
                                      trained_equivariance_error)  # noqa: F401
from util.training.fit import train  # noqa: F401
from util.training.module import (NUM_CLASSES, NonFiniteLossError, SegmentationModule, detect, inference_kwargs,
                                  make_loss, model_kwargs)  # noqa: F401
from util.ocelot import read_points_json, write_points_json  # noqa: F401
from util.training.runs import FAILED_FILE, RunResult, environment_info, git_commit, resolve_run_dir  # noqa: F401
from util.training.settings import trainer_settings  # noqa: F401


_inference_kwargs = inference_kwargs  # old private name, used by notebooks and scripts written before the split

__all__ = ["train", "evaluate", "predict", "load_run", "LoadedRun", "choose_detection", "per_image_counts", "RunResult", "SegmentationModule", "OcelotDataModule",
           "ResumableSampler",
           "AtomicCheckpointIO", "atomic_torch_save", "load_checkpoint", "load_model_from_checkpoint",
           "evaluate_model", "write_points_json", "read_points_json", "format_metrics_table", "NonFiniteLossError",
           "resolve_run_dir", "trainer_settings", "environment_info", "latest_checkpoint",
           "weights_checkpoint", "CheckpointError", "FAILED_FILE"]
