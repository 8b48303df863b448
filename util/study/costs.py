"""What a point costs: parameters, convolution MACs per pixel, and a time estimate from a short timing.

* MACs per pixel: ``torch.utils.flop_counter.FlopCounterMode`` over one eval-mode forward of a
  ``1×3×S×S`` input (``S`` = the training crop), counting only ``aten.convolution`` (FLOPs / 2 = multiply-
  accumulates), divided by ``S²``. Every model's convolutions are counted whatever builds them (``nn.Conv2d``,
  moment kernels, escnn ``R2Conv``); kernel assembly (a few small einsums per forward) is left out.
* Time: ``steps`` timed training steps (forward, cross-entropy, backward, AdamW) at the recipe's batch and
  crop after one warm-up step, the median kept; and one timed eval forward of a full evaluation image. A
  run's estimate is ``max_steps · t_step + n_forward · t_forward + startup``, with ``n_forward`` the
  validations during training, the threshold pass on validation, the test set and each transformed copy.
  Augmentation and data loading are not timed (arms that differ only in preset share one timing).
"""
from __future__ import annotations

import math
import statistics
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from util.config import ExperimentConfig

STARTUP_S = 20.0  #: interpreter, imports, model build and run-folder set-up of one ``util.train`` process


def macs_per_pixel(model: nn.Module, side: int, in_channels: int = 3) -> float:
    """Convolution multiply-accumulates per input pixel of one eval forward (``FlopCounterMode`` / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    p = next(model.parameters(), None)
    x = torch.randn(1, in_channels, side, side, device=p.device if p is not None else "cpu")
    with counter, torch.no_grad():
        model(x)
    model.train(was_training)
    flops = sum(v for op, v in counter.get_flop_counts().get("Global", {}).items() if "convolution" in str(op))
    return flops / 2 / (side * side)


def _median_s(fn: Callable[[], Any], repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_step_s(model: nn.Module, batch: int, side: int, repeats: int, device: torch.device) -> float:
    """Median wall seconds of one training step (forward, cross-entropy, backward, AdamW) on random data."""
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, side, side, device=device)
    y = torch.randint(0, 3, (batch, side, side), device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return _median_s(step, repeats, device)


@torch.no_grad()
def forward_s(model: nn.Module, side: int, repeats: int, device: torch.device) -> float:
    """Median wall seconds of one eval forward of a ``1×3×side×side`` input."""
    model.to(device).eval()
    x = torch.randn(1, 3, side, side, device=device)
    return _median_s(lambda: model(x), repeats, device)


def eval_images(cfg: ExperimentConfig) -> dict[str, Any]:
    """Number of validation and test images and the size of the first test image of the data root."""
    from PIL import Image

    from util.ocelot import find_image, list_ids

    root = cfg.data.root
    val, test = list_ids(root, "val"), list_ids(root, "test")
    path = find_image(root, "test", test[0]) if test else None
    w, h = Image.open(path).size if path else (cfg.data.crop_size or 256,) * 2
    return {"n_val": len(val), "n_test": len(test), "height": h, "width": w}


def forward_count(cfg: ExperimentConfig, n_val: int, n_test: int, val_every: int) -> int:
    """Full-image forwards of one run: validations during training, the threshold pass on validation, the
    test set and each transformed copy."""
    validations = max(1, cfg.max_steps // max(1, val_every)) if cfg.max_steps else cfg.epochs
    return validations * n_val + n_val + n_test * (1 + len(cfg.eval_transforms))


def val_every_steps(cfg: ExperimentConfig) -> int:
    """Steps between validations of this point (``val_every_n_epochs`` × steps per epoch)."""
    from util.dataloader import select_subset
    from util.ocelot import list_ids

    n = len(select_subset(list_ids(cfg.data.root, "train"), cfg.data.subset_fraction, cfg.data.subset_seed))
    return max(1, math.ceil(n / cfg.data.batch_size)) * cfg.val_every_n_epochs


def time_model(cfg: ExperimentConfig, images: dict[str, Any], steps: int, device: torch.device) -> dict[str, float]:
    """Build ``cfg``'s model and time it: ``{"s_per_step", "s_per_image", "build_s"}``."""
    from model import build_model

    t0 = time.perf_counter()
    model = build_model(cfg.model.name, **{**cfg.model.kwargs, "num_classes": 3})
    build = time.perf_counter() - t0
    mult = 2 ** int(cfg.model.kwargs.get("depth", 4))
    side_train = int(cfg.data.crop_size or 256)
    step = train_step_s(model, cfg.data.batch_size, side_train, steps, device)
    tile = cfg.inference.tile_size or max(images["height"], images["width"])
    side = max(mult, (min(tile, images["height"], images["width"]) // mult) * mult)
    fwd = forward_s(model, side, max(1, steps // 2), device) * images["height"] * images["width"] / side ** 2
    return {"s_per_step": step, "s_per_image": fwd, "build_s": build}


def estimate_run_s(cfg: ExperimentConfig, timing: dict[str, float], images: dict[str, Any], val_every: int) -> float:
    """``max_steps · t_step + forwards · t_image + build + startup`` (seconds)."""
    n = forward_count(cfg, images["n_val"], images["n_test"], val_every)
    return (cfg.max_steps or 0) * timing["s_per_step"] + n * timing["s_per_image"] + timing["build_s"] + STARTUP_S


def model_cost(cfg: ExperimentConfig) -> dict[str, float]:
    """``{"parameters", "macs_per_px"}`` of ``cfg``'s model (MACs at the training crop)."""
    from model import build_model, count_parameters

    model = build_model(cfg.model.name, **{**cfg.model.kwargs, "num_classes": 3})
    side = int(cfg.data.crop_size or 2 ** int(cfg.model.kwargs.get("depth", 4)) * 8)
    return {"parameters": count_parameters(model), "macs_per_px": macs_per_pixel(model, side)}


def model_key(cfg: ExperimentConfig) -> str:
    """Points whose models are built the same share costs and timings."""
    return f"{cfg.model.name}:{sorted(cfg.model.kwargs.items())}"
