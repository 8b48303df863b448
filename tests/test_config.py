"""ExperimentConfig ⇄ YAML ⇄ key=value overrides ⇄ papermill parameters, validation messages, grids."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

import pytest
import yaml

from util.config import (ConfigError, ExperimentConfig, apply_overrides, expand_grid, flatten_dict, grid_point,
                         load_config)
from util.dataloader import DataConfig

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def papermill_parameters(config_path: str | Path | None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The flat dict of plain values passed to a notebook with ``papermill -p`` / ``parameters=``.

    Validates eagerly so a bad override fails before a job is queued.
    """
    load_config(config_path, overrides)
    return {"config_path": str(config_path) if config_path else "", "overrides": [str(o) for o in overrides]}


def config_from_parameters(config_path: str | None = None, overrides: Sequence[str] | str = ()) \
        -> ExperimentConfig:
    """Inverse of :func:`papermill_parameters` (what a notebook's first cell would call)."""
    return load_config(config_path or None, overrides)


def test_defaults_and_shipped_configs_load():
    cfg = ExperimentConfig()
    assert isinstance(cfg.data, DataConfig)
    for name in ("default.yaml", "tiny.yaml", "grid_example.yaml"):
        c = load_config(CONFIGS / name)
        assert isinstance(c, ExperimentConfig)
    tiny = load_config(CONFIGS / "tiny.yaml")
    default = load_config(CONFIGS / "default.yaml")
    # tiny inherits from default (base:) and overrides a few keys
    assert tiny.model.kwargs == {"width": 4, "depth": 2}
    assert tiny.optimizer == default.optimizer and tiny.detection == default.detection


def test_overrides_are_typed_and_nested():
    cfg = load_config(None, ["learning_rate=1e-3", "data.crop_size=128", "model.name=escnn_unet",
                             "model.kwargs.group=C8", "model.kwargs.width=12", "max_steps=50", "tta=true",
                             "devices=2", "class_weights=[1, 2.5, 3]", "eval_transforms=[rot90]",
                             "data.manifest_dir=null", "name=7"])
    assert cfg.learning_rate == 1e-3 and isinstance(cfg.learning_rate, float)
    assert cfg.data.crop_size == 128 and isinstance(cfg.data.crop_size, int)
    assert cfg.model.name == "escnn_unet"
    assert cfg.model.kwargs["group"] == "C8" and cfg.model.kwargs["width"] == 12
    assert cfg.max_steps == 50 and cfg.tta is True and cfg.devices == 2
    assert cfg.class_weights == [1.0, 2.5, 3.0]
    assert cfg.eval_transforms == ["rot90"]
    assert cfg.name == "7"
    assert load_config(None, ["data.crop_size=null"]).data.crop_size is None
    assert load_config(None, ["devices=auto"]).devices == "auto"


def test_unknown_key_suggests_nearest():
    with pytest.raises(ConfigError, match=r"unknown config key 'lerning_rate'.*did you mean 'learning_rate'"):
        load_config(None, ["lerning_rate=0.1"])
    with pytest.raises(ConfigError, match=r"data\.crop_sise.*did you mean 'data\.crop_size'"):
        load_config(None, ["data.crop_sise=64"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["learning_rate"])


@pytest.mark.parametrize("override, message", [
    ("learning_rate=abc", r"learning_rate='abc'.*expected float"),
    ("data.batch_size=two", r"data\.batch_size='two'.*expected int"),
    ("epochs=1.5", r"epochs='1\.5'.*expected int"),
    ("tta=3", r"tta='3'.*expected bool"),
    ("optimizer=adamx", r"optimizer='adamx'.*adam, adamw, sgd"),
    ("learning_rate=-1", r"learning_rate=-1\.0.*> 0"),
])
def test_wrong_type_names_key_value_and_type(override: str, message: str):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_yaml_errors_name_the_file_and_key(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("learning_rat: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*'learning_rat'.*learning_rate"):
        load_config(p)
    p.write_text("data:\n  batch_size: many\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*data\.batch_size='many'.*expected int"):
        load_config(p)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_comet_key_is_never_a_config_value():
    with pytest.raises(ConfigError, match="COMET_API_KEY"):
        load_config(None, ["comet_api_key=abc"])
    assert "api_key" not in ExperimentConfig().to_yaml()


def test_yaml_round_trip(tmp_path):
    cfg = load_config(CONFIGS / "default.yaml", ["model.kwargs.group=D4", "learning_rate=5e-4"])
    cfg.save(tmp_path / "c.yaml")
    back = load_config(tmp_path / "c.yaml")
    assert back == cfg
    assert back.config_hash() == cfg.config_hash()
    assert yaml.safe_load((tmp_path / "c.yaml").read_text())["learning_rate"] == 5e-4
    # the hash ignores where a run is written, but not what it computes
    assert cfg.replace(["runs_dir=/elsewhere"]).config_hash() == cfg.config_hash()
    assert cfg.replace(["seed=1"]).config_hash() != cfg.config_hash()


def test_papermill_parameters_round_trip():
    params = papermill_parameters("configs/default.yaml", ["learning_rate=1e-3", "data.crop_size=64"])
    assert params == {"config_path": "configs/default.yaml", "overrides": ["learning_rate=1e-3", "data.crop_size=64"]}
    assert all(isinstance(v, (str, list)) for v in params.values())
    cfg = config_from_parameters(str(CONFIGS / "default.yaml"), params["overrides"])
    assert cfg.learning_rate == 1e-3 and cfg.data.crop_size == 64
    # a single string of overrides (what a notebook parameter cell may hold) works too
    assert config_from_parameters("", "learning_rate=2e-3 seed=4").seed == 4
    with pytest.raises(ConfigError, match="lerning_rate"):
        papermill_parameters(None, ["lerning_rate=1"])


def test_grid_expansion():
    cfg = load_config(CONFIGS / "grid_example.yaml")
    points = expand_grid(cfg)
    assert len(points) == 2 * 2 * 2 * 2
    assert len({p.run_id for p in points}) == len(points)
    assert all(p.grid is None and p.name == "grid_example" for p in points)
    p = grid_point(cfg, 13)  # moment_unet, flips_rot90, 0.5, seed 1 (last key fastest)
    assert p.model.name == "moment_unet" and p.model.kwargs == {"width": 8, "depth": 3, "group": "D4"}
    assert p.data.preset == "flips_rot90" and p.data.subset_fraction == 0.5 and p.seed == 1
    assert p.learning_rate == cfg.learning_rate  # everything else comes from the base config
    assert points[0].model.kwargs == {"width": 8, "depth": 3}  # kwargs replaced, not merged with group
    with pytest.raises(ConfigError, match="out of range.*16 points"):
        grid_point(cfg, 16)
    assert expand_grid(load_config(CONFIGS / "default.yaml")) == [load_config(CONFIGS / "default.yaml")]
    bad = load_config(None)
    bad.grid = {"lerning_rate": [1.0]}
    with pytest.raises(ConfigError, match="learning_rate"):
        expand_grid(bad)


def test_apply_overrides_validates_in_place():
    cfg = ExperimentConfig()
    apply_overrides(cfg, ["seed=3"])
    assert cfg.seed == 3
    with pytest.raises(ConfigError):
        apply_overrides(cfg, ["data.subset_fraction=1.5"])


def test_flatten_dict_joins_keys_and_writes_lists_as_json():
    nested = {"model": {"name": "unet", "kwargs": {"width": 8}}, "eval_transforms": ["rot90", "flip"], "seed": 0}
    assert flatten_dict(nested) == {"model.name": "unet", "model.kwargs.width": 8,
                                    "eval_transforms": '["rot90", "flip"]', "seed": 0}
    assert flatten_dict({"a": {}}, prefix="cfg.") == {}


@pytest.mark.parametrize("config", ["configs/default.yaml", "configs/tiny.yaml", "configs/grid_example.yaml"])
def test_loading_a_config_imports_neither_torch_nor_cv2_nor_albumentations(config: str):
    code = ("import sys; from util.config import load_config; load_config(%r); "
            "heavy = {'torch', 'cv2', 'albumentations'} & set(sys.modules); assert not heavy, heavy" % config)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_model_facts_read_from_source_match_the_model_package():
    """Without torch, model names and default depths come from model/'s source; they agree with the package."""
    code = ("import json; from util.model_registry import default_depth, model_names; "
            "print(json.dumps({n: default_depth(n) for n in model_names()}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from_source = yaml.safe_load(proc.stdout)
    from model import list_models, model_keywords

    # other tests may have added models to the live registry (model.register_model); the source knows the shipped ones
    assert {"unet", "moment_unet", "escnn_unet"} <= set(from_source) <= set(list_models())
    for name in from_source:
        p = (model_keywords(name) or {}).get("depth")
        assert from_source[name] == (p.default if p is not None and isinstance(p.default, int) else None), name


def test_a_bad_model_name_or_crop_size_is_caught_without_torch():
    code = ("import sys; from util.config import ConfigError, load_config\n"
            "for o in (['model.name=unett'], ['model.kwargs={}', 'data.crop_size=100']):\n"
            "    try: load_config(None, o)\n"
            "    except ConfigError as e: print(e)\n"
            "assert 'torch' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "did you mean 'unet'" in proc.stdout
    assert "data.crop_size=100: expected a multiple of 16 (2**depth, depth=4 from the default depth of 'unet')" \
        in proc.stdout
