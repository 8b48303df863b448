"""Run folders: where a run lives, its provenance (git commit, packages, device), failure marks."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from util.config import ExperimentConfig, load_config
from util.files import atomic_write
from util.training.checkpoints import _checkpoint_step


@dataclass
class RunResult:
    """What :func:`train` returns."""

    run_dir: Path
    config: ExperimentConfig
    metrics: dict[str, Any] = field(default_factory=dict)
    best_checkpoint: Path | None = None
    last_checkpoint: Path | None = None
    stopped_by_signal: bool = False



def resolve_run_dir(cfg: ExperimentConfig) -> Path:
    """``<runs_dir>/<name>/<run_id>``: ``run_id`` defaults to ``<model>-s<seed>-<config hash>`` so rerunning the
    same command finds the same folder (and resumes); ``resume=never`` picks a fresh ``-N`` suffix."""
    env = os.environ.get("OCELOT_RUN_DIR")
    if env:  # set by rank 0 for DDP worker processes
        return Path(env)
    base = Path(cfg.runs_dir) / cfg.name
    run_id = cfg.run_id or f"{cfg.model.name}-s{cfg.seed}-{cfg.config_hash()}"
    run_dir = base / run_id
    if cfg.resume == "never" and run_dir.exists():
        k = 2
        while (base / f"{run_id}-{k}").exists():
            k += 1
        run_dir = base / f"{run_id}-{k}"
    return run_dir



#: git pathspecs that :func:`git_commit` leaves out of "dirty" (relative to the repository root)
GIT_DIRTY_IGNORES = (":(top,exclude)results", ":(top,exclude)runs", ":(top,exclude)visualization",
                     ":(top,exclude,glob)**/*.md")


def git_commit(repo: Path | None = None) -> dict[str, Any]:
    """``{"commit": HEAD sha, "dirty": whether the code differs from it}`` of the repository at ``repo`` (default:
    this project's root); None values where git cannot say.

    "Dirty" looks at the whole working tree (``model/``, ``util/``, ``configs/``, notebooks, ...), except what
    cannot change a training's result: study results (``results/``), run folders (``runs/``), figures
    (``visualization/``) and Markdown files.
    """
    repo = repo or Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", ":/", *GIT_DIRTY_IGNORES],
                               cwd=repo, capture_output=True, text=True, timeout=10)
        return {"commit": sha.stdout.strip() if sha.returncode == 0 else None,
                "dirty": bool(dirty.stdout.strip()) if dirty.returncode == 0 else None}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def cpu_model() -> str | None:
    """The CPU's model name from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere); None when unknown."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


# Environment variables that change CPU floating-point results without changing any package: the instruction
# set of PyTorch's own kernels (ATen), of oneDNN's convolutions, of MKL's matrix products and exp/log and of
# OpenCV's image operations (the augmentations).
# NUMERICS_EXACT_SQRT: correctly rounded square roots in the training process (util.numerics, the portable modes).
NUMERICS_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_CBWR",
                      "MKL_ENABLE_INSTRUCTIONS", "MKL_DEBUG_CPU_TYPE", "OPENCV_CPU_DISABLE", "NUMERICS_EXACT_SQRT")


def environment_info() -> dict[str, Any]:
    """Package versions, git commit, device (of the environment variables only the :data:`NUMERICS_VARIABLES`
    that are set, so no secrets)."""
    from importlib import metadata

    pkgs = {}
    for name in ("torch", "lightning", "monai", "torchmetrics", "numpy", "scipy", "albumentations", "escnn", "e2cnn",
                 "comet_ml", "pyyaml", "pandas", "opencv-python-headless", "albucore"):
        try:
            pkgs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pkgs[name] = None
    dev: dict[str, Any] = {"cuda": torch.cuda.is_available(), "cpu_threads": torch.get_num_threads(),
                           "cpu_count": os.cpu_count(), "cpu_model": cpu_model(),
                           # the instruction set PyTorch's CPU kernels dispatch to (AVX2, AVX512, ...): another
                           # one gives other floating-point results, so a rerun elsewhere need not be bit-identical
                           "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                           "numerics_settings": {k: os.environ[k] for k in NUMERICS_VARIABLES if k in os.environ}}
    if torch.cuda.is_available():
        dev["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {"python": sys.version.split()[0], "platform": platform.platform(), "packages": pkgs,
            "git": git_commit(), "device": dev,
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "hostname": platform.node()}



#: Written into a run folder when its training or evaluation fails (the reason); removed when the run finishes.
FAILED_FILE = "failed.json"



def _mark_failed(run_dir: Path, error: BaseException) -> None:
    step = None
    last = run_dir / "checkpoints" / "last.ckpt"
    try:
        step = _checkpoint_step(last) if last.is_file() else None
    except RuntimeError:
        pass
    doc = {"error": type(error).__name__, "message": str(error), "last_checkpoint_step": step,
           "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        atomic_write(run_dir / FAILED_FILE, json.dumps(doc, indent=2))
    except OSError:
        pass



def _prepare_run_dir(cfg: ExperimentConfig, run_dir: Path) -> None:
    """Create the folder; refuse to resume into a folder that holds a different config."""
    cfg_path = run_dir / "config.yaml"
    if cfg_path.is_file() and cfg.resume == "auto":
        try:
            old = load_config(cfg_path)
        except Exception:  # noqa: BLE001
            old = None
        if old is not None and old.config_hash() != cfg.config_hash():
            raise ValueError(f"run folder {run_dir} holds a run with a different configuration "
                             f"(config hash {old.config_hash()} vs {cfg.config_hash()}); use another run_id, "
                             f"or resume=never for a fresh folder")
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    cfg_to_save = ExperimentConfig.from_dict(cfg.to_dict())
    cfg_to_save.run_id = run_dir.name
    if cfg_to_save.data.manifest_dir is None:
        cfg_to_save.data.manifest_dir = str(run_dir)
    atomic_write(cfg_path, cfg_to_save.to_yaml())
    atomic_write(run_dir / "env.json", json.dumps(environment_info(), indent=2))



def _json_clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj
