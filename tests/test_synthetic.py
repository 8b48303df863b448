"""util.synthetic: layout, determinism (byte-identical), context consistency, CLI."""
from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO
from util.ocelot import (cell_box_in_tissue, list_ids, read_cells_csv, read_metadata, read_tissue_mask,
                         validate_dataset)
from util.synthetic import make_synthetic_ocelot


def _files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def test_same_seed_byte_identical_other_seed_differs(tmp_path: Path) -> None:
    a = make_synthetic_ocelot(tmp_path / "a", 2, 1, 1, size=96, seed=3)
    b = make_synthetic_ocelot(tmp_path / "b", 2, 1, 1, size=96, seed=3)
    c = make_synthetic_ocelot(tmp_path / "c", 2, 1, 1, size=96, seed=4)
    fa, fb = _files(a), _files(b)
    assert fa == fb and len(fa) == 4 * 4 + 1
    match, mismatch, errors = filecmp.cmpfiles(a, b, [str(f) for f in fa], shallow=False)
    assert not mismatch and not errors
    _, diff, _ = filecmp.cmpfiles(a, c, [str(f) for f in fa], shallow=False)
    assert any(d.endswith(".jpg") for d in diff) and any(d.endswith(".csv") for d in diff)
    assert validate_dataset(a).ok and validate_dataset(c).ok


def test_layout_and_content(tiny_ocelot_root: Path) -> None:
    meta = read_metadata(tiny_ocelot_root)
    assert len(meta["sample_pairs"]) == 8
    n = {1: 0, 2: 0}
    for split in ("train", "val", "test"):
        for sid in list_ids(tiny_ocelot_root, split):
            e = meta["sample_pairs"][sid]
            assert e["subset"] == split and e["cell"]["resized_mpp_x"] == pytest.approx(0.2)
            assert e["tissue"]["resized_mpp_x"] == pytest.approx(0.8)
            pts = read_cells_csv(tiny_ocelot_root / "annotations" / split / "cell" / f"{sid}.csv")
            for c in (1, 2):
                n[c] += int((pts[:, 2] == c).sum())
    assert n[1] > 0 and n[2] > 0


def test_tumour_cells_lie_in_cancer_regions_of_the_tissue_patch(tmp_path: Path) -> None:
    """The tissue patch is real context: mapped through metadata, tumour cells fall in label-2 tissue."""
    root = make_synthetic_ocelot(tmp_path / "ctx", 6, 0, 0, size=256, seed=1)
    meta = read_metadata(root)
    in_cancer = {1: [], 2: []}
    for sid in list_ids(root, "train"):
        pts = read_cells_csv(root / "annotations" / "train" / "cell" / f"{sid}.csv")
        tmask = read_tissue_mask(root / "annotations" / "train" / "tissue" / f"{sid}.png")
        box = cell_box_in_tissue(meta, sid, (256, 256), tmask.shape)
        s = (box[2] - box[0]) / 256
        tx = np.clip((box[0] + pts[:, 0] * s).astype(int), 0, tmask.shape[1] - 1)
        ty = np.clip((box[1] + pts[:, 1] * s).astype(int), 0, tmask.shape[0] - 1)
        for c in (1, 2):
            in_cancer[c] += list(tmask[ty[pts[:, 2] == c], tx[pts[:, 2] == c]] == 2)
    assert np.mean(in_cancer[2]) > 0.8  # nest borders are refined at cell resolution
    assert np.mean(in_cancer[1]) < 0.5


def test_bad_arguments_and_existing_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_val"):
        make_synthetic_ocelot(tmp_path / "x", 1, -1, 1, size=64)
    root = make_synthetic_ocelot(tmp_path / "y", 1, 1, 1, size=64)
    with pytest.raises(FileExistsError, match="not empty"):
        make_synthetic_ocelot(root, 1, 1, 1, size=64)
    make_synthetic_ocelot(root, 2, 1, 1, size=64, overwrite=True)
    assert len(list_ids(root, "train")) == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_cli(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    res = subprocess.run([sys.executable, "-m", "util.synthetic", str(out), "--n-train", "2", "--n-val", "1",
                          "--n-test", "1", "--size", "64"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "no problems" in res.stdout and (out / "metadata.json").is_file()
    res = subprocess.run([sys.executable, "-m", "util.synthetic", str(out)], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 1 and "not empty" in res.stderr


def test_orientations_are_random() -> None:
    """Rotation symmetry in distribution: the image structure tensor averaged over samples is isotropic,
    while single samples are not (fibres and elongated nuclei have directions)."""
    import cv2

    from util.synthetic import make_sample

    def tensor(img: np.ndarray) -> np.ndarray:
        g = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32)
        gx, gy = cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1)
        return np.array([[np.mean(gx * gx), np.mean(gx * gy)], [np.mean(gx * gy), np.mean(gy * gy)]])

    def anisotropy(j: np.ndarray) -> float:
        return float(np.hypot(j[0, 0] - j[1, 1], 2 * j[0, 1]) / (j[0, 0] + j[1, 1]))

    tensors = [tensor(make_sample(11, i, 192)["cell_image"]) for i in range(24)]
    assert max(anisotropy(j) for j in tensors) > 0.05  # individual patches have a direction
    assert anisotropy(np.mean(tensors, axis=0)) < 0.05  # the set does not
