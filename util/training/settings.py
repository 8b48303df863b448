"""Trainer settings from the config and the environment: device, precision, DDP and Slurm."""
from __future__ import annotations

import os
import sys
from typing import Any

import torch

from util.config import ExperimentConfig
from util.training.checkpoints import AtomicCheckpointIO


def _under_slurm() -> bool:
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return SLURMEnvironment.detect()



def _slurm_tasks() -> int:
    try:
        return int(os.environ.get("SLURM_NTASKS", "1"))
    except ValueError:
        return 1



def trainer_settings(cfg: ExperimentConfig) -> dict[str, Any]:
    """Accelerator, devices, strategy, precision and cluster plugins for this machine/config."""
    gpu = torch.cuda.is_available() and cfg.accelerator in ("auto", "gpu", "cuda")
    accelerator = cfg.accelerator if cfg.accelerator != "auto" else ("gpu" if gpu else "cpu")
    precision = cfg.precision
    if precision == "auto":
        precision = ("bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed") if gpu else "32-true"
    elif precision in ("16-mixed", "bf16-mixed") and not gpu:
        print(f"precision={precision} needs a GPU; using 32-true on CPU", file=sys.stderr)
        precision = "32-true"
    devices = cfg.devices
    n_dev = devices if isinstance(devices, int) else (torch.cuda.device_count() if gpu else 1)
    plugins = []
    if _under_slurm():
        from lightning.fabric.plugins.environments import SLURMEnvironment

        # Slurm's ranks and nodes for DDP, without Lightning's own requeue: passing no environment would give
        # Lightning's default SLURMEnvironment(auto_requeue=True), whose SIGUSR1 handler writes hpc_ckpt_*.ckpt
        # and requeues the job. The one pre-emption path is train.sh's (util/cluster/supervise.py): the warning
        # becomes SIGTERM, StopCheckpoint writes checkpoints/last.ckpt, the job script requeues.
        plugins.append(SLURMEnvironment(auto_requeue=False))
    multi = n_dev * cfg.num_nodes > 1 or _slurm_tasks() > 1
    strategy = cfg.strategy
    if strategy == "auto" and multi:
        strategy = "ddp"
    return {"accelerator": accelerator, "devices": devices, "num_nodes": cfg.num_nodes, "strategy": strategy,
            "precision": precision, "plugins": plugins + [AtomicCheckpointIO()],
            "deterministic": True if (cfg.deterministic and accelerator == "cpu") else
            ("warn" if cfg.deterministic else False)}



def _world_size(settings: dict[str, Any]) -> int:
    d = settings["devices"]
    n = d if isinstance(d, int) else 1
    return max(n * settings["num_nodes"], _slurm_tasks() if _under_slurm() else 1)



def _env_rank() -> int:
    """Global rank of this process from the launcher's environment (0 when not launched as a worker)."""
    for var in ("RANK", "LOCAL_RANK"):
        if var in os.environ:
            try:
                return int(os.environ[var])
            except ValueError:
                pass
    if _under_slurm() and _slurm_tasks() > 1:
        return int(os.environ.get("SLURM_PROCID", "0"))
    return 0
