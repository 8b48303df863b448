#!/usr/bin/env bash
#SBATCH --job-name=eqocelot
#SBATCH --time=24:00:00
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --output=logs/%x-%j.out
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#
# Train + evaluate one experiment by executing v1_0.ipynb headless with papermill; the executed notebook is
# saved in the run folder (runs/<name>/<run-id>/v1_0.ipynb) next to config, metrics and checkpoints.
#
# Usage:
#   bash train.sh [CONFIG] [key=value ...]                  run here (no Slurm needed)
#   sbatch [sbatch options] train.sh [CONFIG] [key=value ...]    submit from the repository root
#   sbatch --array=0-N train.sh configs/grid_example.yaml   task i runs point i of the grid
#   sbatch --ntasks-per-node=4 --gres=gpu:4 train.sh CONFIG  multi-GPU: srun python -m util.train
#   bash train.sh --help
#
#   CONFIG     a YAML file in configs/ (default: configs/default.yaml)
#   key=value  config overrides, e.g. model.name=escnn_unet learning_rate=1e-3 data.subset_fraction=0.25
#
# Options (before CONFIG):
#   --dry-run  print what would run (papermill command, run folder) and exit
#
# Every #SBATCH value above can be overridden on the sbatch command line, e.g.
#   sbatch --time=2:00:00 --partition=<partition> --account=<account> train.sh configs/x.yaml
#   sbatch --gres=none train.sh ...      (no GPU)
# sbatch needs the logs/ folder to exist (`mkdir -p logs`).
#
# Environment (all optional):
#   CONDA_ENV   name or path of a conda env to activate, or
#   VENV        path of a venv to activate (default: ./.venv when it exists; else the current python)
#   KERNEL      Jupyter kernel name for papermill (default: python3, the activated environment's python)
#
# Time limit: Slurm sends USR1 120 s before the limit; the job passes it to the training as SIGTERM, the
# training saves checkpoints/last.ckpt and stops, the job requeues itself and the requeued job resumes from
# that checkpoint (resume=auto, same run folder). scancel or Ctrl-C stops the training the same way (exit 143).
#
# Why multi-GPU runs do not use the notebook: data-parallel training starts one process per GPU (srun
# launches them and Lightning's DDP connects them); a notebook runs in a single Jupyter kernel process that
# cannot be replicated across ranks, so jobs with more than one task run `srun python -m util.train`
# (the same library entry point the notebook calls) instead. Ask for tasks with --ntasks-per-node (one per
# GPU; Lightning refuses a bare --ntasks) and as many GPUs (--gres=gpu:N).
set -euo pipefail
STARTED=$(date +%s)

# Under sbatch this file runs from a spool copy: the repository is then the submission folder.
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [[ -f $SCRIPT_DIR/v1_0.ipynb ]]; then
    REPO_DIR=$SCRIPT_DIR
else
    REPO_DIR=${SLURM_SUBMIT_DIR:-$PWD}
fi
cd "$REPO_DIR"
if [[ ! -f v1_0.ipynb || ! -f scripts/activate_env.sh ]]; then
    echo "train.sh: v1_0.ipynb not found in $REPO_DIR (submit from the repository root)" >&2
    exit 2
fi
# shellcheck source=scripts/activate_env.sh
source scripts/activate_env.sh

RUN_ARGS=(--started "$STARTED")
while [[ $# -gt 0 ]]; do
    case "$1" in
        -h | --help)
            print_usage "${BASH_SOURCE[0]}"
            exit 0
            ;;
        --dry-run) RUN_ARGS+=(--dry-run) ;;
        --) ;;
        -*)
            echo "train.sh: unknown option '$1' (see --help)" >&2
            exit 2
            ;;
        *) break ;;
    esac
    shift
done

CONFIG=configs/default.yaml
if [[ $# -gt 0 && $1 != *=* ]]; then
    CONFIG=$1
    shift
fi
for arg in "$@"; do
    if [[ $arg != *=* ]]; then
        echo "train.sh: '$arg' is not a key=value override (the config file comes first; see --help)" >&2
        exit 2
    fi
done

activate_env train.sh
command -v python >/dev/null || {
    echo "train.sh: no python on PATH; set CONDA_ENV or VENV (see --help)" >&2
    exit 1
}

# The run folder and the command (util/cluster/plan.py); the config and the overrides are checked first.
PLAN=$(python -m util.cluster plan -- "$CONFIG" "$@") || exit 2
# exec: this job's own process runs the training (util/cluster/supervise.py), so that it gets Slurm's
# time-limit warning (--signal=B:USR1@...), turns it into SIGTERM for the training and requeues the job.
exec python -m util.cluster run "${RUN_ARGS[@]}" "$PLAN"
