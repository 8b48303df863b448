# shellcheck shell=bash
# The shell that train.sh and jupyter_tunnel.sh share, sourced by both from the repository root (what they
# do lives in util/cluster/, run as `python -m util.cluster ...`). Sourcing it only defines two functions.

# activate_env PROG: activate $CONDA_ENV (a conda env name or path), else $VENV (a venv folder), else ./.venv
# when it exists (else nothing: the current python). PROG names the calling script in the error message.
activate_env() {
    if [[ -n ${CONDA_ENV:-} ]]; then
        if ! command -v conda >/dev/null; then
            echo "$1: CONDA_ENV is set but conda is not on PATH" >&2
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

# print_usage SCRIPT: SCRIPT's --help, the comment block under its first line and its #SBATCH lines.
print_usage() {
    awk 'NR == 1 || /^#SBATCH/ { next } !/^#/ { exit } { sub(/^# ?/, "") } NF || started { started = 1; print }' "$1"
}
