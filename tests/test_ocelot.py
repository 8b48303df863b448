"""util.ocelot: reading, validation (every problem at once), points → masks, CLI, real data."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, real_datasets
from util.ocelot import (OcelotFormatError, list_ids, points_to_mask, read_cells_csv, read_metadata, sample_mpp,
                         validate_dataset)


def test_tiny_set_validates_clean(tiny_ocelot_root: Path) -> None:
    rep = validate_dataset(tiny_ocelot_root)
    assert rep.ok, rep.format()
    assert rep.summary["cell_size"] == [128, 128]
    assert [rep.summary["splits"][s]["patches"] for s in ("train", "val", "test")] == [4, 2, 2]
    assert list_ids(tiny_ocelot_root, "train") == ["001", "002", "003", "004"]
    assert sample_mpp(read_metadata(tiny_ocelot_root), "001") == pytest.approx(0.2)


def test_read_cells_csv(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert read_cells_csv(empty).shape == (0, 3)
    good = tmp_path / "good.csv"
    good.write_text("10,20,1\n30,40,2\n\n")
    np.testing.assert_array_equal(read_cells_csv(good), [[10, 20, 1], [30, 40, 2]])
    bad = tmp_path / "bad.csv"
    bad.write_text("10,20,1\n10,abc,2\n")
    with pytest.raises(OcelotFormatError, match=r"bad\.csv:2.*'abc'"):
        read_cells_csv(bad)
    with pytest.raises(OcelotFormatError, match="outside"):
        read_cells_csv(good, shape=(32, 32))
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        read_cells_csv(tmp_path / "missing.csv")


def _break(root: Path) -> dict[str, str]:
    """Damage a copy of the tiny set in ≥ 8 ways; return kind → the file name that must be reported."""
    img = root / "images" / "train" / "cell"
    ann = root / "annotations" / "train" / "cell"
    (ann / "001.csv").unlink()                                        # missing partner
    data = (img / "002.jpg").read_bytes()
    (img / "002.jpg").write_bytes(data[: len(data) // 2])             # truncated JPEG
    (ann / "003.csv").write_text("5,5,1\n5,x,2\n")                    # non-numeric cell (line 2)
    (ann / "004.csv").write_text("5,5,1\n6,7\n")                      # 2-column line (line 2)
    va = root / "annotations" / "val" / "cell"
    (va / "005.csv").write_text("-3,5,1\n")                           # negative coordinate
    (va / "006.csv").write_text("1,1,2\n500,5,1\n")                   # outside the 128×128 image (line 2)
    ta = root / "annotations" / "test" / "cell"
    (ta / "007.csv").write_text("1,1,7\n")                            # class 7
    from PIL import Image

    Image.new("RGB", (100, 128), (200, 100, 200)).save(root / "images" / "test" / "cell" / "008.jpg")  # wrong size
    return {"missing_partner": "001", "truncated_image": "002.jpg", "csv_not_numeric": "003.csv:2",
            "csv_columns": "004.csv:2", "negative_coordinate": "005.csv:1", "point_outside_image": "006.csv:2",
            "unknown_class": "007.csv:1", "wrong_size": "008.jpg"}


def test_validate_reports_every_damage_at_once(tiny_ocelot_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "broken"
    shutil.copytree(tiny_ocelot_root, root)
    expected = _break(root)
    rep = validate_dataset(root)
    assert not rep.ok
    text = rep.format(None)
    for kind, where in expected.items():
        hits = [str(p) for p in rep.problems if p.kind == kind]
        assert hits, f"{kind} not reported:\n{text}"
        assert any(where in h for h in hits), f"{kind}: expected {where!r} in {hits}"
    assert len(expected) >= 8
    # CLI: non-zero exit, problems printed with file names
    res = subprocess.run([sys.executable, "-m", "util.ocelot", "validate", str(root)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    assert "003.csv:2" in res.stdout and "wrong_size" in res.stdout


def test_validate_metadata_problems(tiny_ocelot_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "meta"
    shutil.copytree(tiny_ocelot_root, root)
    meta = json.loads((root / "metadata.json").read_text())
    del meta["sample_pairs"]["002"]
    meta["sample_pairs"]["003"]["subset"] = "test"
    (root / "metadata.json").write_text(json.dumps(meta))
    rep = validate_dataset(root)
    msgs = [str(p) for p in rep.problems if p.kind == "metadata"]
    assert any("'002'" in m for m in msgs) and any("'003'" in m and "test" in m for m in msgs), msgs
    (root / "metadata.json").unlink()
    assert any(p.kind == "metadata" for p in validate_dataset(root).problems)


def test_cli_validate_ok(tiny_ocelot_root: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "util.ocelot", "validate", str(tiny_ocelot_root)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "no problems" in res.stdout


def test_points_to_mask_area_order_and_scaling() -> None:
    # r = 3 µm at 0.2 µm/px = 15 px: area within 10% of π r²
    m = points_to_mask(np.array([[50, 50, 1]]), (101, 101), radius_um=3.0, mpp=0.2)
    assert abs((m == 1).sum() - math.pi * 15 ** 2) / (math.pi * 15 ** 2) < 0.10
    assert m[50, 50] == 1 and m[50, 65] == 1 and m[50, 66] == 0
    # radius in µm scales with mpp: 3 µm at 0.5 µm/px is 6 px
    m2 = points_to_mask(np.array([[50, 50, 2]]), (101, 101), radius_um=3.0, mpp=0.5)
    assert abs((m2 == 2).sum() - math.pi * 6 ** 2) / (math.pi * 6 ** 2) < 0.10
    # overlaps: the higher class wins, whatever the order of the points
    pts = np.array([[40, 50, 2], [50, 50, 1]])
    a = points_to_mask(pts, (101, 101), 3.0, 0.2)
    b = points_to_mask(pts[::-1], (101, 101), 3.0, 0.2)
    np.testing.assert_array_equal(a, b)
    assert a[50, 45] == 2 and a[50, 60] == 1
    # empty input, points partly outside
    assert points_to_mask(np.zeros((0, 3)), (8, 9), 2.0, 0.2).shape == (8, 9)
    edge = points_to_mask(np.array([[0, 0, 1]]), (40, 40), 2.0, 0.2)
    assert 0 < (edge == 1).sum() < math.pi * 100
    with pytest.raises(ValueError, match="positive"):
        points_to_mask(np.array([[1, 1, 1]]), (8, 8), 2.0, 0.0)


def test_real_data_validates(shared_data_dir: Path) -> None:
    sets = real_datasets(shared_data_dir)
    if not sets:
        pytest.skip(f"no OCELOT-layout set (metadata.json) under {shared_data_dir}")
    for root in sets:
        rep = validate_dataset(root)
        assert rep.ok, rep.format(30)
        assert sum(s["patches"] for s in rep.summary["splits"].values()) > 0
