"""The two notebooks: committed clean and thin, executed for real by papermill on tiny configs."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = {
    "v1_0.ipynb": {"config_path": "configs/default.yaml", "overrides": [], "grid_index": None},
    "visualizations_and_testing.ipynb": {
        "runs_dir": "runs", "name": None, "tags": None, "out_dir": "visualization", "data_root": None,
        "study": "configs/study/brca_cpu.yaml",
    },
}
#: figures the visualization notebook must write (PNG and PDF each)
VIS_FIGURES = ["learning_curves", "mf1_vs_data_fraction", "transformed_test_accuracy", "equivariance_error",
               "time_to_target", "prediction_overlay", "augmentation_preview", "class_balance"]


def _parameters_cell(nb) -> nbformat.NotebookNode:
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, "exactly one cell must be tagged 'parameters'"
    return cells[0]


def _defaults(cell) -> dict:
    values = {}
    for node in ast.parse(cell.source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            values[node.targets[0].id] = ast.literal_eval(node.value)
    return values


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_committed_notebook_is_clean_and_thin(name):
    nb = nbformat.read(ROOT / name, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name}: a cell has outputs (clear them before committing)"
            assert cell.execution_count is None, f"{name}: a cell has an execution count"
            tree = ast.parse("\n".join(l for l in cell.source.splitlines() if not l.startswith("%")))
            defs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
            assert not defs, f"{name}: functions/classes belong in util/, not in the notebook"
            assert len(cell.source.splitlines()) <= 20, f"{name}: a long cell; move the logic into util/"
        assert "papermill" not in cell.get("metadata", {}), f"{name}: papermill metadata left in a cell"
    assert "papermill" not in nb.metadata
    params = _defaults(_parameters_cell(nb))
    assert params == NOTEBOOKS[name]


def _execute(name: str, out: Path, parameters: dict) -> nbformat.NotebookNode:
    import papermill as pm

    pm.execute_notebook(
        str(ROOT / name), str(out), parameters=parameters, kernel_name="python3", cwd=str(ROOT),
        progress_bar=False, log_output=False,
    )
    return nbformat.read(out, as_version=4)


def _text_outputs(nb) -> str:
    parts = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if "text" in o:
                parts.append(o["text"])
            for mime in ("text/plain", "text/html"):
                if mime in o.get("data", {}):
                    parts.append(o["data"][mime])
    return "\n".join(parts)


def _assert_image(path: Path) -> None:
    assert path.is_file(), f"{path.name} was not written"
    data = path.read_bytes()
    assert len(data) > 1000, f"{path.name} is (almost) empty"
    if path.suffix == ".png":
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        from PIL import Image

        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert min(im.size) > 100
            import numpy as np

            assert len(np.unique(np.asarray(im.convert("L")))) > 2, f"{path.name} is a blank image"
    else:
        assert data[:5] == b"%PDF-" and b"%%EOF" in data[-1024:]


@pytest.mark.slow
def test_v1_0_runs_under_papermill(tiny_ocelot_root, tmp_path):
    """v1_0 on the tiny config: finishes, and its run folder is the one the config resolves to (the same
    folder a run by hand gets) with config, metrics, checkpoints and figures."""
    from util.config import load_config
    from util.training import resolve_run_dir

    runs = tmp_path / "runs"
    overrides = [f"data.root={tiny_ocelot_root}", f"runs_dir={runs}"]
    out = tmp_path / "v1_0_out.ipynb"
    nb = _execute("v1_0.ipynb", out, {"config_path": "configs/tiny.yaml", "overrides": overrides})
    assert nb.metadata["papermill"]["exception"] in (None, False)
    run_dir = resolve_run_dir(load_config("configs/tiny.yaml", overrides))
    assert run_dir.parent.parent == runs and run_dir.is_dir()
    text = _text_outputs(nb)
    assert f"run folder: {run_dir}" in text
    assert "parameters" in text and "equivariance error" in text and "test_rot90" in text
    for rel in ("config.yaml", "history.csv", "metrics.json", "checkpoints/last.ckpt", "predictions/test.json"):
        assert (run_dir / rel).is_file(), rel
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # the table the notebook printed is the one in metrics.json (per class too), not a number of its own
    row = next(line for line in text.splitlines() if line.startswith("test ") and "n/a" not in line[:30])
    values = [float(v) for v in row.split()[1:5]]
    cells = metrics["test"]["cells"]
    assert values == pytest.approx([metrics["test"]["mF1"], cells["BC"]["precision"], cells["BC"]["recall"],
                                    cells["BC"]["f1"]], abs=6e-5)
    for fig in ("data_preview", "class_balance", "learning_curves", "transformed_test_accuracy",
                "prediction_overlay"):
        _assert_image(run_dir / "figures" / f"{fig}.png")
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 5, "the notebook should show its figures"


@pytest.fixture(scope="module")
def three_tiny_runs(tiny_ocelot_root, tmp_path_factory) -> Path:
    """Three finished tiny runs (two models, two data fractions) in a fresh runs folder."""
    from model import list_models
    from util.config import load_config
    from util.training import train

    runs = tmp_path_factory.mktemp("vis") / "runs"
    second = ["model.name=moment_unet", "model.kwargs.group=D4"] if "moment_unet" in list_models() else ["seed=1"]
    variants = [[], ["data.subset_fraction=0.5"], second]
    for extra in variants:
        cfg = load_config("configs/tiny.yaml", [f"data.root={tiny_ocelot_root}", f"runs_dir={runs}", *extra])
        result = train(cfg, quiet=True)
        assert result.metrics, f"tiny run {extra} did not finish"
    assert len(list(runs.glob("*/*/metrics.json"))) == 3
    return runs


@pytest.mark.slow
def test_visualization_notebook_writes_figures(three_tiny_runs, tmp_path):
    out_dir = tmp_path / "visualization"
    nb = _execute(
        "visualizations_and_testing.ipynb", tmp_path / "vis_out.ipynb",
        {"runs_dir": str(three_tiny_runs), "out_dir": str(out_dir)},
    )
    assert nb.metadata["papermill"]["exception"] in (None, False)
    text = _text_outputs(nb)
    assert "3 finished run(s)" in text
    assert "mF1" in text and "equivariance_error" in text  # the tidy table was shown
    # the committed study results, read from results/brca_cpu/ alone (no run folders)
    import csv

    with open(ROOT / "results" / "brca_cpu" / "runs.csv") as f:
        n_points = sum(1 for _ in csv.DictReader(f))
    assert f"brca_cpu: {n_points} finished point(s)" in text
    assert "moment_d4_none" in text and "mF1_ci_low" in text
    shown = sum(1 for c in nb.cells if "study_figures" in c.source
                for o in c.get("outputs", []) if "image/png" in o.get("data", {}))
    assert shown >= len(list((ROOT / "visualization" / "brca_cpu").glob("*.png")))
    for fig in VIS_FIGURES:
        for ext in ("png", "pdf"):
            _assert_image(out_dir / f"{fig}.{ext}")


@pytest.mark.slow
def test_visualize_library_without_runs(tiny_ocelot_root, tmp_path):
    """With no runs the comparison figures say so instead of failing; the data figures are drawn."""
    from util import visualize as viz

    written = viz.make_all_figures(tmp_path / "no_runs", tmp_path / "out", data_root=tiny_ocelot_root)
    assert viz.load_runs(tmp_path / "no_runs").empty
    for name in ("learning_curves", "mf1_vs_data_fraction", "transformed_test_accuracy", "equivariance_error",
                 "time_to_target", "augmentation_preview", "class_balance", "data_preview"):
        assert name in written
        _assert_image(tmp_path / "out" / f"{name}.png")
    balance = viz.class_balance_table(tiny_ocelot_root)
    assert set(balance["split"]) == {"train", "val", "test"} and (balance[["BC", "TC"]].sum().sum() > 0)
