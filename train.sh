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
# Time limit: Slurm sends USR1 120 s before the limit; the notebook's training saves a checkpoint, the job
# requeues itself and the requeued job resumes from that checkpoint (resume=auto, same run folder).
#
# Why multi-GPU runs do not use the notebook: data-parallel training starts one process per GPU (srun
# launches them and Lightning's DDP connects them); a notebook runs in a single Jupyter kernel process that
# cannot be replicated across ranks, so jobs with more than one task run `srun python -m util.train`
# (the same library entry point the notebook calls) instead. Ask for tasks with --ntasks-per-node (one per
# GPU; Lightning refuses a bare --ntasks) and as many GPUs (--gres=gpu:N).
set -euo pipefail

usage() { # the comment block under the #SBATCH header
    awk 'NR > 11 && !/^#/ { exit } NR > 11 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"
}

DRY_RUN=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        -h | --help)
            usage
            exit 0
            ;;
        --dry-run) DRY_RUN=1 ;;
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
OVERRIDES=()
for arg in "$@"; do
    if [[ $arg != *=* ]]; then
        echo "train.sh: '$arg' is not a key=value override (the config file comes first; see --help)" >&2
        exit 2
    fi
    OVERRIDES+=("$arg")
done

# Under sbatch this file runs from a spool copy: the repository is then the submission folder.
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [[ -f $SCRIPT_DIR/v1_0.ipynb ]]; then
    REPO_DIR=$SCRIPT_DIR
else
    REPO_DIR=${SLURM_SUBMIT_DIR:-$PWD}
fi
cd "$REPO_DIR"
if [[ ! -f v1_0.ipynb ]]; then
    echo "train.sh: v1_0.ipynb not found in $REPO_DIR (submit from the repository root)" >&2
    exit 2
fi
if [[ ! -f $CONFIG ]]; then
    echo "train.sh: config file '$CONFIG' not found" >&2
    exit 2
fi

activate_env() {
    if [[ -n ${CONDA_ENV:-} ]]; then
        if ! command -v conda >/dev/null; then
            echo "train.sh: CONDA_ENV is set but conda is not on PATH" >&2
            exit 1
        fi
        eval "$(conda shell.bash hook)"
        conda activate "$CONDA_ENV"
    elif [[ -n ${VENV:-} ]]; then
        # shellcheck disable=SC1091
        source "$VENV/bin/activate"
    elif [[ -f .venv/bin/activate ]]; then
        # shellcheck disable=SC1091
        source .venv/bin/activate
    fi
}
activate_env
command -v python >/dev/null || {
    echo "train.sh: no python on PATH; set CONDA_ENV or VENV (see --help)" >&2
    exit 1
}

GRID_INDEX=${SLURM_ARRAY_TASK_ID:-}
NTASKS=${SLURM_NTASKS:-1}
# one math-library thread per allocated CPU (PyTorch, NumPy), unless set already
if [[ -n ${SLURM_CPUS_PER_TASK:-} && -z ${OMP_NUM_THREADS:-} ]]; then
    export OMP_NUM_THREADS=$SLURM_CPUS_PER_TASK
fi

# The run folder (util.training.resolve_run_dir: it depends only on the configuration, so a requeued job
# finds its folder again and resumes) and the papermill parameters. Validates the config and the overrides
# before anything runs.
PLAN=$(python - "$CONFIG" "$GRID_INDEX" "${OVERRIDES[@]}" <<'EOF'
import json, sys
from util.config import ConfigError, grid_point, load_config
from util.training import resolve_run_dir

config_path, grid_index, overrides = sys.argv[1], sys.argv[2], sys.argv[3:]
try:
    cfg = load_config(config_path, overrides)
    if grid_index != "":
        cfg = grid_point(cfg, int(grid_index))
    elif cfg.grid:
        raise ConfigError(f"{config_path} is a grid config: submit it as an array job "
                          f"(sbatch --array=0-N train.sh {config_path})")
    run_dir = resolve_run_dir(cfg)
    if cfg.resume == "never":
        # resolve_run_dir picked a fresh folder; pin it so that the notebook (and a requeued job) use it
        if grid_index != "":
            raise ConfigError("resume=never is not supported for array jobs: each grid point has its own "
                              "folder; change name= for a fresh set of runs")
        overrides = overrides + [f"run_id={run_dir.name}", "resume=auto"]
except (ConfigError, ValueError) as e:
    sys.exit(f"train.sh: {e}")
params = {"config_path": config_path, "overrides": overrides,
          "grid_index": None if grid_index == "" else int(grid_index)}
print(run_dir)
print(json.dumps(params))
print(json.dumps(overrides))
EOF
) || exit 2
RUN_DIR=$(sed -n 1p <<<"$PLAN")
PARAMS=$(sed -n 2p <<<"$PLAN")
mapfile -t NB_OVERRIDES < <(python -c 'import json, sys; print("\n".join(json.loads(sys.argv[1])))' "$(sed -n 3p <<<"$PLAN")")
OUT_NB=$RUN_DIR/v1_0.ipynb

if ((NTASKS > 1)); then
    GRID_ARGS=()
    if [[ -n $GRID_INDEX ]]; then
        GRID_ARGS=(--grid-index "$GRID_INDEX")
    fi
    CMD=(srun --kill-on-bad-exit=1 python -m util.train "$CONFIG" "${NB_OVERRIDES[@]}" "${GRID_ARGS[@]}"
        "devices=${SLURM_NTASKS_PER_NODE:-$NTASKS}" "num_nodes=${SLURM_JOB_NUM_NODES:-1}" "strategy=ddp")
else
    CMD=(python -m papermill v1_0.ipynb "$OUT_NB" -k "${KERNEL:-python3}" --cwd "$REPO_DIR"
        -y "$PARAMS" --log-output --no-progress-bar)
fi

echo "train.sh: $(date -u +%Y-%m-%dT%H:%M:%SZ) job ${SLURM_JOB_ID:-local} restart ${SLURM_RESTART_COUNT:-0}"
echo "train.sh: run folder $RUN_DIR"
printf 'train.sh: running:'
printf ' %q' "${CMD[@]}"
echo
if [[ $DRY_RUN == 1 ]]; then
    exit 0
fi
mkdir -p "$RUN_DIR"

CHILD=""
REQUEUED=0
children_of() { # PIDs whose parent is $1, read from /proc (no procps needed)
    local status key value
    for status in /proc/[0-9]*/status; do
        while read -r key value; do
            if [[ $key == PPid: ]]; then
                if [[ $value == "$1" ]]; then
                    status=${status#/proc/}
                    echo "${status%/status}"
                fi
                break
            fi
        done <"$status" 2>/dev/null || true
    done
}
training_pids() { # the processes that train: the notebook's kernel (papermill's child), or srun
    if ((NTASKS > 1)); then
        echo "$CHILD"
    else
        children_of "$CHILD"
    fi
}
on_time_warning() {
    # Slurm's warning before the time limit (--signal=B:USR1@...). SIGTERM makes the training save
    # checkpoints/last.ckpt at the next step and stop (util.training.StopCheckpoint); the notebook then
    # fails, and this job requeues itself below. The requeued job resumes from last.ckpt (resume=auto).
    echo "train.sh: $(date -u +%H:%M:%SZ) time-limit warning: checkpointing, then requeueing job ${SLURM_JOB_ID:-}"
    REQUEUED=1
    local pids
    pids=$(training_pids)
    if [[ -n $pids ]]; then
        # shellcheck disable=SC2086
        kill -TERM $pids 2>/dev/null || true
    fi
}
on_terminate() {
    echo "train.sh: terminated; stopping the training"
    if [[ -n $CHILD ]]; then
        local pids
        pids=$(training_pids)
        # shellcheck disable=SC2086
        kill -TERM $pids "$CHILD" 2>/dev/null || true
    fi
    exit 143
}
trap on_time_warning USR1
trap on_terminate TERM INT

run_child() { # run CMD in the background (so that the traps run at once) and wait for it
    "${CMD[@]}" &
    CHILD=$!
    while true; do
        wait "$CHILD"
        STATUS=$?
        # wait returns early (> 128) when a trapped signal arrives; keep waiting while the child runs
        if ! kill -0 "$CHILD" 2>/dev/null; then
            break
        fi
    done
}
notebook_never_started() { # papermill failed before the first cell ran (e.g. the kernel did not start)
    ((NTASKS == 1)) && [[ -f $OUT_NB ]] && python - "$OUT_NB" <<'EOF'
import json, sys
cells = json.load(open(sys.argv[1]))["cells"]
sys.exit(0 if all(c.get("execution_count") is None for c in cells if c["cell_type"] == "code") else 1)
EOF
}

set +e
for attempt in 1 2 3; do
    run_child
    # Kernels started at the same moment on one node (array tasks) can collide on their ZMQ ports
    # ("Address already in use"): retry when the notebook never started.
    if [[ $STATUS -eq 0 || $REQUEUED == 1 || $attempt -eq 3 ]] || ! notebook_never_started; then
        break
    fi
    echo "train.sh: the notebook did not start (attempt $attempt, status $STATUS); retrying"
    sleep $((RANDOM % 10 + 1))
done
set -e

if [[ $REQUEUED == 1 && -n ${SLURM_JOB_ID:-} ]]; then
    echo "train.sh: training stopped (status $STATUS); requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
fi
if [[ $STATUS -ne 0 ]]; then
    if ((NTASKS > 1)); then
        echo "train.sh: FAILED (status $STATUS)" >&2
    else
        echo "train.sh: FAILED (status $STATUS); executed notebook: $OUT_NB" >&2
    fi
    exit "$STATUS"
fi
if [[ -f $RUN_DIR/metrics.json ]]; then
    python -c 'import sys; from util.evaluate import summary_line; print("train.sh:", summary_line(sys.argv[1]))' \
        "$RUN_DIR" || true
fi
echo "train.sh: done in ${SECONDS} s; run folder $RUN_DIR"
