#!/usr/bin/env bash
#SBATCH --job-name=jupyter
#SBATCH --time=08:00:00
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=4
#SBATCH --mem=32G
#SBATCH --output=logs/%x-%j.out
#
# Jupyter Lab on a cluster node, reached from your laptop through an SSH tunnel.
# Every #SBATCH value above can be overridden on the command line (sbatch reads the command line first).
#
# Usage:
#   sbatch [sbatch options] jupyter_tunnel.sh      submit from the repository root (needs a logs/ folder)
#   bash jupyter_tunnel.sh --local                 run it on this machine (listens on 127.0.0.1 only)
#   bash jupyter_tunnel.sh --help
#
# The job starts Jupyter Lab on a free port with a token, waits until the server answers, writes the
# connection details to a file only you can read, and prints the exact command to run on your laptop:
#   ssh -N -L <port>:<node>:<port> <user>@$LOGIN_HOST
# and the URL to open (http://localhost:<port>/lab?token=...). Stop it with `scancel <job id>`
# (or Ctrl-C with --local); the details file is removed when the server stops.
#
# Environment variables (all optional):
#   LOGIN_HOST           the login host you ssh to (printed in the ssh line; "<login-host>" when unset)
#   JUPYTER_TOKEN        the token to use (default: a new random token)
#   JUPYTER_PORT         the port to use (default: a free port picked on the node)
#   JUPYTER_DETAILS_DIR  where the details file goes (default: $HOME/.jupyter_tunnel);
#                        the file is <dir>/jupyter-<job id>.env (mode 600, shell-sourceable KEY=value lines)
#   JUPYTER_ROOT         the folder Jupyter opens (default: the repository / submission folder)
#   CONDA_ENV            name (or path) of a conda env to activate, or
#   VENV                 path of a venv to activate (default: ./.venv when it exists)
#   JUPYTER_START_TIMEOUT  seconds to wait for the server to answer (default: 300)
# The token is handed to Jupyter through the environment, never on a command line (`ps` shows those).
set -euo pipefail

LOCAL=0
HELP=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --local) LOCAL=1 ;;
        -h | --help)
            HELP=1
            break
            ;;
        *)
            echo "jupyter_tunnel.sh: unknown argument '$1' (see --help)" >&2
            exit 2
            ;;
    esac
    shift
done

# Under Slurm this file runs from a spool copy, so the repository is the submission folder.
if [[ -n ${SLURM_JOB_ID:-} && $LOCAL == 0 ]]; then
    REPO_DIR=${SLURM_SUBMIT_DIR:-$PWD}
else
    REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
fi
cd "$REPO_DIR"

if [[ ! -f scripts/activate_env.sh ]]; then
    echo "jupyter_tunnel.sh: scripts/activate_env.sh not found in $REPO_DIR (submit from the repository root)" >&2
    exit 2
fi
# shellcheck source=scripts/activate_env.sh
source scripts/activate_env.sh
if [[ $HELP == 1 ]]; then
    print_usage "${BASH_SOURCE[0]}"
    exit 0
fi

activate_env jupyter_tunnel.sh
command -v jupyter >/dev/null || {
    echo "jupyter_tunnel.sh: 'jupyter' not found; set CONDA_ENV or VENV (see --help)" >&2
    exit 1
}

umask 077
JOB_ID=${SLURM_JOB_ID:-local-$$}
if [[ $LOCAL == 1 ]]; then
    BIND_IP=127.0.0.1
    NODE=localhost
else
    BIND_IP=0.0.0.0
    NODE=$(hostname -s)
fi
USER_NAME=${USER:-$(id -un)}
LOGIN=${LOGIN_HOST:-<login-host>}

PORT=${JUPYTER_PORT:-$(python -m util.cluster free-port)}
if [[ -z ${JUPYTER_TOKEN:-} ]]; then
    JUPYTER_TOKEN=$(python -m util.cluster token)
fi
export JUPYTER_TOKEN

DETAILS_DIR=${JUPYTER_DETAILS_DIR:-$HOME/.jupyter_tunnel}
mkdir -p "$DETAILS_DIR"
chmod 700 "$DETAILS_DIR"
DETAILS_FILE="$DETAILS_DIR/jupyter-$JOB_ID.env"

# The Slurm log gets the token too: make it readable by the owner only.
if [[ -n ${SLURM_JOB_ID:-} && $LOCAL == 0 ]] && command -v scontrol >/dev/null; then
    LOG_FILE=$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null | sed -n 's/^ *StdOut=//p' | head -n 1)
    if [[ -n $LOG_FILE && -f $LOG_FILE ]]; then
        chmod 600 "$LOG_FILE"
    fi
fi

JUPYTER_PID=""
cleanup() {
    trap - EXIT INT TERM
    if [[ -n $JUPYTER_PID ]] && kill -0 "$JUPYTER_PID" 2>/dev/null; then
        kill -TERM "$JUPYTER_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$JUPYTER_PID" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "$JUPYTER_PID" 2>/dev/null || true
    fi
    rm -f "$DETAILS_FILE"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

EXTRA_ARGS=()
if [[ $(id -u) -eq 0 ]]; then
    EXTRA_ARGS+=(--allow-root) # containers and CI run as root
fi
jupyter lab --no-browser --ip="$BIND_IP" --port="$PORT" --ServerApp.port_retries=0 \
    --ServerApp.root_dir="${JUPYTER_ROOT:-$REPO_DIR}" "${EXTRA_ARGS[@]}" &
JUPYTER_PID=$!

# Wait until the server answers with the token (util/cluster/jupyter.py; exit 1 when it does not).
python -m util.cluster wait-jupyter "$PORT" "$JUPYTER_PID"

URL="http://localhost:$PORT/lab?token=$JUPYTER_TOKEN"
SSH_CMD="ssh -N -L $PORT:$NODE:$PORT $USER_NAME@$LOGIN"
{
    echo "JUPYTER_JOB_ID=$JOB_ID"
    echo "JUPYTER_NODE=$NODE"
    echo "JUPYTER_PORT=$PORT"
    echo "JUPYTER_TOKEN=$JUPYTER_TOKEN"
    echo "JUPYTER_URL='$URL'"
    echo "JUPYTER_SSH='$SSH_CMD'"
} >"$DETAILS_FILE"
chmod 600 "$DETAILS_FILE"

echo
echo "Jupyter Lab is running on $NODE:$PORT (job $JOB_ID)."
if [[ $LOCAL == 0 ]]; then
    if [[ -z ${LOGIN_HOST:-} ]]; then
        echo "(set LOGIN_HOST to your cluster's login host to get a ready-to-paste line)"
    fi
    echo "On your laptop run:"
    echo
    echo "    $SSH_CMD"
    echo
    echo "then open:"
else
    echo "Open:"
fi
echo
echo "    $URL"
echo
echo "Connection details: $DETAILS_FILE (readable by you only)"
echo "Stop it with: $([[ $LOCAL == 0 ]] && echo "scancel $JOB_ID" || echo "Ctrl-C")"

wait "$JUPYTER_PID"
