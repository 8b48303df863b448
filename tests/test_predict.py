"""Prediction on new images (util.predict): files per image, QuPath GeoJSON, exact sliding window, bad inputs, CLI."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from util.config import load_config
from util.predict import (ImageResult, PredictError, draw_overlay, image_mpp, main, metadata_mpp, points_to_geojson,
                          predict_images, read_geojson_points, read_points_csv)
from util.training import read_points_json, train

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
KINDS = ("csv", "json", "geojson", "overlay")


@pytest.fixture(scope="module")
def run_dir(tiny_ocelot_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder trained for two steps on the tiny synthetic set (plumbing only, not accuracy)."""
    runs = tmp_path_factory.mktemp("predict_runs")
    cfg = load_config(TINY, [f"data.root={tiny_ocelot_root}", f"runs_dir={runs}", "max_steps=2",
                             "eval_transforms=[]", "detection.threshold=0.5"])
    return train(cfg, quiet=True).run_dir


@pytest.fixture(scope="module")
def test_images(tiny_ocelot_root: Path) -> Path:
    return tiny_ocelot_root / "images" / "test" / "cell"


def png_copies(src: Path, dst: Path, n: int = 2) -> list[Path]:
    """The first ``n`` images of ``src`` as PNGs (no resolution metadata) in ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    out = []
    for p in sorted(src.iterdir())[:n]:
        q = dst / f"{p.stem}.png"
        Image.open(p).convert("RGB").save(q)
        out.append(q)
    return out


def some_cells() -> np.ndarray:
    return np.array([[3, 4, 1, 0.25], [10.5, 7, 2, 0.9], [0, 0, 2, 1.0 / 3.0]], dtype=np.float64)


# ------------------------------------------------------------------------------------------- outputs
def test_files_per_image_and_formats(run_dir: Path, test_images: Path, tmp_path: Path):
    out = tmp_path / "out"
    res = predict_images(run_dir, [test_images], out=out, progress=False)  # µm/px from the set's metadata.json
    assert len(res) == 2 and all(r.ok for r in res) and [r.mpp for r in res] == [0.2, 0.2]
    for r in res:
        assert set(r.files) == set(KINDS) and all(p.is_file() for p in r.files.values())
        assert r.files["overlay"].name == f"{r.name}_overlay.png"
        cells = r.cells
        assert cells.ndim == 2 and cells.shape[1] == 4 and set(np.unique(cells[:, 2])) <= {1.0, 2.0}
        header = r.files["csv"].read_text().splitlines()[0]
        assert header == "x,y,class,probability,class_name"
        np.testing.assert_array_equal(read_points_csv(r.files["csv"]), cells)
        pts, ids = read_points_json(r.files["json"])
        assert ids == [r.name] and np.allclose(pts[0], cells, atol=1e-6)
        doc = json.loads(r.files["geojson"].read_text())
        assert doc["type"] == "FeatureCollection" and len(doc["features"]) == len(cells)
        for f in doc["features"]:
            assert f["type"] == "Feature" and f["geometry"]["type"] == "Point"
            assert len(f["geometry"]["coordinates"]) == 2
            assert f["properties"]["objectType"] == "annotation"
            cls = f["properties"]["classification"]
            assert cls["name"] in ("Background cell", "Tumour cell") and len(cls["color"]) == 3
            assert 0 <= f["properties"]["measurements"]["probability"] <= 1
        np.testing.assert_array_equal(read_geojson_points(r.files["geojson"]), cells)
        with Image.open(r.files["overlay"]) as im:
            assert im.size == (128, 128) and im.mode == "RGB"
    # without out: arrays only, nothing written
    again = predict_images(run_dir, test_images, progress=False)
    assert all(not r.files for r in again)
    assert all(np.array_equal(a.cells, b.cells) for a, b in zip(res, again))


def test_geojson_round_trip(tmp_path: Path):
    cells = some_cells()
    path = tmp_path / "p.geojson"
    path.write_text(json.dumps(points_to_geojson(cells)))
    np.testing.assert_array_equal(read_geojson_points(path), cells)
    path.write_text(json.dumps(points_to_geojson(np.zeros((0, 4)))))
    assert read_geojson_points(path).shape == (0, 4)
    # QuPath's own shapes: MultiPoint, a measurement list (0.2/0.3), "Tumor", no measurements, other geometry
    qupath = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "MultiPoint", "coordinates": [[1, 2], [3, 4]]},
         "properties": {"objectType": "annotation", "classification": {"name": "Tumor cell"},
                        "measurements": [{"name": "probability", "value": 0.5}]}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 6]},
         "properties": {"classification": {"name": "BC"}}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [0, 1], [0, 0]]]},
         "properties": {}}]}
    path.write_text(json.dumps(qupath))
    np.testing.assert_array_equal(read_geojson_points(path), [[1, 2, 2, 0.5], [3, 4, 2, 0.5], [5, 6, 1, 1.0]])
    qupath["features"][1]["properties"]["classification"]["name"] = "Stroma"
    path.write_text(json.dumps(qupath))
    with pytest.raises(ValueError, match="feature 1.*Stroma"):
        read_geojson_points(path)


def test_overlay_draws_class_colours():
    im = np.asarray(draw_overlay(np.zeros((40, 40, 3), np.uint8), np.array([[20, 20, 2, 0.9]]), mpp=0.2))
    assert (im[..., 0] > 150).any() and im[20, 20].sum() == 0  # a red ring, the centre untouched


def test_sliding_window_equals_whole_image(run_dir: Path, test_images: Path, tmp_path: Path):
    tile = np.asarray(Image.open(sorted(test_images.iterdir())[0]).convert("RGB"))
    rng = np.random.default_rng(0)
    big = np.clip(np.tile(tile, (8, 8, 1)).astype(int) + rng.integers(-20, 21, (1024, 1024, 3)), 0, 255)
    path = tmp_path / "big.png"
    Image.fromarray(big.astype(np.uint8)).save(path)
    kw = dict(mpp=0.2, progress=False, keep_probabilities=True)
    (win,) = predict_images(run_dir, [path], inference={"tile_size": 256}, **kw)
    (whole,) = predict_images(run_dir, [path], inference={"tile_size": None}, **kw)
    assert win.probabilities.shape == (3, 1024, 1024)
    assert float((win.probabilities - whole.probabilities).abs().max()) <= 1e-5
    assert len(whole.cells) > 0 and win.cells.shape == whole.cells.shape
    np.testing.assert_array_equal(win.cells[:, :3], whole.cells[:, :3])
    np.testing.assert_allclose(win.cells[:, 3], whole.cells[:, 3], atol=1e-5)


# ----------------------------------------------------------------------------------------- resolution
def test_mpp_sources(tmp_path: Path, test_images: Path):
    img = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    img.save(tmp_path / "cm.tif", resolution_unit=3, resolution=40000.0)  # 40000 px/cm = 0.25 µm/px
    assert image_mpp(tmp_path / "cm.tif") == pytest.approx(0.25)
    img.save(tmp_path / "aperio.tif", description="Aperio Image Library |AppMag = 40|MPP = 0.2527")
    assert image_mpp(tmp_path / "aperio.tif") == pytest.approx(0.2527)
    img.save(tmp_path / "hi.png", dpi=(101600, 101600))  # 101600 dpi = 0.25 µm/px
    assert image_mpp(tmp_path / "hi.png") == pytest.approx(0.25, rel=1e-3)
    img.save(tmp_path / "screen.png", dpi=(72, 72))  # a display default, not a scan resolution
    assert metadata_mpp(tmp_path / "screen.png")[0] is None
    with pytest.raises(PredictError, match=r"screen\.png.*72 dpi.*--mpp"):
        image_mpp(tmp_path / "screen.png")
    img.save(tmp_path / "plain.png")
    with pytest.raises(PredictError, match=r"plain\.png.*--mpp"):
        image_mpp(tmp_path / "plain.png")
    assert image_mpp(tmp_path / "plain.png", 0.5) == 0.5  # --mpp wins
    assert image_mpp(sorted(test_images.iterdir())[0]) == pytest.approx(0.2)  # OCELOT metadata.json


# -------------------------------------------------------------------------------------------- bad input
def test_bad_inputs_are_named_and_skipped(run_dir: Path, test_images: Path, tmp_path: Path):
    good = png_copies(test_images, tmp_path / "good")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff" + b"x" * 50)  # a JPEG header, then garbage
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    messages: list[str] = []
    res = predict_images(run_dir, [good[0], bad, empty, tmp_path / "missing.png", good[1]], mpp=0.2, out=out,
                         progress=False, log=messages.append)
    errors = {r.path.name: r.error for r in res if not r.ok}
    assert set(errors) == {"bad.jpg", "empty", "missing.png"}
    assert str(bad) in errors["bad.jpg"] and str(empty) in errors["empty"] and "no images" in errors["empty"]
    assert len(messages) == 3 and all(any(n in m for m in messages) for n in errors)
    for p in good:  # the others are all written
        assert all((out / n).is_file() for n in (f"{p.stem}.csv", f"{p.stem}.json", f"{p.stem}.geojson",
                                                 f"{p.stem}_overlay.png"))
    assert not list(out.glob("bad*")) and not list(out.glob(".*tmp*"))
    # no µm/px anywhere: named, the message says --mpp
    (r,) = predict_images(run_dir, [good[0]], progress=False, log=messages.append)
    assert not r.ok and str(good[0]) in r.error and "--mpp" in r.error


def test_bad_run_folders(run_dir: Path, test_images: Path, tmp_path: Path):
    no_cfg = tmp_path / "no_config"
    no_cfg.mkdir()
    with pytest.raises(FileNotFoundError, match=str(no_cfg)):
        predict_images(no_cfg, [test_images], progress=False)
    no_ckpt = tmp_path / "no_ckpt"
    no_ckpt.mkdir()
    shutil.copy(run_dir / "config.yaml", no_ckpt / "config.yaml")
    with pytest.raises(FileNotFoundError, match=f"{no_ckpt}.*checkpoint"):
        predict_images(no_ckpt, [test_images], progress=False)


# ------------------------------------------------------------------------------------------------- CLI
def test_cli_exit_codes(run_dir: Path, test_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    good = png_copies(test_images, tmp_path / "good", n=1)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage")
    out = tmp_path / "out"
    assert main([str(run_dir), str(good[0]), "--mpp", "0.2", "--out", str(out), "--no-progress"]) == 0
    assert main([str(run_dir), str(good[0]), str(bad), "--mpp", "0.2", "--out", str(out), "--no-progress",
                 "--threshold", "BC=0.4,TC=0.6", "--tile-size", "64"]) == 1
    assert str(bad) in capsys.readouterr().out
    assert main([str(tmp_path / "nowhere"), str(good[0]), "--mpp", "0.2", "--out", str(out)]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert main([str(run_dir), str(good[0]), "--out", str(out), "--no-progress"]) == 1  # no µm/px known
    assert main([str(run_dir), str(good[0]), "--threshold", "high", "--mpp", "0.2", "--out", str(out)]) == 2
    # the module entry point, as a user runs it (OCELOT-layout folder: µm/px from metadata.json)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("COMET_API_KEY", None)
    proc = subprocess.run([sys.executable, "-m", "util.predict", str(run_dir), str(test_images), "--out",
                           str(tmp_path / "cli")], cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert len(list((tmp_path / "cli").glob("*.geojson"))) == 2 and "2 image(s)" in proc.stdout


def test_result_ok_flag():
    assert ImageResult(Path("a.png")).ok and not ImageResult(Path("a.png"), error="x").ok
