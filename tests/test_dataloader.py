"""util.dataloader: sample dicts, crops, subsets + manifests, seeded loaders, DataModule, real data."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import real_datasets
from util.config import ExperimentConfig
from util.dataloader import DataConfig, OcelotDataset, collate, load_manifest, make_datasets, select_subset
from util.ocelot import points_to_mask
from util.training.data import OcelotDataModule


def _config(root: Path, seed: int = 0, **data) -> ExperimentConfig:
    return ExperimentConfig.from_dict({"seed": seed, "max_steps": 4, "data": {"root": str(root), **data}})


def test_sample_dict_full_patch(tiny_ocelot_root: Path) -> None:
    ds = OcelotDataset(tiny_ocelot_root, "val", mask_radius_um=2.0, with_tissue=True)
    s = ds[0]
    assert s["image"].dtype == torch.float32 and s["image"].shape == (3, 128, 128)
    assert 0.0 <= float(s["image"].min()) and float(s["image"].max()) <= 1.0
    assert s["mask"].dtype == torch.int64 and s["mask"].shape == (128, 128)
    assert s["points"].dtype == torch.int64 and s["points"].shape[1] == 3
    assert s["id"] == "005" and s["mpp"] == pytest.approx(0.2)
    np.testing.assert_array_equal(s["mask"].numpy(), points_to_mask(s["points"].numpy(), (128, 128), 2.0, 0.2))
    assert s["tissue_image"].shape == (3, 128, 128) and set(s["tissue_mask"].unique().tolist()) <= {1, 2, 255}
    x0, y0, x1, y1 = s["cell_offset"].tolist()
    assert x1 - x0 == pytest.approx(32.0) and y1 - y0 == pytest.approx(32.0)  # 128 px at 0.2 in 0.8 µm/px
    # deterministic: same sample twice
    assert torch.equal(ds[0]["image"], s["image"])


@pytest.mark.parametrize("preset", ["none", "flips_rot90", "rotate_any", "full"])
def test_train_crops_with_each_preset(tiny_ocelot_root: Path, preset: str) -> None:
    ds = OcelotDataset(tiny_ocelot_root, "train", crop_size=64, transforms=preset, seed=0)
    for i in range(len(ds)):
        s = ds[i]
        assert s["image"].shape == (3, 64, 64) and s["mask"].shape == (64, 64)
        p = s["points"].numpy()
        assert ((p[:, :2] >= 0) & (p[:, :2] < 64)).all()
        np.testing.assert_array_equal(s["mask"].numpy(), points_to_mask(p, (64, 64), 2.0, 0.2))


def test_subset_manifest_is_deterministic_nested_and_saved(tiny_ocelot_root: Path, tmp_path: Path) -> None:
    ids = [f"{i:03d}" for i in range(40)]
    a, b = select_subset(ids, 0.25, 7), select_subset(ids, 0.25, 7)
    assert a == b and len(a) == 10
    assert select_subset(ids, 0.25, 8) != a
    assert set(a) <= set(select_subset(ids, 0.5, 7))  # nested for one seed
    with pytest.raises(ValueError, match="subset_fraction"):
        select_subset(ids, 0.0, 0)
    cfg = DataConfig(root=str(tiny_ocelot_root), crop_size=64, subset_fraction=0.5, subset_seed=3,
                     manifest_dir=str(tmp_path / "run"))
    datasets = make_datasets(cfg, seed=0)
    man = load_manifest(tmp_path / "run" / "subset_manifest.json")
    assert man["ids"] == datasets["train"].ids and len(man["ids"]) == 2
    assert man["subset_fraction"] == 0.5 and man["subset_seed"] == 3 and man["n_total"] == 4
    again = make_datasets(cfg, seed=1)["train"].ids
    assert again == man["ids"]  # the subset depends on subset_seed only
    assert len(datasets["val"]) == 2 and len(datasets["test"]) == 2  # val/test are never subset


def _first_batch(cfg: ExperimentConfig) -> dict:
    return next(iter(OcelotDataModule(cfg).train_dataloader()))


def test_loaders_are_seeded(tiny_ocelot_root: Path) -> None:
    a, b = (_first_batch(_config(tiny_ocelot_root, 0, preset="full", crop_size=64, batch_size=2)) for _ in "ab")
    c = _first_batch(_config(tiny_ocelot_root, 1, preset="full", crop_size=64, batch_size=2))
    assert a["id"] == b["id"] and torch.equal(a["image"], b["image"])
    assert not (a["id"] == c["id"] and torch.equal(a["image"], c["image"]))
    assert a["image"].shape == (2, 3, 64, 64) and a["mask"].shape == (2, 64, 64)
    assert isinstance(a["points"], list) and isinstance(a["mpp"], list)


def test_datamodule(tiny_ocelot_root: Path) -> None:
    """The engine's DataModule: the stream of max_steps batches (the same with 2 workers), full val patches."""
    cfg = _config(tiny_ocelot_root, 5, preset="rotate_any", crop_size=64, batch_size=2, with_tissue=True)
    dm = OcelotDataModule(cfg)
    assert (dm.steps_per_epoch, dm.total_steps) == (2, 4)  # 4 train patches, batches of 2, max_steps 4
    batches = list(dm.train_dataloader())
    assert len(batches) == 4 and all(b["image"].shape == (2, 3, 64, 64) for b in batches)
    assert "tissue_image" in batches[0]  # data.with_tissue reaches the datasets
    cfg.data.num_workers = 2
    with_workers = list(OcelotDataModule(cfg).train_dataloader())
    assert [b["id"] for b in with_workers] == [b["id"] for b in batches]
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(batches, with_workers))
    val = list(dm.val_dataloader())
    assert len(val) == 2 and val[0]["image"].shape == (1, 3, 128, 128)  # full patches, one at a time


def test_clear_errors(tiny_ocelot_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="crop_size.*multiple of 8"):  # the default net has depth 3
        _config(tiny_ocelot_root, crop_size=68)
    with pytest.raises(ValueError, match="larger than patch"):
        OcelotDataset(tiny_ocelot_root, "train", crop_size=256)[0]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        OcelotDataset(tmp_path / "nope", "train")
    with pytest.raises(ValueError, match="unknown split"):
        OcelotDataset(tiny_ocelot_root, "dev")
    with pytest.raises(ValueError, match="different shapes"):
        collate([{"image": torch.zeros(3, 4, 4), "id": "a"}, {"image": torch.zeros(3, 5, 5), "id": "b"}])


def test_real_data_loads(shared_data_dir: Path) -> None:
    sets = real_datasets(shared_data_dir)
    if not sets:
        pytest.skip(f"no OCELOT-layout set under {shared_data_dir}")
    for root in sets:
        meta = json.loads((root / "metadata.json").read_text())
        dm = OcelotDataModule(_config(root, preset="full", crop_size=128, batch_size=2))
        b = next(iter(dm.train_dataloader()))
        assert b["image"].shape == (2, 3, 128, 128) and b["mask"].max() <= 2
        ds = dm.datasets["test"]
        s = ds[0]
        assert s["mpp"] == pytest.approx(float(meta["sample_pairs"][s["id"]].get("mpp", s["mpp"])), rel=0.01)
        h, w = s["image"].shape[1:]
        assert (s["points"][:, 0] < w).all() and (s["points"][:, 1] < h).all()


@pytest.mark.parametrize("preset", ["flips_rot90", "full"])
def test_reseed_makes_a_sample_a_pure_function_of_the_seed(tiny_ocelot_root: Path, preset: str) -> None:
    ds = OcelotDataset(tiny_ocelot_root, "train", crop_size=64, transforms=preset)
    ds.reseed(5)
    a = ds[0]
    ds[1], ds[2]
    ds.reseed(5)
    b = ds[0]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["points"], b["points"])
    draws = []
    for s in range(6):
        ds.reseed(s)
        draws.append(ds[0]["image"])
    assert any(not torch.equal(draws[0], d) for d in draws[1:])


# ------------------------------------------------------------------ alignment, checked on the image itself
MARKER_RGB = {1: (190, 20, 20), 2: (20, 20, 190)}  # BC red, TC blue 5×5 squares on white


def _marker_set(src: Path, dst: Path, seed: int = 0) -> Path:
    """A copy of the tiny set whose train images are white with a coloured 5×5 square drawn (by slicing, not
    by the mask helper) at every annotated cell; cells ≥ 14 px apart so the squares never touch."""
    import shutil

    from PIL import Image

    from util.ocelot import cell_csv_path, find_image, list_ids, write_cells_csv

    shutil.copytree(src, dst)
    rng = np.random.default_rng(seed)
    for sid in list_ids(dst, "train"):
        path = find_image(dst, "train", sid)
        h, w = np.array(Image.open(path)).shape[:2]
        path.unlink()
        grid = [(x, y) for y in range(6, h - 6, 14) for x in range(6, w - 6, 14)]
        chosen = rng.choice(len(grid), size=len(grid) // 2, replace=False)
        pts = np.array([[*grid[i], int(rng.integers(1, 3))] for i in sorted(chosen)])
        image = np.full((h, w, 3), 255, np.uint8)
        for x, y, c in pts:
            image[y - 2:y + 3, x - 2:x + 3] = MARKER_RGB[int(c)]
        Image.fromarray(image).save(path.with_suffix(".png"))
        write_cells_csv(cell_csv_path(dst, "train", sid), pts)
    return dst


@pytest.mark.parametrize("preset", ["none", "flips_rot90", "rotate_any", "full"])
def test_crop_and_augmentation_keep_points_on_their_cells(tiny_ocelot_root: Path, tmp_path: Path, preset) -> None:
    """Each training sample's points lie on the cells drawn in its own image, with the right class, and every
    cell in the crop has its point: read from the pixels, independent of the mask helper."""
    from scipy import ndimage

    root = _marker_set(tiny_ocelot_root, tmp_path / "markers")
    ds = OcelotDataset(root, "train", crop_size=64, transforms=preset, mask_radius_um=1.0, seed=3)
    checked = 0
    for draw in range(12):
        ds.reseed(1000 + draw)
        s = ds[draw % len(ds)]
        img = (s["image"].permute(1, 2, 0).numpy() * 255).astype(np.float64)
        dark = img.mean(-1) < 200  # marker pixels; white (even stain-jittered) stays above
        labels, n = ndimage.label(dark)
        pts = s["points"].numpy()
        mask = s["mask"].numpy()
        for x, y, c in pts:
            assert dark[y, x], f"{preset}: point ({x}, {y}) is not on a drawn cell"
            assert mask[y, x] == c
            r, _, b = img[y, x]
            if preset != "full":  # stain jitter shifts hues; the other presets keep red red and blue blue
                assert (r > b) == (c == 1), f"{preset}: point ({x}, {y}) class {c} on a cell of the other colour"
        for k, centre in enumerate(ndimage.center_of_mass(dark, labels, range(1, n + 1)), start=1):
            ys, xs = np.nonzero(labels == k)
            if ys.min() == 0 or xs.min() == 0 or ys.max() == 63 or xs.max() == 63 or len(ys) < 12:
                continue  # cut by the crop edge: its centre is not the cell's
            d = np.hypot(pts[:, 0] - centre[1], pts[:, 1] - centre[0]).min() if len(pts) else np.inf
            assert d <= 1.0, f"{preset}: a drawn cell at {centre[::-1]} has no point within 1 px (nearest {d:.2f})"
            checked += 1
    assert checked >= 60


def test_datamodule_and_injected_model_train_with_a_plain_trainer(tiny_ocelot_root: Path) -> None:
    """The README's "model of your own" recipe: any net injected into SegmentationModule, data from the DataModule."""
    import lightning.pytorch as pl

    from model import build_model
    from util.training import SegmentationModule

    cfg = _config(tiny_ocelot_root, 0, crop_size=64, batch_size=2)
    data = OcelotDataModule(cfg)
    net = build_model("unet", width=4, depth=3)
    before = [p.detach().clone() for p in net.parameters()]
    module = SegmentationModule(net, cfg, data.total_steps, data.val_every)
    assert module.model is net
    trainer = pl.Trainer(max_steps=data.total_steps, val_check_interval=data.val_every, check_val_every_n_epoch=None,
                         use_distributed_sampler=False, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 4
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))  # the injected net was trained
    assert 0.0 <= module.last_val["val/mF1"] <= 1.0
