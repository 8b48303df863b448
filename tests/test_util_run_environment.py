"""What every run records about where it ran: the git commit and "dirty" flag (``env.json``, the study's
``runs.csv``) and the software and CPU summary kept in a study's ``points/*.json``."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from util.study.store import environment_differences, environment_summary
from util.training.runs import environment_info, git_commit

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    """A repository laid out like this project, with one commit."""
    for rel in ("model/net.py", "util/training/runs.py", "configs/a.yaml", "README.md", "results/s/runs.csv"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    return tmp_path


@needs_git
def test_clean_tree_records_head(repo: Path):
    assert git_commit(repo) == {"commit": _git(repo, "rev-parse", "HEAD"), "dirty": False}


@needs_git
@pytest.mark.parametrize("rel", ["model/net.py", "configs/a.yaml", "util/training/runs.py", "model/new.py"])
def test_code_changes_anywhere_are_dirty(repo: Path, rel: str):
    """A change under model/ or configs/ counts, not only under util/ (it once looked at util/ alone)."""
    (repo / rel).write_text("changed\n")
    assert git_commit(repo)["dirty"] is True


@needs_git
def test_results_runs_figures_and_docs_are_not_dirty(repo: Path):
    (repo / "README.md").write_text("edited\n")
    (repo / "results/s/runs.csv").write_text("a new row\n")
    (repo / "results/s/points").mkdir()
    (repo / "results/s/points/p.json").write_text("{}\n")
    (repo / "visualization/s").mkdir(parents=True)
    (repo / "visualization/s/fig.png").write_bytes(b"png")
    (repo / "runs/s/run-1").mkdir(parents=True)
    (repo / "runs/s/run-1/metrics.json").write_text("{}\n")
    assert git_commit(repo)["dirty"] is False
    (repo / "model/net.py").write_text("changed\n")
    assert git_commit(repo)["dirty"] is True


@needs_git
def test_run_from_a_subfolder_sees_the_whole_tree(repo: Path):
    (repo / "model/net.py").write_text("changed\n")
    assert git_commit(repo / "util")["dirty"] is True


@needs_git
def test_default_is_this_project(tmp_path: Path):
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    assert git_commit()["commit"] == _git(root, "rev-parse", "HEAD")


@needs_git
def test_outside_a_repository_gives_none(tmp_path: Path):
    assert git_commit(tmp_path) == {"commit": None, "dirty": None}


def test_environment_names_packages_and_the_cpu_kernels():
    env = environment_info()
    assert env["packages"]["torch"] and env["python"]
    assert isinstance(env["device"]["cpu_capability"], str) and env["device"]["cpu_capability"]  # e.g. "AVX2"
    summary = environment_summary(env)
    assert summary["packages"] == env["packages"] and summary["cpu_capability"] == env["device"]["cpu_capability"]
    assert "hostname" not in summary and "git" not in summary


def test_environment_summary_of_an_old_run_without_env_json():
    assert environment_summary({}) == {"python": None, "packages": {}, "cpu_model": None, "cpu_capability": None,
                                       "numerics_settings": {}, "gpus": None}


def test_environment_keeps_the_numerics_variables_that_are_set_and_no_others(monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.delenv("MKL_CBWR", raising=False)
    monkeypatch.setenv("COMET_API_KEY", "secret-value")
    env = environment_info()
    assert env["device"]["numerics_settings"].get("ONEDNN_MAX_CPU_ISA") == "AVX2"
    assert "MKL_CBWR" not in env["device"]["numerics_settings"]
    assert "secret-value" not in json.dumps(env)
    assert environment_summary(env)["numerics_settings"] == env["device"]["numerics_settings"]


def _summary(**changes):
    base = {"python": "3.11.9", "packages": {"torch": "2.13.0", "numpy": "1.26.4"}, "cpu_model": "AMD EPYC 7B13",
            "cpu_capability": "AVX2", "numerics_settings": {}, "gpus": None}
    return {**base, **changes}


def test_environment_differences_names_each_changed_field():
    assert environment_differences(_summary(), _summary()) == []
    diff = environment_differences(_summary(), _summary(cpu_model="Intel(R) Xeon(R) Processor", cpu_capability="AVX512",
                                                        packages={"torch": "2.13.0", "numpy": "1.26.3"},
                                                        numerics_settings={"MKL_CBWR": "AVX2"}))
    assert diff == ["cpu_model: 'AMD EPYC 7B13' → 'Intel(R) Xeon(R) Processor'", "cpu_capability: 'AVX2' → 'AVX512'",
                    "numpy: '1.26.4' → '1.26.3'", "MKL_CBWR: None → 'AVX2'"]


def test_environment_differences_ignores_packages_one_side_did_not_list():
    newer = _summary(packages={"torch": "2.13.0", "numpy": "1.26.4", "albucore": "0.0.24"})
    assert environment_differences(_summary(), newer) == []


def test_environment_differences_of_a_row_without_an_environment():
    for committed in (None, {}, environment_summary({})):
        (line,) = environment_differences(committed, _summary())
        assert line.startswith("not recorded")
