"""Bad inputs are refused with a message naming the file, key or value, and nothing readable is lost.

One section per mechanism, each a parametrised table of cases (model keywords, model inputs and config values:
``test_util_bad_model_and_config_inputs.py``):

* data sets: ``util.ocelot.validate_dataset`` / ``check_dataset_for_training`` / ``sample_mpp``
* output folders: ``util.synthetic`` ``--force`` and ``util.manifest``
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.conftest import REPO
from util.ocelot import (OcelotFormatError, cell_box_in_tissue, check_dataset_for_training, sample_mpp,
                         tissue_mpp, validate_dataset)


def _snapshot(root: Path) -> dict[str, str]:
    """Relative path → sha1 of every file under ``root`` (to show nothing was changed or lost)."""
    return {p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 train / 1 val / 1 test synthetic samples of 64² (ids 001, 002 | 003 | 004); read-only, copy it."""
    from util.synthetic import make_synthetic_ocelot

    return make_synthetic_ocelot(tmp_path_factory.mktemp("bad") / "set", n_train=2, n_val=1, n_test=1, size=64)


@pytest.fixture()
def data_copy(small_set: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(small_set, root)
    return root


# =============================================================================================== data sets
def _edit_meta(fn: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        path = root / "metadata.json"
        meta = json.loads(path.read_text())
        fn(meta["sample_pairs"])
        path.write_text(json.dumps(meta))  # NaN is written as NaN, which json reads back
    return damage


def _set(sid: str, key: str, value: Any) -> Callable[[Path], None]:
    def fn(pairs: dict) -> None:
        *parents, last = key.split(".")
        d = pairs[sid]
        for p in parents:
            d = d[p]
        d[last] = value
    return _edit_meta(fn)


def _empty_val(root: Path) -> None:
    for sub in ("images/val/cell", "images/val/tissue", "annotations/val/cell", "annotations/val/tissue"):
        for p in (root / sub).iterdir():
            p.unlink()


def _orphan_csv(root: Path) -> None:
    (root / "annotations" / "train" / "cell" / "999.csv").write_text("1,1,1\n")


def _truncate(root: Path) -> None:
    p = root / "images" / "train" / "cell" / "002.jpg"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _not_an_image(root: Path) -> None:
    (root / "images" / "test" / "cell" / "004.jpg").write_text("hello")


def _truncate_png(root: Path) -> None:
    p = root / "annotations" / "train" / "tissue" / "001.png"
    p.write_bytes(p.read_bytes()[:-20])


#: case id → (damage, problem kind, strings the message must hold: file/sample, key, value)
DATA_CASES: dict[str, tuple[Callable[[Path], None], str, list[str]]] = {
    "string_entry": (_edit_meta(lambda s: s.__setitem__("001", "0.2")), "metadata",
                     ["metadata.json", "sample '001'", "str '0.2'", "expected an object"]),
    "mpp_not_numeric": (_set("001", "cell.resized_mpp_x", "abc"), "metadata",
                        ["metadata.json", "sample '001'", "cell.resized_mpp_x", "'abc'", "positive finite number"]),
    "mpp_negative": (_set("002", "cell.resized_mpp_y", -0.2), "metadata",
                     ["sample '002'", "cell.resized_mpp_y = -0.2", "positive"]),
    "mpp_nan": (_set("003", "cell.resized_mpp_x", float("nan")), "metadata",
                ["sample '003'", "cell.resized_mpp_x = nan", "finite"]),
    "mpp_bool": (_set("001", "mpp_x", True), "metadata", ["sample '001'", "mpp_x = bool True"]),
    "mpp_x_vs_y": (_set("002", "cell.resized_mpp_y", 0.4), "metadata",
                   ["sample '002'", "cell.resized_mpp_x = 0.2", "cell.resized_mpp_y = 0.4", "differ"]),
    "offset_out_of_range": (_set("001", "patch_x_offset", 1.5), "metadata",
                            ["sample '001'", "patch_x_offset = 1.5", "[0, 1]"]),
    "offset_missing_with_tissue": (_edit_meta(lambda s: s["004"].pop("patch_y_offset")), "metadata",
                                   ["sample '004'", "patch_y_offset"]),
    "cell_not_object": (_set("003", "cell", 3), "metadata", ["sample '003'", "cell is int 3", "expected an object"]),
    "subset_wrong": (_set("001", "subset", "val"), "metadata", ["sample '001'", "'train'", "'val'"]),
    "no_mpp_at_all": (_edit_meta(lambda s: s["002"].pop("cell")), "metadata",
                      ["sample '002'", "neither cell.resized_mpp_x nor mpp"]),
    "empty_val_split": (_empty_val, "empty_split", ["images/val/cell", "'val'"]),
    "orphan_csv": (_orphan_csv, "missing_partner", ["999.csv", "no cell image"]),
    "truncated_jpeg": (_truncate, "truncated_image", ["002.jpg", "truncated"]),
    "not_an_image": (_not_an_image, "unreadable_image", ["004.jpg", "not a JPEG"]),
    "truncated_png": (_truncate_png, "truncated_image", ["001.png", "truncated"]),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_dataset_problem_is_named(case: str, data_copy: Path) -> None:
    damage, kind, needles = DATA_CASES[case]
    damage(data_copy)
    before = _snapshot(data_copy)
    for rep in (validate_dataset(data_copy), validate_dataset(data_copy, decode=False)):
        hits = [str(p) for p in rep.problems if p.kind == kind]
        assert any(all(n in h for n in needles) for h in hits), (needles, rep.format(None))
    with pytest.raises(OcelotFormatError) as err:
        check_dataset_for_training(data_copy)
    msg = str(err.value)
    assert all(n in msg for n in needles), msg
    assert str(data_copy) in msg and "python -m util.ocelot validate" in msg
    assert err.value.problems and _snapshot(data_copy) == before  # nothing was changed or lost


def test_missing_split_is_an_error_for_training_only(data_copy: Path) -> None:
    for d in ("images/test", "annotations/test"):
        shutil.rmtree(data_copy / d)
    assert validate_dataset(data_copy).ok
    with pytest.raises(OcelotFormatError, match=r"split 'test' is needed"):
        check_dataset_for_training(data_copy)
    check_dataset_for_training(data_copy, splits=("train", "val"))  # clean: returns None
    with pytest.raises(FileNotFoundError, match=r"data root .*nowhere does not exist"):
        check_dataset_for_training(data_copy / "nowhere")


#: case id → (entry of sample "s", the function, strings its OcelotFormatError must hold)
ENTRY_CASES: dict[str, tuple[Any, Callable[[dict, str], Any], list[str]]] = {
    "string_entry": ("0.2", sample_mpp, ["x/metadata.json", "sample 's'", "str '0.2'"]),
    "mpp_string": ({"mpp": "0.5"}, sample_mpp, ["sample 's'", "mpp = str '0.5'"]),
    "mpp_negative": ({"cell": {"resized_mpp_x": -1}}, sample_mpp, ["cell.resized_mpp_x = -1"]),
    "no_mpp": ({"organ": "x"}, sample_mpp, ["neither cell.resized_mpp_x nor mpp"]),
    "tissue_mpp_list": ({"tissue": {"resized_mpp_x": [1]}}, tissue_mpp, ["tissue.resized_mpp_x = list [1]"]),
    "tissue_not_object": ({"tissue": "big"}, tissue_mpp, ["tissue is str 'big'"]),
    "offset_string": ({"mpp": 0.2, "tissue": {"resized_mpp_x": 0.8}, "patch_x_offset": "0.5", "patch_y_offset": 0.5},
                      lambda m, s: cell_box_in_tissue(m, s, (64, 64), (64, 64)), ["patch_x_offset = str '0.5'"]),
}


@pytest.mark.parametrize("case", list(ENTRY_CASES))
def test_metadata_reader_names_file_sample_and_value(case: str) -> None:
    from util.ocelot import Metadata

    entry, fn, needles = ENTRY_CASES[case]
    meta = Metadata({"sample_pairs": {"s": entry}})
    meta.path = "x/metadata.json"
    with pytest.raises(OcelotFormatError) as err:
        fn(meta, "s")
    assert all(n in str(err.value) for n in needles), str(err.value)


def test_training_dataset_refuses_a_string_entry_clearly(data_copy: Path) -> None:
    from util.dataloader import OcelotDataset

    _edit_meta(lambda s: s.__setitem__("001", "0.2"))(data_copy)
    with pytest.raises(OcelotFormatError, match=r"metadata\.json: sample '001': entry is str '0\.2'"):
        OcelotDataset(data_copy, "train")


# =============================================================================================== output folders
def _foreign_top(root: Path) -> list[str]:
    (root / "notes.txt").write_text("mine")
    return ["notes.txt"]


def _foreign_nested(root: Path) -> list[str]:
    (root / "images" / "train" / "cell" / "extra.jpg").write_bytes(b"\xff\xd8 not ours")
    (root / "annotations" / "train" / "cell" / "extra.csv").write_text("1,1,1\n")
    return ["images/train/cell/extra.jpg", "annotations/train/cell/extra.csv"]


def _not_synthetic(root: Path) -> list[str]:
    meta = json.loads((root / "metadata.json").read_text())
    meta.pop("generator")
    (root / "metadata.json").write_text(json.dumps(meta))
    return ["not a synthetic set"]


def _extra_sample_in_metadata_only(root: Path) -> list[str]:
    """A foreign file whose name fits the layout but is not in metadata.json is still foreign."""
    (root / "images" / "test" / "cell" / "005.jpg").write_bytes(b"x")
    return ["images/test/cell/005.jpg"]


FORCE_CASES: dict[str, Callable[[Path], list[str]]] = {
    "foreign_file_at_top": _foreign_top,
    "foreign_files_nested": _foreign_nested,
    "not_a_synthetic_set": _not_synthetic,
    "layout_name_not_in_metadata": _extra_sample_in_metadata_only,
}


@pytest.mark.parametrize("case", list(FORCE_CASES))
def test_synthetic_force_refuses_foreign_files_and_deletes_nothing(case: str, data_copy: Path) -> None:
    from util.synthetic import make_synthetic_ocelot

    needles = FORCE_CASES[case](data_copy)
    before = _snapshot(data_copy)
    with pytest.raises(FileExistsError) as err:
        make_synthetic_ocelot(data_copy, 1, 1, 1, size=64, overwrite=True)
    assert all(n in str(err.value) for n in needles) and "nothing was deleted" in str(err.value).lower()
    assert _snapshot(data_copy) == before  # the foreign and the generated files are all still there
    assert not [p for p in data_copy.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_synthetic_force_cli_refuses_and_names_the_foreign_file(data_copy: Path) -> None:
    (data_copy / "notes.txt").write_text("mine")
    before = _snapshot(data_copy)
    res = subprocess.run([sys.executable, "-m", "util.synthetic", str(data_copy), "--n-train", "1", "--n-val", "1",
                          "--n-test", "1", "--size", "64", "--force"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 1 and "notes.txt" in res.stderr and "Nothing was deleted" in res.stderr
    assert _snapshot(data_copy) == before


def test_synthetic_force_on_its_own_output_replaces_it_and_says_what_it_removed(data_copy: Path) -> None:
    old = set(_snapshot(data_copy))
    res = subprocess.run([sys.executable, "-m", "util.synthetic", str(data_copy), "--n-train", "1", "--n-val", "1",
                          "--n-test", "1", "--size", "64", "--force"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert f"removed {len(old)} file(s) of the earlier synthetic set in {data_copy}" in res.stdout
    assert "annotations/test/cell/004.csv" in res.stdout and f"(and {len(old) - 5} more)" in res.stdout
    assert "no problems" in res.stdout
    assert sorted(p.name for p in (data_copy / "images" / "train" / "cell").iterdir()) == ["001.jpg"]


def test_created_folders_follow_the_umask(tmp_path: Path) -> None:
    from util.synthetic import make_synthetic_ocelot

    old = os.umask(0o022)
    try:
        root = make_synthetic_ocelot(tmp_path / "u", 1, 0, 0, size=32)
    finally:
        os.umask(old)
    assert stat.S_IMODE(root.stat().st_mode) == 0o755
    assert stat.S_IMODE((root / "images" / "train" / "cell").stat().st_mode) == 0o755
    assert stat.S_IMODE((root / "metadata.json").stat().st_mode) == 0o644
    assert not (root / "images" / "val").exists()  # a split without samples gets no (empty) folder


#: case id → (owned list given, strings the error must hold)
MANIFEST_CASES: dict[str, tuple[list[str], list[str]]] = {
    "entry_outside_the_folder": (["a.txt", "../outside.txt"], ["'../outside.txt'", "points outside"]),
    "foreign_file": (["a.txt"], ["b.txt", "not written by tool-x"]),
}


@pytest.mark.parametrize("case", list(MANIFEST_CASES))
def test_remove_owned_refuses_and_deletes_nothing(case: str, tmp_path: Path) -> None:
    from util.manifest import remove_owned

    owned, needles = MANIFEST_CASES[case]
    folder = tmp_path / "out"
    folder.mkdir()
    for name in ("a.txt", "b.txt"):
        (folder / name).write_text(name)
    (tmp_path / "outside.txt").write_text("keep")
    if case == "entry_outside_the_folder":
        (folder / "b.txt").unlink()
    before = _snapshot(tmp_path)
    with pytest.raises(FileExistsError) as err:
        remove_owned(folder, owned, tool="tool-x")
    assert all(n in str(err.value) for n in needles), str(err.value)
    assert _snapshot(tmp_path) == before
