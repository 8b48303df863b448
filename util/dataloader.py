"""OCELOT datasets, subset manifests and batching (the engine's DataModule: :mod:`util.training.data`).

A sample is a dict:

* ``image``  float32 C×H×W in [0, 1]
* ``mask``   int64 H×W: 0 no cell, 1 background cell, 2 tumour cell (disks of ``mask_radius_um`` around the
  points, redrawn after augmentation so they stay round and on their points)
* ``points`` int64 N×3 (x, y, class) in the sample's (cropped, augmented) frame
* ``id`` str, ``mpp`` float (µm/px of the cell patch, from ``metadata.json``)
* with ``with_tissue=True`` and tissue patches present: ``tissue_image`` float32 C×H'×W', ``tissue_mask``
  int64 H'×W' (1 background, 2 cancer, 255 unknown) and ``cell_offset`` float32 (x0, y0, x1, y1): the box of
  the returned cell image inside the tissue patch, in tissue pixels (follows crops; the tissue context itself
  is not augmented, so use it with ``preset="none"`` when its geometry matters).

Training samples are random ``crop_size`` crops (uniform position, ``preset`` augmentation); val/test samples
are the full patches, deterministic. The config checks that ``crop_size`` suits the model (a multiple of its
``2**depth``); full patches of any size are padded by the inference code.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from util.ocelot import (cell_box_in_tissue, cell_csv_path, find_image, list_ids, read_cells_csv,
                         read_image, read_metadata, read_tissue_mask, sample_mpp, points_to_mask, tissue_png_path)
from util.config import DataConfig  # defined with the other config sections
from util.transforms import FILL, PRESETS, Augmenter

def select_subset(ids: list[str], fraction: float, seed: int) -> list[str]:
    """A deterministic subset of ``round(fraction · n)`` ids (at least 1), sorted.

    The ids are permuted once with ``seed`` and the first k taken, so for one seed a smaller fraction is a
    subset of a larger one (nested training sets for data-amount studies).
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"subset_fraction must be in (0, 1], got {fraction}")
    ids = sorted(ids)
    if fraction >= 1 or not ids:
        return ids
    k = max(1, int(round(fraction * len(ids))))
    perm = np.random.default_rng(int(seed)).permutation(len(ids))
    return sorted(ids[i] for i in perm[:k])


def save_manifest(path: str | Path, root: str | Path, split: str, ids: list[str], fraction: float,
                  seed: int, n_total: int) -> Path:
    """Write the subset manifest (JSON) that records exactly which ids a run trained on."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"root": str(root), "split": split, "subset_fraction": fraction, "subset_seed": seed,
           "n_total": n_total, "n_selected": len(ids), "ids": list(ids)}
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def load_manifest(path: str | Path) -> dict[str, Any]:
    """Read a subset manifest written by :func:`save_manifest`."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read subset manifest ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("ids"), list):
        raise ValueError(f"{path}: not a subset manifest (expected an object with an 'ids' list)")
    return doc


def _to_chw(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(255.0)


class OcelotDataset(Dataset):
    """One split of an OCELOT-layout folder as sample dicts (see the module docstring).

    ``crop_size``: side of random training crops (None: full patches, deterministic position).
    ``transforms``: a preset name (``util.transforms.PRESETS``), an :class:`~util.transforms.Augmenter`, or None.
    ``subset_fraction``/``subset_seed``: train on a deterministic subset; the chosen ids are written to
    ``manifest_path`` when given.
    """

    def __init__(self, root: str | Path, split: str, crop_size: int | None = None,
                 transforms: str | Augmenter | None = None, mask_radius_um: float = 2.0,
                 with_tissue: bool = False, subset_fraction: float = 1.0, subset_seed: int = 0,
                 manifest_path: str | Path | None = None, seed: int = 0) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"data root {self.root} does not exist (create the default set with "
                                    f"`python -m util.synthetic data/synthetic_ocelot`)")
        self.split = split
        self.crop_size = None if crop_size is None else int(crop_size)
        if self.crop_size is not None and self.crop_size <= 0:
            raise ValueError(f"crop_size must be positive, got {crop_size}")
        self.mask_radius_um = float(mask_radius_um)
        self.with_tissue = with_tissue
        self.meta = read_metadata(self.root)
        all_ids = list_ids(self.root, split)
        if not all_ids:
            raise ValueError(f"{self.root}/images/{split}/cell holds no images")
        self.ids = select_subset(all_ids, subset_fraction, subset_seed)
        self.subset_fraction, self.subset_seed = subset_fraction, subset_seed
        self.manifest_path = None
        if manifest_path is not None:
            self.manifest_path = save_manifest(manifest_path, self.root, split, self.ids, subset_fraction,
                                               subset_seed, len(all_ids))
        if isinstance(transforms, str):
            if transforms not in PRESETS:
                raise ValueError(f"unknown augmentation preset {transforms!r}; expected one of {PRESETS}")
            transforms = Augmenter(transforms, crop_size=self.crop_size, seed=seed)
        self.transforms = transforms
        if transforms is not None and transforms.crop_size != self.crop_size:
            raise ValueError(f"the Augmenter was built for crop_size={transforms.crop_size}, the dataset uses "
                             f"{self.crop_size}")
        self.rng = np.random.default_rng(seed)
        self.mpp = {i: sample_mpp(self.meta, i) for i in self.ids}

    def __len__(self) -> int:
        return len(self.ids)

    def reseed(self, seed: int) -> None:
        """Reseed crop positions and augmentation (called per DataLoader worker)."""
        self.rng = np.random.default_rng(seed)
        if self.transforms is not None:
            self.transforms.set_seed(seed)

    def _paths(self, sid: str) -> tuple[Path, Path]:
        img = find_image(self.root, self.split, sid)
        if img is None:
            raise FileNotFoundError(f"{self.root}/images/{self.split}/cell/{sid}.jpg not found")
        return img, cell_csv_path(self.root, self.split, sid)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sid = self.ids[index]
        img_path, csv_path = self._paths(sid)
        image = read_image(img_path)
        h, w = image.shape[:2]
        points = read_cells_csv(csv_path, shape=(h, w)).astype(np.float64)
        mpp = self.mpp[sid]
        x0 = y0 = 0
        out_h, out_w = h, w
        if self.crop_size is not None:
            c = self.crop_size
            if c > h or c > w:
                raise ValueError(f"crop_size {c} is larger than patch {img_path} ({w}×{h}); use a smaller "
                                 f"crop_size or crop_size=None")
            m = self.transforms.margin() if self.transforms is not None else 0
            x0 = int(self.rng.integers(0, w - c + 1))
            y0 = int(self.rng.integers(0, h - c + 1))
            # the window with context margin m, padded with FILL where the patch ends
            wx0, wy0, wx1, wy1 = x0 - m, y0 - m, x0 + c + m, y0 + c + m
            win = np.empty((c + 2 * m, c + 2 * m, 3), np.uint8)
            win[...] = np.array(FILL, np.uint8)
            sx0, sy0, sx1, sy1 = max(wx0, 0), max(wy0, 0), min(wx1, w), min(wy1, h)
            win[sy0 - wy0:sy1 - wy0, sx0 - wx0:sx1 - wx0] = image[sy0:sy1, sx0:sx1]
            image = win
            points = points - np.array([wx0, wy0, 0.0])
            out_h = out_w = c
        if self.transforms is not None:
            image, points = self.transforms(image, points)
        ph, pw = image.shape[:2]
        pts = np.rint(points).astype(np.int64).reshape(-1, 3)
        keep = (pts[:, 0] >= 0) & (pts[:, 0] < pw) & (pts[:, 1] >= 0) & (pts[:, 1] < ph)
        pts = pts[keep]
        mask = points_to_mask(pts, (ph, pw), self.mask_radius_um, mpp)
        sample: dict[str, Any] = {"image": _to_chw(image), "mask": torch.from_numpy(mask),
                                  "points": torch.from_numpy(pts), "id": sid, "mpp": mpp}
        if self.with_tissue:
            sample.update(self._tissue(sid, (h, w), x0, y0, out_h, out_w))
        return sample

    def _tissue(self, sid: str, cell_shape: tuple[int, int], x0: int, y0: int, ch: int, cw: int
                ) -> dict[str, Any]:
        tpath = find_image(self.root, self.split, sid, "tissue")
        mpath = tissue_png_path(self.root, self.split, sid)
        if tpath is None or not mpath.is_file():
            raise FileNotFoundError(f"with_tissue=True but sample {sid!r} has no tissue patch/annotation "
                                    f"({self.root}/images/{self.split}/tissue/{sid}.jpg, {mpath})")
        timg = read_image(tpath)
        tmask = read_tissue_mask(mpath)
        box = cell_box_in_tissue(self.meta, sid, cell_shape, timg.shape[:2])
        sx = (box[2] - box[0]) / cell_shape[1]
        sy = (box[3] - box[1]) / cell_shape[0]
        crop_box = np.array([box[0] + x0 * sx, box[1] + y0 * sy, box[0] + (x0 + cw) * sx, box[1] + (y0 + ch) * sy],
                            dtype=np.float32)
        return {"tissue_image": _to_chw(timg), "tissue_mask": torch.from_numpy(tmask.astype(np.int64)),
                "cell_offset": torch.from_numpy(crop_box)}


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack images/masks (and tissue tensors); keep ``points``, ``id``, ``mpp`` as lists."""
    out: dict[str, Any] = {}
    for key in batch[0]:
        vals = [b[key] for b in batch]
        if key in ("points", "id", "mpp"):
            out[key] = vals
        elif isinstance(vals[0], torch.Tensor):
            shapes = {tuple(v.shape) for v in vals}
            if len(shapes) > 1:
                raise ValueError(f"cannot batch {key!r} of different shapes {sorted(shapes)} (ids "
                                 f"{[b['id'] for b in batch]}); use crop_size or batch_size=1")
            out[key] = torch.stack(vals)
        else:
            out[key] = vals
    return out


def make_datasets(cfg: DataConfig, seed: int = 0) -> dict[str, OcelotDataset]:
    """The train/val/test datasets of a config (train: crops + preset + subset; val/test: full, no aug)."""
    manifest = None
    if cfg.manifest_dir is not None:
        manifest = Path(cfg.manifest_dir) / "subset_manifest.json"
    ds = {
        "train": OcelotDataset(cfg.root, "train", crop_size=cfg.crop_size, transforms=cfg.preset,
                               mask_radius_um=cfg.mask_radius_um, with_tissue=cfg.with_tissue,
                               subset_fraction=cfg.subset_fraction, subset_seed=cfg.subset_seed,
                               manifest_path=manifest, seed=seed),
        "val": OcelotDataset(cfg.root, "val", mask_radius_um=cfg.mask_radius_um, with_tissue=cfg.with_tissue),
        "test": OcelotDataset(cfg.root, "test", mask_radius_um=cfg.mask_radius_um, with_tissue=cfg.with_tissue),
    }
    return ds


def __getattr__(name: str):
    """``OcelotDataModule`` moved to :mod:`util.training.data` (the engine's one data pipeline)."""
    if name == "OcelotDataModule":
        from util.training.data import OcelotDataModule

        return OcelotDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
