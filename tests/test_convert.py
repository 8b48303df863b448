"""util.convert: BRCA-M2C → OCELOT layout on a tiny fake upstream checkout, the CLI, and the shipped data/brca_m2c."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO
from util.convert import ConversionError, brca_entry, convert_brca_m2c, main
from util.ocelot import read_cells_csv, read_image, read_metadata, sample_mpp, validate_dataset

SHIPPED = REPO / "data" / "brca_m2c"

#: (split, file stem in the upstream pattern, image size W×H); listed here out of order on purpose
FAKE = [
    ("train", "TCGA-AC-A2FG-01Z-00-DX1_30501_12001_999_1000_1.008", (504, 503)),
    ("train", "TCGA-A7-A0D9-01Z-00-DX2_18001_13001_1000_1000_0.9824", (491, 491)),
    ("train", "TCGA-A8-A06N-01Z-00-DX1_18501_28501_1000_1000_0.93", (465, 465)),
    ("val", "TCGA-A7-A0DB-01Z-00-DX1_168501_13501_1000_1000_0.986", (493, 493)),
    ("test", "TCGA-Z7-A8R6-01Z-00-DX1_41501_40501_1000_1000_1.0108", (505, 505)),
    ("test", "TCGA-OL-A66L-01Z-00-DX1_43501_65501_1000_1000_0.65748", (328, 328)),
]


def _write_png(path: Path, w: int, h: int, seed: int) -> None:
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 255 // w), (yy * 255 // h), np.full_like(xx, 40 * seed % 256)], -1).astype(np.uint8)
    Image.fromarray(img).save(path)


def _labels(w: int, h: int, crop: int = 448) -> str:
    """Rows ``Y X class``: corners of the crop (kept), just outside it (dropped), all three classes."""
    ox, oy = (w - crop) // 2, (h - crop) // 2
    rows = [(oy, ox, 1), (oy + crop - 1, ox + crop - 1, 2), (oy + 10, ox + 20, 3), (oy + 100, ox + 5, 2),
            (oy - 1, ox + 5, 1), (oy + 5, ox - 1, 2), (oy + crop, ox + 5, 3), (oy + 5, ox + crop, 1)]
    return "".join(f"{y} {x} {c}\n" for y, x, c in rows)


def make_fake_upstream(root: Path, samples: list = FAKE, license_text: str | None = "BSD 3-Clause License\n"
                       ) -> Path:
    """A tiny TopoXLab/Dataset-BRCA-M2C checkout: images/*.png, labels/*_gt_class_coords.txt, brca_ds_*.txt."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    lists: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for i, (split, stem, (w, h)) in enumerate(samples):
        _write_png(root / "images" / f"{stem}.png", w, h, i)
        (root / "labels" / f"{stem}_gt_class_coords.txt").write_text(_labels(w, h))
        lists[split].append(f"{stem}.png")
    for split, names in lists.items():
        (root / f"brca_ds_{split}.txt").write_text("".join(f"{n}\n" for n in names))
    if license_text:
        (root / "LICENSE").write_text(license_text)
    return root


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    base = tmp_path_factory.mktemp("convert")
    src = make_fake_upstream(base / "src")
    out = base / "out"
    return src, out, convert_brca_m2c(src, out)


def test_layout_ids_and_metadata(converted: tuple[Path, Path, dict]) -> None:
    src, out, summary = converted
    assert summary["report"].ok, summary["report"].format()
    assert {s: c["patches"] for s, c in summary["counts"].items()} == {"train": 3, "val": 1, "test": 1}
    ids = {s: sorted(p.stem for p in (out / "images" / s / "cell").glob("*.jpg")) for s in ("train", "val", "test")}
    assert ids == {"train": ["000", "001", "002"], "val": ["003"], "test": ["004"]}
    for s, sids in ids.items():
        for sid in sids:
            assert (out / "annotations" / s / "cell" / f"{sid}.csv").is_file()
            assert read_image(out / "images" / s / "cell" / f"{sid}.jpg").shape == (448, 448, 3)
    meta = read_metadata(out)
    # within a split the ids follow the sorted file names, whatever the split list's order
    src_files = [meta["sample_pairs"][f"{i:03d}"]["source_file"] for i in range(5)]
    assert src_files[:3] == sorted(src_files[:3])
    e = meta["sample_pairs"]["002"]
    assert e["source_file"] == "images/TCGA-AC-A2FG-01Z-00-DX1_30501_12001_999_1000_1.008.png"
    assert e["slide_name"] == "TCGA-AC-A2FG-01Z-00-DX1" and e["subset"] == "train"
    assert e["source_size"] == [504, 503] and e["crop_offset_xy"] == [28, 27]
    assert e["level0_mpp"] == pytest.approx(0.252)
    assert e["mpp"] == 0.4995  # 0.252 × 999 / 504
    assert e["cell"] == {"x_start": 30557, "y_start": 12055, "x_end": 31445, "y_end": 12943,
                         "resized_mpp_x": 0.4995, "resized_mpp_y": 0.4995}
    assert meta["sample_pairs"]["000"]["mpp"] == 0.5002  # 0.9824 / 4 × 1000 / 491
    assert meta["sample_pairs"]["001"]["crop_offset_xy"] == [8, 8]
    assert meta["skipped_too_small"] == ["TCGA-OL-A66L-01Z-00-DX1_43501_65501_1000_1000_0.65748"]
    for sid in meta["sample_pairs"]:
        assert sample_mpp(meta, sid) == pytest.approx(0.5, abs=0.002)


def test_points_shifted_clipped_and_mapped(converted: tuple[Path, Path, dict]) -> None:
    _, out, _ = converted
    # source rows Y X class at the crop's corners → x,y,class; the four just outside are dropped; 3 → 1
    expected = np.array([[0, 0, 1], [447, 447, 2], [20, 10, 1], [5, 100, 2]])
    for split, sid in (("train", "000"), ("train", "002"), ("test", "004")):
        np.testing.assert_array_equal(read_cells_csv(out / "annotations" / split / "cell" / f"{sid}.csv"), expected)
    assert read_metadata(out)["sample_pairs"]["002"]["n_cells"] == 4


def test_pixels_are_the_centre_crop(converted: tuple[Path, Path, dict]) -> None:
    src, out, _ = converted
    full = read_image(src / "images" / f"{FAKE[0][1]}.png")
    got = read_image(out / "images" / "train" / "cell" / "002.jpg").astype(int)
    assert np.abs(got - full[27:27 + 448, 28:28 + 448]).mean() < 2


def test_readme_license_and_manifest(converted: tuple[Path, Path, dict]) -> None:
    src, out, _ = converted
    readme = (out / "README.md").read_text()
    assert "BSD-3-Clause" in readme and "Multi-Class Cell Detection Using Spatial Context Representation" in readme
    assert "| train | 3 | 448×448 | 4 | 6 | 6 |" in readme
    assert "TCGA-OL-A66L-01Z-00-DX1" in readme and "commit unknown" in readme  # not a git checkout
    assert (out / "LICENSE").read_text() == (src / "LICENSE").read_text()
    files = json.loads((out / ".convert_manifest.json").read_text())["files"]
    assert "metadata.json" in files and "images/train/cell/000.jpg" in files


def test_force_replaces_only_own_files(tmp_path: Path) -> None:
    src = make_fake_upstream(tmp_path / "src", FAKE[:2])
    out = tmp_path / "out"
    convert_brca_m2c(src, out)
    foreign = out / "images" / "train" / "notes.txt"
    foreign.write_text("mine")
    with pytest.raises(ConversionError, match="not empty"):
        convert_brca_m2c(src, out)
    (src / "images" / f"{FAKE[1][1]}.png").unlink()  # now one train patch fewer
    (src / "labels" / f"{FAKE[1][1]}_gt_class_coords.txt").unlink()
    (src / "brca_ds_train.txt").write_text(f"{FAKE[0][1]}.png\n")
    summary = convert_brca_m2c(src, out, force=True)
    assert summary["report"].ok
    assert foreign.read_text() == "mine"
    assert sorted(p.name for p in (out / "images" / "train" / "cell").iterdir()) == ["000.jpg"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(ConversionError, match="not written by util.convert"):
        convert_brca_m2c(src, other, force=True)
    assert (other / "keep.txt").is_file()


def _break(src: Path, how: str) -> Path:
    stem = FAKE[1][1]
    if how == "no_source":
        return src / "missing"
    if how == "no_split":
        (src / "brca_ds_val.txt").unlink()
        return src / "brca_ds_val.txt"
    if how == "label_without_image":
        (src / "images" / f"{stem}.png").unlink()
        return src / "labels" / f"{stem}_gt_class_coords.txt"
    if how == "bad_label_row":
        (src / "labels" / f"{stem}_gt_class_coords.txt").write_text("1 2 1\n3 4\n")
        return src / "labels" / f"{stem}_gt_class_coords.txt"
    raise ValueError(how)


@pytest.mark.parametrize("how", ["no_source", "no_split", "label_without_image", "bad_label_row"])
def test_cli_errors_name_the_path(tmp_path: Path, capsys: pytest.CaptureFixture, how: str) -> None:
    src = make_fake_upstream(tmp_path / "src", FAKE[:2])
    bad = _break(src, how)
    arg = bad if how == "no_source" else src
    assert main(["brca_m2c", str(arg), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(bad) in err
    assert not (tmp_path / "out").exists()  # the source is checked before anything is written


def test_cli_runs_and_refuses_non_empty_out(tmp_path: Path) -> None:
    src = make_fake_upstream(tmp_path / "src", FAKE[:2])
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "util.convert", "brca_m2c", str(src), str(out)]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "train: 2 patches" in r.stdout and "OCELOT data set" in r.stdout
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "--force" in r.stderr and str(out) in r.stderr


# ----------------------------------------------------------------------------------------------- shipped set
def test_shipped_set_is_valid() -> None:
    rep = validate_dataset(SHIPPED)
    assert rep.ok, rep.format()
    assert rep.summary["cell_size"] == [448, 448]
    assert [rep.summary["splits"][s]["patches"] for s in ("train", "val", "test")] == [80, 10, 26]
    assert 0.49 < rep.summary["mpp"]["min"] <= rep.summary["mpp"]["max"] < 0.51
    readme = (SHIPPED / "README.md").read_text(encoding="utf-8")
    assert "BSD-3-Clause" in readme and "TopoXLab" in readme
    assert "Abousamra et al." in readme and "Multi-Class Cell Detection Using Spatial Context Representation" in readme
    for split in ("train", "val", "test"):  # the README's table matches the files
        s = rep.summary["splits"][split]
        assert f"| {split} | {s['patches']} | 448×448 |" in readme
        assert f"| {s['cells'][1]} | {s['cells'][2]} |" in readme


def test_shipped_metadata_is_what_the_converter_writes() -> None:
    meta = read_metadata(SHIPPED)
    for sid, e in meta["sample_pairs"].items():
        stem = e["source_file"].removeprefix("images/").removesuffix(".png")
        assert brca_entry(e["subset"], stem, tuple(e["source_size"]), 448, e["n_cells"]) == e, sid
    assert len(meta["skipped_too_small"]) == 4


def test_round_trip_reproduces_shipped_samples(tmp_path: Path) -> None:
    """Pad shipped patches back to their source size, invert their points, convert: the same CSV and entry."""
    meta = read_metadata(SHIPPED)
    src = tmp_path / "src"
    for d in ("images", "labels"):
        (src / d).mkdir(parents=True)
    picks = {"000": "train", "088": "val"}  # 088: 504×503, different x and y offsets
    for sid, split in picks.items():
        e = meta["sample_pairs"][sid]
        stem = e["source_file"].removeprefix("images/").removesuffix(".png")
        (W, H), (ox, oy) = e["source_size"], e["crop_offset_xy"]
        full = np.full((H, W, 3), 200, np.uint8)
        full[oy:oy + 448, ox:ox + 448] = read_image(SHIPPED / "images" / split / "cell" / f"{sid}.jpg")
        Image.fromarray(full).save(src / "images" / f"{stem}.png")
        pts = read_cells_csv(SHIPPED / "annotations" / split / "cell" / f"{sid}.csv")
        rows = [(y + oy, x + ox, c if c == 2 else (1, 3)[i % 2]) for i, (x, y, c) in enumerate(pts.tolist())]
        rows += [(0, 0, 1), (oy + 448, ox, 2), (oy, ox + 448, 3)]  # outside the crop
        (src / "labels" / f"{stem}_gt_class_coords.txt").write_text("".join(f"{y} {x} {c}\n" for y, x, c in rows))
        (src / f"brca_ds_{split}.txt").write_text(f"{stem}.png\n")
    (src / "brca_ds_test.txt").write_text("")
    out = tmp_path / "out"
    assert convert_brca_m2c(src, out)["report"].ok
    new = read_metadata(out)["sample_pairs"]
    for new_id, (sid, split) in zip(("000", "001"), picks.items()):
        shipped_csv = SHIPPED / "annotations" / split / "cell" / f"{sid}.csv"
        assert (out / "annotations" / split / "cell" / f"{new_id}.csv").read_bytes() == shipped_csv.read_bytes()
        assert new[new_id] == meta["sample_pairs"][sid]
        a = read_image(out / "images" / split / "cell" / f"{new_id}.jpg").astype(int)
        b = read_image(SHIPPED / "images" / split / "cell" / f"{sid}.jpg").astype(int)
        assert np.abs(a - b).mean() < 1.5
