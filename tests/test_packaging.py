"""pyproject.toml and environment.yml must list the same dependencies with the same version bounds."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
# Only in one file on purpose: conda's own python/pip.
CONDA_ONLY = {"python", "pip"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pyproject_requirements(text: str) -> dict[str, str]:
    """{normalised name: specifier} of the dependencies and every optional extra."""
    project = tomllib.loads(text)["project"]
    reqs = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        reqs += extra
    out = {}
    for r in reqs:
        req = Requirement(r)
        out[_norm(req.name)] = str(req.specifier)
    return out


def environment_requirements(text: str) -> dict[str, str]:
    """{normalised name: specifier} of environment.yml's conda and pip dependencies (python/pip left out)."""
    env = yaml.safe_load(text)
    out = {}
    for dep in env["dependencies"]:
        items = dep["pip"] if isinstance(dep, dict) else [dep]
        for item in items:
            spec = item.split("#")[0].strip().replace(" ", "")
            if "=" in spec and not re.search(r"[<>!=]=|[<>]", spec):  # conda's single '=' pin
                spec = spec.replace("=", "==", 1)
            req = Requirement(spec)
            if _norm(req.name) not in CONDA_ONLY:
                out[_norm(req.name)] = str(req.specifier)
    return out


def drift(pyproject_text: str, environment_text: str) -> list[str]:
    """Human-readable differences between the two dependency lists (empty when they agree)."""
    a, b = pyproject_requirements(pyproject_text), environment_requirements(environment_text)
    problems = [f"{n} ({a[n] or 'any'}) is in pyproject.toml but not in environment.yml" for n in sorted(a.keys() - b.keys())]
    problems += [f"{n} ({b[n] or 'any'}) is in environment.yml but not in pyproject.toml" for n in sorted(b.keys() - a.keys())]
    problems += [f"{n}: pyproject.toml says '{a[n]}', environment.yml says '{b[n]}'"
                 for n in sorted(a.keys() & b.keys()) if a[n] != b[n]]
    return problems


def test_pyproject_and_environment_agree():
    problems = drift((ROOT / "pyproject.toml").read_text(), (ROOT / "environment.yml").read_text())
    assert not problems, "pyproject.toml and environment.yml drifted apart:\n" + "\n".join(problems)


@pytest.mark.parametrize("name", ["monai", "numpy", "papermill"])
def test_drift_is_detected_when_a_dependency_is_removed(name):
    pyproject = (ROOT / "pyproject.toml").read_text()
    env = (ROOT / "environment.yml").read_text()
    env_without = "\n".join(line for line in env.splitlines() if not re.match(rf"\s*- {name}\b", line))
    assert env_without != env
    assert any(name.replace("_", "-") in p for p in drift(pyproject, env_without))
    py_without = "\n".join(line for line in pyproject.splitlines() if not re.match(rf'\s*"{name}\b', line))
    assert py_without != pyproject
    assert any(name.replace("_", "-") in p for p in drift(py_without, env))


def test_version_bound_change_is_detected():
    pyproject = (ROOT / "pyproject.toml").read_text()
    env = (ROOT / "environment.yml").read_text().replace("numpy>=1.24,<2", "numpy>=1.24")
    assert any("numpy" in p for p in drift(pyproject, env))


def lock_pins(text: str) -> dict[str, str]:
    """{normalised name: version} of requirements-lock.txt's ``name==version`` lines."""
    out = {}
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            pins = [s.version for s in req.specifier if s.operator == "=="]
            assert len(pins) == 1, f"requirements-lock.txt: {line!r} is not an exact pin"
            out[_norm(req.name)] = pins[0]
    return out


def test_lock_pins_every_dependency_within_its_range():
    """`setup.sh --locked` installs requirements-lock.txt: it must pin each pyproject dependency (torch comes from
    --torch) to a version its range allows, else the lock has drifted from pyproject.toml."""
    pins = lock_pins((ROOT / "requirements-lock.txt").read_text())
    for name, spec in pyproject_requirements((ROOT / "pyproject.toml").read_text()).items():
        if name == "torch":
            assert name not in pins  # the build (CPU, CUDA) is the machine's: --torch
            continue
        assert name in pins, f"{name} is a dependency but requirements-lock.txt does not pin it"
        assert Requirement(f"{name}{spec}").specifier.contains(pins[name], prereleases=True), \
            f"requirements-lock.txt pins {name}=={pins[name]}, outside pyproject.toml's '{spec}'"


def test_lock_check_sees_a_pin_outside_the_range():
    assert not Requirement("numpy>=1.24,<2").specifier.contains(lock_pins("numpy==2.1.0\n")["numpy"])
    with pytest.raises(AssertionError, match="not an exact pin"):
        lock_pins("numpy>=1.24\n")
