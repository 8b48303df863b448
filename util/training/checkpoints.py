"""Checkpoint I/O (atomic writes, ``weights_only`` loads) and the choice of checkpoint to resume from
or to evaluate."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from util.files import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes checkpoints to a temporary file, fsyncs, then ``os.replace``s it over the target (atomic on
    POSIX): an interrupted write never replaces the previous good checkpoint. Loads with ``weights_only=True``."""

    def save_checkpoint(self, checkpoint: dict, path: str | Path, storage_options: Any = None) -> None:
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path: str | Path, map_location: Any = None, weights_only: bool | None = None) -> dict:
        return load_checkpoint(path, map_location=map_location or "cpu")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically (:func:`util.files.atomic_write`)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict:
    """``torch.load(path, weights_only=True)`` with a clear error for missing/corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise RuntimeError(f"cannot load checkpoint {path} with weights_only=True: {e}") from e


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
    ``checkpoints/last.ckpt`` (what a stop signal writes, :class:`~util.training.callbacks.StopCheckpoint`), then
    ``checkpoints/best.ckpt``. Lightning's Slurm ``hpc_ckpt_*.ckpt`` files are not read: nothing writes them any
    more (its auto-requeue is off); rename an old one to ``checkpoints/last.ckpt`` to resume from it."""
    return [run_dir / "checkpoints" / "last.ckpt", run_dir / "checkpoints" / "best.ckpt"]


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
    ``checkpoints/last.ckpt`` and ``checkpoints/best.ckpt``; a tie goes to ``last.ckpt``. Unreadable ones are skipped, saying so (stderr). When checkpoints exist but none is readable this raises
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
    """The checkpoint to evaluate: ``best.ckpt`` when readable, else ``last.ckpt`` (saying why);
    :class:`CheckpointError` naming every file when none is usable."""
    ck = run_dir / "checkpoints"
    paths = [ck / "best.ckpt", ck / "last.ckpt"]
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
