"""``train.sh``'s run plan: from the config, the overrides and the Slurm environment, the run folder and the one
command the job runs (papermill on ``v1_0.ipynb``, or ``srun python -m util.train`` for several tasks).

The run folder comes from :func:`util.training.resolve_run_dir`: it depends only on the configuration, so a
requeued job finds its folder again and resumes. Every problem of the config or the overrides is found here,
before anything runs (:class:`PlanError`, shown as ``train.sh: <message>`` with exit code 2).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

PROG = "train.sh"
NOTEBOOK = "v1_0.ipynb"


class PlanError(ValueError):
    """The config, an override or a Slurm variable cannot be used; the message names it."""


@dataclass(frozen=True)
class Plan:
    """What one ``train.sh`` job runs."""

    run_dir: str  #: the run folder (runs/<name>/<run-id>)
    command: list[str]  #: the training command
    notebook: str | None  #: the executed notebook papermill writes; None when the command is srun

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        """The plan :meth:`to_json` wrote; :class:`PlanError` naming what is wrong otherwise."""
        try:
            data = json.loads(text)
            plan = cls(run_dir=data["run_dir"], command=data["command"], notebook=data["notebook"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise PlanError(f"not a plan from `python -m util.cluster plan` ({type(e).__name__}: {e}): "
                            f"{text[:200]!r}") from None
        if not isinstance(plan.command, list) or not plan.command or \
                not all(isinstance(a, str) for a in plan.command):
            raise PlanError(f"the plan's command must be a non-empty list of strings, got {plan.command!r}")
        return plan


def whole_number(env: Mapping[str, str], name: str, default: int | None = None) -> int | None:
    """``env[name]`` as an int (``default`` when unset or empty); :class:`PlanError` naming a bad value."""
    value = env.get(name, "")
    if value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise PlanError(f"{name}={value!r} is not a whole number") from None


def make_plan(config_path: str, overrides: Sequence[str], env: Mapping[str, str], repo_dir: Path) -> Plan:
    """The plan for ``train.sh CONFIG key=value ...`` run from ``repo_dir`` with the environment ``env``.

    ``SLURM_ARRAY_TASK_ID`` picks the grid point; ``SLURM_NTASKS`` > 1 gives ``srun python -m util.train``
    (``SLURM_NTASKS_PER_NODE`` devices on ``SLURM_JOB_NUM_NODES`` nodes, DDP); otherwise papermill runs the
    notebook with the kernel ``KERNEL`` (default python3). ``resume=never`` is pinned to the fresh run folder it
    picks (``run_id=<it> resume=auto``), so that the notebook and a requeued job use that folder.
    """
    if not Path(config_path).is_file():
        raise PlanError(f"config file '{config_path}' not found")
    grid_index = whole_number(env, "SLURM_ARRAY_TASK_ID")
    ntasks = whole_number(env, "SLURM_NTASKS", 1)

    from util.config import ConfigError, grid_point, load_config
    from util.training import resolve_run_dir

    overrides = list(overrides)
    try:
        cfg = load_config(config_path, overrides)
        if grid_index is not None:
            cfg = grid_point(cfg, grid_index)
        elif cfg.grid:
            raise PlanError(f"{config_path} is a grid config: submit it as an array job "
                            f"(sbatch --array=0-N train.sh {config_path})")
        run_dir = resolve_run_dir(cfg)
    except (ConfigError, ValueError) as e:
        raise PlanError(str(e)) from None
    if cfg.resume == "never":
        if grid_index is not None:
            raise PlanError("resume=never is not supported for array jobs: each grid point has its own folder; "
                            "change name= for a fresh set of runs")
        overrides += [f"run_id={run_dir.name}", "resume=auto"]

    if ntasks > 1:
        grid_args = ["--grid-index", str(grid_index)] if grid_index is not None else []
        devices = env.get("SLURM_NTASKS_PER_NODE") or str(ntasks)
        nodes = env.get("SLURM_JOB_NUM_NODES") or "1"
        command = ["srun", "--kill-on-bad-exit=1", "python", "-m", "util.train", config_path, *overrides,
                   *grid_args, f"devices={devices}", f"num_nodes={nodes}", "strategy=ddp"]
        return Plan(str(run_dir), command, None)
    notebook = str(run_dir / NOTEBOOK)
    params = {"config_path": config_path, "overrides": overrides, "grid_index": grid_index}
    command = ["python", "-m", "papermill", NOTEBOOK, notebook, "-k", env.get("KERNEL") or "python3",
               "--cwd", str(repo_dir), "-y", json.dumps(params), "--log-output", "--no-progress-bar"]
    return Plan(str(run_dir), command, notebook)
