"""The study file: its schema (documented in :mod:`util.study`), parsed and checked into a :class:`Study`."""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from util.config import CHOICES, ConfigError

CONTRAST_KINDS = {
    "a": "equivariant without augmentation vs plain with flips_rot90 (does equivariance replace augmentation?)",
    "b": "equivariant vs plain, both without augmentation (what does the architecture alone give?)",
    "c": "equivariant with vs without augmentation (does augmentation still help an equivariant net?)",
}
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass(frozen=True)
class Arm:
    """One model + augmentation recipe; ``match_params`` names the arm whose parameter count it is narrowed to."""

    label: str
    model: str
    kwargs: Mapping[str, Any]
    preset: str
    comparison: str
    match_params: str | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Contrast:
    """``arm`` minus ``vs`` (paired by seed and test image); ``kind`` is a, b or c (:data:`CONTRAST_KINDS`)."""

    kind: str
    arm: str
    vs: str
    match: str = ""


@dataclass
class Study:
    """A parsed study file (see the schema in :mod:`util.study`)."""

    name: str
    path: Path
    base: Path
    overrides: dict[str, Any]
    max_steps: int
    val_every_steps: int | None
    arms: list[Arm]
    fractions: list[float]
    seeds: list[int]
    lr_values: list[float]
    lr_fraction: float
    lr_seed: int
    contrasts: list[Contrast]
    target_mf1: float | None
    bootstrap_replicates: int
    bootstrap_seed: int
    runs_dir: Path
    results_dir: Path
    figures_dir: Path
    numerics: str | None = None  #: util.numerics mode every training runs under (None: the shell's settings)

    @property
    def study_runs(self) -> Path:
        """``<runs_dir>/<study>``: run folders, their configs and logs (not committed)."""
        return self.runs_dir / self.name

    @property
    def study_results(self) -> Path:
        """``<results_dir>/<study>``: ``runs.csv``, ``points/``, ``summary.csv``, ``README.md`` (committed)."""
        return self.results_dir / self.name

    @property
    def study_figures(self) -> Path:
        return self.figures_dir / self.name

    def arm(self, label: str) -> Arm:
        for a in self.arms:
            if a.label == label:
                return a
        raise KeyError(label)


# =========================================================================================== parsing
def load_study(path: str | Path) -> Study:
    """Parse and check a study YAML file (schema in :mod:`util.study`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study file not found: {path}")
    doc = _read_doc(path)
    known = {"study", "base", "overrides", "budget", "arms", "fractions", "seeds", "lr_search", "contrasts",
             "target_mf1", "bootstrap", "runs_dir", "results_dir", "figures_dir", "description", "numerics",
             "extends"}
    if doc.get("extends"):
        doc = _extend(doc, path)
    unknown = sorted(set(doc) - known)  # after extends: the extended file's keys are checked too
    if unknown:
        raise ConfigError(f"{path}: unknown study keys {unknown}; known: {sorted(known)}")
    numerics = doc.get("numerics")
    if numerics is not None:
        from util.numerics import MODES

        if numerics not in MODES:
            raise ConfigError(f"{path}: numerics {numerics!r} is not a mode of util.numerics; expected one of "
                              f"{', '.join(MODES)}")
    name = _required(doc, "study", path)
    if not _LABEL.match(str(name)):
        raise ConfigError(f"{path}: study name {name!r} must be letters, digits, '_', '-', '.'")
    base = (path.parent / _required(doc, "base", path)).resolve()
    budget = doc.get("budget") or {}
    if "max_steps" not in budget:
        raise ConfigError(f"{path}: budget.max_steps is required (every arm trains for the same number of steps)")
    lr = doc.get("lr_search") or {}
    boot = doc.get("bootstrap") or {}
    study = Study(
        name=str(name), path=path, base=base, overrides=_overrides(doc.get("overrides"), path),
        max_steps=int(budget["max_steps"]),
        val_every_steps=int(budget["val_every_steps"]) if budget.get("val_every_steps") else None,
        arms=[_arm(a, path) for a in _required(doc, "arms", path)],
        fractions=[float(f) for f in doc.get("fractions", [1.0])],
        seeds=[int(s) for s in doc.get("seeds", [0])],
        lr_values=[float(v) for v in lr.get("values", [])],
        lr_fraction=float(lr.get("fraction", 1.0)), lr_seed=int(lr.get("seed", 0)),
        contrasts=[_contrast(c, path) for c in doc.get("contrasts") or []],
        target_mf1=float(doc["target_mf1"]) if doc.get("target_mf1") is not None else None,
        bootstrap_replicates=int(boot.get("replicates", 2000)), bootstrap_seed=int(boot.get("seed", 0)),
        runs_dir=Path(doc.get("runs_dir", "runs")), results_dir=Path(doc.get("results_dir", "results")),
        figures_dir=Path(doc.get("figures_dir", "visualization")),
        numerics=str(numerics) if numerics is not None else None,
    )
    _check(study)
    return study


def _read_doc(path: Path) -> dict:
    doc = yaml.safe_load(path.read_text()) or {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return doc


def _extend(doc: dict, path: Path) -> dict:
    """``extends: other.yaml``: that study file's top-level keys, each replaced whole by this file's (its
    ``base`` still relative to that file). One level: the extended file may not extend another."""
    parent_path = (path.parent / str(doc["extends"])).resolve()
    if not parent_path.is_file():
        raise ConfigError(f"{path}: extends {doc['extends']!r}, but {parent_path} does not exist")
    parent = _read_doc(parent_path)
    if parent.get("extends"):
        raise ConfigError(f"{path}: extends {parent_path}, which extends another file; extend that one directly")
    if "base" in parent:
        parent["base"] = str((parent_path.parent / str(parent["base"])).resolve())
    merged = {**parent, **{k: v for k, v in doc.items() if k != "extends"}}
    if "base" in doc:
        merged["base"] = str((path.parent / str(doc["base"])).resolve())
    return merged


def _required(doc: dict, key: str, path: Path) -> Any:
    if doc.get(key) in (None, "", []):
        raise ConfigError(f"{path}: '{key}' is required")
    return doc[key]


def _overrides(value: Any, path: Path) -> dict[str, Any]:
    """A nested mapping (like a config file) or a list of ``key=value`` strings, as a nested mapping."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return copy.deepcopy(value)
    if isinstance(value, list):
        out: dict[str, Any] = {}
        for item in value:
            if not isinstance(item, str) or "=" not in item:
                raise ConfigError(f"{path}: override {item!r} is not of the form key=value")
            key, text = item.split("=", 1)
            target = out
            parts = key.strip().split(".")
            for p in parts[:-1]:
                target = target.setdefault(p, {})
            target[parts[-1]] = yaml.safe_load(text) if text.strip() else ""
        return out
    raise ConfigError(f"{path}: overrides must be a mapping or a list of key=value strings")


def _arm(doc: Any, path: Path) -> Arm:
    if not isinstance(doc, dict) or "label" not in doc:
        raise ConfigError(f"{path}: every arm needs a 'label' (got {doc!r})")
    unknown = sorted(set(doc) - {"label", "model", "preset", "match_params", "comparison", "overrides"})
    if unknown:
        raise ConfigError(f"{path}: arm {doc['label']!r}: unknown keys {unknown}")
    model = doc.get("model") or {}
    match = doc.get("match_params")
    return Arm(label=str(doc["label"]), model=str(model.get("name", "")), kwargs=dict(model.get("kwargs") or {}),
               preset=str(doc.get("preset", "")), match_params=str(match) if match else None,
               comparison=str(doc.get("comparison") or (f"equal_params:{match}" if match else "equal_compute")),
               overrides=_overrides(doc.get("overrides"), path))


def _contrast(doc: Any, path: Path) -> Contrast:
    if not isinstance(doc, dict) or not {"kind", "arm", "vs"} <= set(doc):
        raise ConfigError(f"{path}: a contrast needs kind, arm and vs (got {doc!r})")
    return Contrast(kind=str(doc["kind"]), arm=str(doc["arm"]), vs=str(doc["vs"]), match=str(doc.get("match", "")))


def _check(s: Study) -> None:
    labels = [a.label for a in s.arms]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"{s.path}: arm labels must be unique, got {labels}")
    for a in s.arms:
        if not _LABEL.match(a.label):
            raise ConfigError(f"{s.path}: arm label {a.label!r} must be letters, digits, '_', '-', '.', '+'")
        if a.preset and a.preset not in CHOICES["data.preset"]:
            raise ConfigError(f"{s.path}: arm {a.label}: preset {a.preset!r} not in {CHOICES['data.preset']}")
        if s.lr_values and "learning_rate" in a.overrides:
            raise ConfigError(f"{s.path}: arm {a.label}: overrides sets learning_rate, but lr_search chooses it; "
                              "drop one (a fixed per-arm rate is for studies without lr_search)")
        if a.match_params is not None:
            if a.match_params not in labels or s.arm(a.match_params).match_params is not None:
                raise ConfigError(f"{s.path}: arm {a.label}: match_params must name an arm without match_params")
    for c in s.contrasts:
        if c.kind not in CONTRAST_KINDS or c.arm not in labels or c.vs not in labels:
            raise ConfigError(f"{s.path}: contrast {c}: kind must be a, b or c and arm/vs must be arm labels")
    if not s.fractions or any(not 0 < f <= 1 for f in s.fractions):
        raise ConfigError(f"{s.path}: fractions must be in (0, 1], got {s.fractions}")
    if not s.seeds or len(set(s.seeds)) != len(s.seeds):
        raise ConfigError(f"{s.path}: seeds must be a non-empty list of distinct integers, got {s.seeds}")
    if s.max_steps < 1:
        raise ConfigError(f"{s.path}: budget.max_steps must be >= 1")
