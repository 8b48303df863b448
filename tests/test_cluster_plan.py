"""util.cluster.plan (``python -m util.cluster plan``): train.sh's run folder and command from config, overrides
and the Slurm environment; every bad value refused by name before anything runs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from util.cluster.__main__ import main
from util.cluster.plan import Plan, PlanError, make_plan
from util.config import grid_point, load_config
from util.training import resolve_run_dir

ROOT = Path(__file__).resolve().parents[1]
TINY = "configs/tiny.yaml"


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(ROOT)  # train.sh runs the plan from the repository root


@pytest.fixture
def grid(tmp_path: Path) -> str:
    path = tmp_path / "grid.yaml"
    path.write_text(f"base: {ROOT / TINY}\nname: tiny_grid\ngrid:\n  seed: [0, 1, 2]\n")
    return str(path)


def _params(plan: Plan) -> dict:
    return json.loads(plan.command[plan.command.index("-y") + 1])


def test_single_task_runs_the_notebook_with_papermill(tmp_path):
    overrides = [f"runs_dir={tmp_path}", "seed=3"]
    plan = make_plan(TINY, overrides, {"KERNEL": "mykernel"}, ROOT)
    run_dir = resolve_run_dir(load_config(TINY, overrides))
    assert plan.run_dir == str(run_dir) and plan.notebook == str(run_dir / "v1_0.ipynb")
    assert plan.command[:6] == ["python", "-m", "papermill", "v1_0.ipynb", plan.notebook, "-k"]
    assert plan.command[6] == "mykernel"
    assert plan.command[plan.command.index("--cwd") + 1] == str(ROOT)
    assert _params(plan) == {"config_path": TINY, "overrides": overrides, "grid_index": None}
    assert make_plan(TINY, overrides, {"KERNEL": ""}, ROOT).command[6] == "python3"  # empty: the default
    assert not tmp_path.joinpath("tiny").exists(), "a plan creates nothing"
    assert Plan.from_json(plan.to_json()) == plan


def test_several_tasks_run_util_train_under_srun(tmp_path, grid):
    env = {"SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2", "SLURM_JOB_NUM_NODES": "2"}
    plan = make_plan(TINY, [f"runs_dir={tmp_path}"], env, ROOT)
    assert plan.notebook is None
    assert plan.command == ["srun", "--kill-on-bad-exit=1", "python", "-m", "util.train", TINY, f"runs_dir={tmp_path}",
                            "devices=2", "num_nodes=2", "strategy=ddp"]
    plan = make_plan(grid, [], {"SLURM_NTASKS": "2", "SLURM_ARRAY_TASK_ID": "1"}, ROOT)
    assert plan.command[-5:] == ["--grid-index", "1", "devices=2", "num_nodes=1", "strategy=ddp"]


def test_array_task_runs_its_grid_point(grid):
    plan = make_plan(grid, [], {"SLURM_ARRAY_TASK_ID": "2"}, ROOT)
    assert plan.run_dir == str(resolve_run_dir(grid_point(load_config(grid), 2)))
    assert _params(plan)["grid_index"] == 2
    with pytest.raises(PlanError, match=r"is a grid config: submit it as an array job \(sbatch --array=0-N"):
        make_plan(grid, [], {}, ROOT)
    with pytest.raises(PlanError, match="grid point 3 out of range"):
        make_plan(grid, [], {"SLURM_ARRAY_TASK_ID": "3"}, ROOT)


def test_resume_never_is_pinned_to_the_fresh_folder(tmp_path, grid):
    plan = make_plan(TINY, [f"runs_dir={tmp_path}", "resume=never"], {}, ROOT)
    overrides = _params(plan)["overrides"]
    assert overrides[:2] == [f"runs_dir={tmp_path}", "resume=never"]
    assert overrides[2:] == [f"run_id={Path(plan.run_dir).name}", "resume=auto"]
    # the notebook, given those overrides, lands in the same folder (so does a requeued job)
    assert str(resolve_run_dir(load_config(TINY, overrides))) == plan.run_dir
    with pytest.raises(PlanError, match="resume=never is not supported for array jobs"):
        make_plan(grid, ["resume=never"], {"SLURM_ARRAY_TASK_ID": "0"}, ROOT)


@pytest.mark.parametrize("config, overrides, env, message", [
    ("configs/no_such.yaml", [], {}, "config file 'configs/no_such.yaml' not found"),
    (TINY, ["lerning_rate=0.1"], {}, "did you mean 'learning_rate'"),
    (TINY, [], {"SLURM_NTASKS": "two"}, "SLURM_NTASKS='two' is not a whole number"),
    (TINY, [], {"SLURM_ARRAY_TASK_ID": "1.5"}, "SLURM_ARRAY_TASK_ID='1.5' is not a whole number"),
])
def test_bad_values_are_refused_by_name(config, overrides, env, message):
    with pytest.raises(PlanError, match=message.replace("(", r"\(").replace(".", r"\.")):
        make_plan(config, overrides, env, ROOT)


def test_cli_prints_one_json_line_or_the_error_with_exit_code_2(tmp_path, capsys, monkeypatch):
    for var in ("SLURM_NTASKS", "SLURM_ARRAY_TASK_ID", "KERNEL"):
        monkeypatch.delenv(var, raising=False)
    assert main(["plan", "--", TINY, f"runs_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 1
    assert Plan.from_json(out).run_dir == str(resolve_run_dir(load_config(TINY, [f"runs_dir={tmp_path}"])))
    assert main(["plan", TINY, "lerning_rate=0.1"]) == 2
    assert capsys.readouterr().err.startswith("train.sh: ")


@pytest.mark.parametrize("text, message", [
    ("not json", "not a plan"),
    ('{"run_dir": "r", "command": ["x"]}', "not a plan"),  # no notebook key
    ('{"run_dir": "r", "command": [], "notebook": null}', "non-empty list of strings"),
    ('{"run_dir": "r", "command": "python x", "notebook": null}', "non-empty list of strings"),
])
def test_a_bad_plan_is_refused(text, message):
    with pytest.raises(PlanError, match=message):
        Plan.from_json(text)
