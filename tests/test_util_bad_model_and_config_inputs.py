"""Bad model keywords, model inputs and config values are refused with a message naming the key or value.

One section per mechanism, each a parametrised table of cases (data sets and output folders:
``test_bad_inputs.py``):

* model keyword arguments: ``model.build_model``
* model inputs: ``model.contract`` (every U-Net's forward)
* config values: ``util.config.validate``
"""
from __future__ import annotations

from typing import Any, Callable

import pytest
import torch

from tests.conftest import REPO


# =============================================================================================== model keywords
#: case id → (model name, keyword arguments, strings the error must hold)
KWARG_CASES: dict[str, tuple[str, dict[str, Any], list[str]]] = {
    "misspelt_width": ("unet", {"widht": 4}, ["'unet'", "'widht'", "did you mean 'width'?", "Valid keywords:",
                                              "depth", "in_channels"]),
    "misspelt_group": ("moment_unet", {"gruop": "D4"}, ["'moment_unet'", "'gruop'", "did you mean 'group'?"]),
    "unknown_no_suggestion": ("unet", {"zzz": 1}, ["'zzz'", "Valid keywords:"]),
    "width_string": ("unet", {"width": "a"}, ["width='a'", "expected float"]),
    "depth_float": ("unet", {"depth": 2.5}, ["depth=2.5", "expected int"]),
    "depth_bool": ("unet", {"depth": True}, ["depth=True", "expected int"]),
    "group_int": ("moment_unet", {"group": 5}, ["'moment_unet'", "group=5", "expected str"]),
    "pad_string": ("unet", {"pad": "yes"}, ["pad='yes'", "expected bool"]),
}


@pytest.mark.parametrize("case", list(KWARG_CASES))
def test_model_kwargs_are_checked(case: str) -> None:
    from model import ModelArgumentError, build_model

    name, kwargs, needles = KWARG_CASES[case]
    with pytest.raises(ModelArgumentError) as err:
        build_model(name, **kwargs)
    assert isinstance(err.value, TypeError) and isinstance(err.value, ValueError)
    assert all(n in str(err.value) for n in needles), str(err.value)


def test_subclass_with_kwargs_passthrough_is_checked_through_its_parent() -> None:
    from model import ModelArgumentError, build_model, register_model
    from model.unet import UNet

    class Sub(UNet):
        def __init__(self, extra: int = 0, **kw):
            super().__init__(**kw)

    register_model("bad_inputs_sub", Sub)
    assert build_model("bad_inputs_sub", extra=1, width=2, depth=1).depth == 1
    with pytest.raises(ModelArgumentError, match=r"'widht'.*did you mean 'width'"):
        build_model("bad_inputs_sub", widht=2)


# =============================================================================================== model inputs
def _nan() -> torch.Tensor:
    x = torch.rand(1, 3, 16, 16)
    x[0, 1, 2, 3] = float("nan")
    return x


def _inf() -> torch.Tensor:
    x = torch.rand(2, 3, 16, 16)
    x[1, 0, 0, 0] = float("-inf")
    return x


#: case id → (input, exception type, strings the message must hold)
INPUT_CASES: dict[str, tuple[Callable[[], Any], type, list[str]]] = {
    "nan": (_nan, ValueError, ["non-finite", "1 NaN", "(0, 1, 2, 3)"]),
    "inf": (_inf, ValueError, ["non-finite", "1 inf", "(1, 0, 0, 0)"]),
    "rank_3": (lambda: torch.rand(3, 16, 16), ValueError, ["4-D input", "3-D", "(3, 16, 16)"]),
    "rank_5": (lambda: torch.rand(1, 1, 3, 16, 16), ValueError, ["4-D input", "5-D"]),
    "int_dtype": (lambda: torch.randint(0, 255, (1, 3, 16, 16), dtype=torch.uint8), TypeError,
                  ["floating-point", "torch.uint8"]),
    "wrong_channels": (lambda: torch.rand(1, 4, 16, 16), ValueError, ["expected 3 input channels", "got 4"]),
    "not_a_tensor": (lambda: [[1.0]], TypeError, ["torch.Tensor", "list"]),
    "size_not_multiple": (lambda: torch.rand(1, 3, 9, 16), ValueError, ["9x16", "multiple of 2"]),
}


@pytest.mark.parametrize("case", list(INPUT_CASES))
def test_model_input_contract(case: str) -> None:
    from model.unet import UNet

    make, exc, needles = INPUT_CASES[case]
    with pytest.raises(exc) as err:
        UNet(width=2, depth=1)(make())
    assert all(n in str(err.value) for n in needles), str(err.value)
    assert "UNet" in str(err.value)


def test_finiteness_check_can_be_switched_off() -> None:
    from model.unet import UNet

    net = UNet(width=2, depth=1).eval()
    net.check_finite = False
    assert net(_nan()).shape == (1, 3, 16, 16)


# =============================================================================================== config values
#: case id → (overrides of configs/default.yaml (unet, depth 4), strings the ConfigError must hold)
CONFIG_CASES: dict[str, tuple[list[str], list[str]]] = {
    "crop_not_multiple": (["data.crop_size=100"], ["data.crop_size=100", "multiple of 16", "depth=4",
                                                   "model.kwargs.depth", "96 or 112"]),
    "crop_not_multiple_default_depth": (["model.kwargs={width: 8}", "data.crop_size=40"],
                                        ["data.crop_size=40", "multiple of 16", "default depth of 'unet'"]),
    "crop_zero": (["data.crop_size=0"], ["data.crop_size=0", "> 0"]),
    "mask_radius_zero": (["data.mask_radius_um=0"], ["data.mask_radius_um=0.0", "> 0"]),
    "mask_radius_nan": (["data.mask_radius_um=nan"], ["data.mask_radius_um=nan", "finite"]),
    "tile_size_8": (["inference.tile_size=8"], ["inference.tile_size=8", "at least 16"]),
    "learning_rate_huge": (["learning_rate=1e30"], ["learning_rate=1e+30", "<= 1"]),
    "learning_rate_inf": (["learning_rate=inf"], ["learning_rate=inf", "finite"]),
    "grad_clip_zero": (["grad_clip=0"], ["grad_clip=0.0", "null or a finite number > 0"]),
    "warmup_negative": (["warmup_steps=-1"], ["warmup_steps=-1", ">= 0"]),
    "target_mf1_above_1": (["target_mf1=1.5"], ["target_mf1=1.5", "[0, 1]"]),
    "threshold_2": (["detection.threshold=2"], ["detection.threshold=2.0", "[0, 1]"]),
    "depth_zero": (["model.kwargs.depth=0"], ["model.kwargs.depth=0", ">= 1"]),
    "unknown_model": (["model.name=unett"], ["model.name='unett'", "did you mean 'unet'?"]),
    "num_workers_negative": (["data.num_workers=-2"], ["data.num_workers=-2", ">= 0"]),
    "class_weights_negative": (["class_weights=[1, -1, 1]"], ["class_weights=[1.0, -1.0, 1.0]", ">= 0"]),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_config_value_is_range_checked(case: str) -> None:
    from util.config import ConfigError, load_config

    overrides, needles = CONFIG_CASES[case]
    with pytest.raises(ConfigError) as err:
        load_config(REPO / "configs" / "default.yaml", overrides)
    assert all(n in str(err.value) for n in needles), str(err.value)


def test_config_edge_values_are_accepted() -> None:
    from util.config import load_config

    cfg = load_config(REPO / "configs" / "default.yaml",
                      ["data.crop_size=null", "inference.tile_size=16", "learning_rate=1", "grad_clip=null",
                       "warmup_steps=0", "target_mf1=null", "detection.threshold=0"])
    assert cfg.inference.tile_size == 16 and cfg.grad_clip is None
