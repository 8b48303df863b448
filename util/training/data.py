"""The engine's data: :class:`OcelotDataModule` with the resumable, seeded training stream.

The training stream is a sequence of ``total_steps`` batches (:class:`ResumableSampler`), the same for any
number of workers and continued exactly after a resume; validation runs on the full val patches.
"""
from __future__ import annotations

import math
from typing import Any, Iterator

import numpy as np
import lightning.pytorch as pl
from torch.utils.data import DataLoader, Dataset, Sampler

from util.config import ExperimentConfig
from util.dataloader import OcelotDataset, collate, make_datasets


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



def steps_per_epoch(n_train: int, batch_size: int, world_size: int = 1) -> int:
    """Optimizer steps in one pass over ``n_train`` samples: ``ceil(n_train / (batch_size · world_size))``."""
    return max(1, math.ceil(n_train / (batch_size * world_size)))



class OcelotDataModule(pl.LightningDataModule):
    """The data of one run: ``train`` is the resumable seeded stream, ``val`` the full val patches one by one.

    The datasets are built at construction (:func:`util.dataloader.make_datasets`: train crops with the preset
    and the subset, which writes ``subset_manifest.json`` into ``cfg.data.manifest_dir``; val/test full
    patches), so the step counts are known before the Trainer exists, and a missing or malformed test split
    fails here, before any training, not after it (the evaluation reads the test patches again itself). The
    training loader's state (batches consumed) is saved in Lightning checkpoints and restored on resume
    (:class:`ResumableLoader`).

    Args:
        cfg: the run's config (``data`` section, ``seed``, ``max_steps`` or ``epochs``, ``val_every_n_epochs``).
        world_size: training processes (DDP); each rank takes its share of every global batch.

    Attributes:
        datasets: ``{"train", "val", "test"}`` -> :class:`~util.dataloader.OcelotDataset`.
        steps_per_epoch, total_steps, val_every: optimizer steps per pass, in the run, between validations.
    """

    def __init__(self, cfg: ExperimentConfig, world_size: int = 1) -> None:
        super().__init__()
        self.cfg = cfg
        self.datasets: dict[str, OcelotDataset] = make_datasets(cfg.data, seed=cfg.seed)
        self.steps_per_epoch = steps_per_epoch(len(self.datasets["train"]), cfg.data.batch_size, world_size)
        self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch
        self.val_every = max(1, min(self.total_steps, self.steps_per_epoch * cfg.val_every_n_epochs))

    def train_dataloader(self) -> ResumableLoader:
        """The stream of ``total_steps`` batches for this rank (rank 0 of 1 outside a Trainer)."""
        trainer = self.trainer
        if trainer is None:
            return training_loader(self.datasets["train"], self.cfg, self.total_steps)
        return training_loader(self.datasets["train"], self.cfg, self.total_steps, rank=trainer.global_rank,
                               world_size=trainer.world_size, progress_fn=lambda: trainer.global_step)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.datasets["val"], batch_size=1, shuffle=False, collate_fn=collate,
                          num_workers=self.cfg.data.num_workers)
