#!/usr/bin/env bash
# One-command setup: environment, PyTorch, escnn (without Fortran), e2cnn, this project, default data.
# Run `bash setup.sh --help` for the options. Safe to run again: finished steps are skipped.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: bash setup.sh [options]

Creates the Python environment, installs PyTorch, escnn, e2cnn and this project (editable, with the
notebooks/tracking/dev extras), and writes the synthetic test set to data/synthetic_ocelot (the main
job's real data, data/brca_m2c, ships with the repository).

Options:
  --conda            use a conda env built from environment.yml (needs `conda` on PATH);
                     default is a venv made with `python3 -m venv`
  --venv PATH        where the venv lives (default: .venv); ignored with --conda
  --env-name NAME    conda env name (default: the `name:` in environment.yml)
  --python EXE       Python used to create the venv (default: python3)
  --torch SPEC       the torch requirement installed first (default: torch==2.13.0, the CPU wheel on
                     the development machines). For a CUDA cluster use e.g.
                       --torch 'torch==2.5.1' --torch-index https://download.pytorch.org/whl/cu124
  --torch-index URL  extra index URL for torch (e.g. a CUDA wheel index)
  --locked           install the exact package versions of requirements-lock.txt (those the committed
                     study rows were last trained with) instead of the newest that pyproject.toml allows
  --no-data          do not create the synthetic data set
  --ocelot           also download the real OCELOT 2023 set into data/ocelot (about 9 GB, CC BY-NC-SA 4.0)
  --force            redo every step even when it looks done
  --fingerprint      print what decides whether the packages are (re)installed and exit: the install
                     sections of pyproject.toml ([build-system], [project*], [tool.setuptools*]),
                     environment.yml, the torch and escnn specs and, with --locked, the lock file.
                     A later run whose fingerprint equals the one stamped in the environment skips them
  -h, --help         show this help

After setup: activate with `source .venv/bin/activate` (or `conda activate <name>`), then see README.md.
EOF
}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"

USE_CONDA=0
VENV=".venv"
ENV_NAME=""
PYTHON="python3"
TORCH_SPEC="torch==2.13.0"
TORCH_INDEX=""
MAKE_DATA=1
GET_OCELOT=0
FORCE=0
LOCKED=0
PRINT_FINGERPRINT=0
ESCNN_SPEC="escnn==1.0.11"

value_of() { # OPTION NEXT-ARGUMENT...: the option's value, or a clear error when it has none
  if [[ $# -lt 2 || -z "$2" || "$2" == --* ]]; then
    echo "setup.sh: $1 needs a value (see --help)" >&2
    exit 2
  fi
  echo "$2"
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --conda) USE_CONDA=1 ;;
    --venv) VENV="$(value_of "$@")"; shift ;;
    --env-name) ENV_NAME="$(value_of "$@")"; shift ;;
    --python) PYTHON="$(value_of "$@")"; shift ;;
    --torch) TORCH_SPEC="$(value_of "$@")"; shift ;;
    --torch-index) TORCH_INDEX="$(value_of "$@")"; shift ;;
    --no-data) MAKE_DATA=0 ;;
    --locked) LOCKED=1 ;;
    --ocelot) GET_OCELOT=1 ;;
    --force) FORCE=1 ;;
    --fingerprint) PRINT_FINGERPRINT=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "setup.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

# Fingerprint of everything that decides what gets installed: a second run with the same inputs skips.
# pyproject.toml counts without its other [tool.*] sections (pytest settings do not change what is installed).
install_sections() {
  awk '/^\[/ { keep = ($0 !~ /^\[tool\./ || $0 ~ /^\[tool\.setuptools/) } keep' pyproject.toml
}
FINGERPRINT="$({ install_sections; cat environment.yml; } | sha256sum | cut -c1-16) $TORCH_SPEC $TORCH_INDEX $ESCNN_SPEC"
if [[ $LOCKED == 1 ]]; then
  [[ -f requirements-lock.txt ]] || { echo "setup.sh: --locked needs requirements-lock.txt in $ROOT" >&2; exit 1; }
  FINGERPRINT="$FINGERPRINT locked:$(sha256sum < requirements-lock.txt | cut -c1-16)"
fi
if [[ $PRINT_FINGERPRINT == 1 ]]; then
  echo "$FINGERPRINT"
  exit 0
fi

STEP="start"
trap 'echo "setup.sh: FAILED at step: $STEP" >&2' ERR
step() { STEP="$1"; echo "==> $1"; }

# ---------------------------------------------------------------- environment
if [[ $USE_CONDA == 1 ]]; then
  step "conda environment from environment.yml"
  command -v conda >/dev/null || { echo "setup.sh: --conda given but conda is not on PATH" >&2; exit 1; }
  [[ -n "$ENV_NAME" ]] || ENV_NAME="$(sed -n 's/^name: *//p' environment.yml)"
  if conda env list | awk '{print $1}' | grep -qx "$ENV_NAME" && [[ $FORCE == 0 ]]; then
    echo "    env '$ENV_NAME' exists (use --force to update it)"
  else
    conda env update -n "$ENV_NAME" -f environment.yml --prune
  fi
  PY="$(conda run -n "$ENV_NAME" python -c 'import sys; print(sys.executable)')"
else
  step "virtual environment in $VENV"
  if [[ ! -x "$VENV/bin/python" ]]; then
    command -v "$PYTHON" >/dev/null || { echo "setup.sh: --python '$PYTHON' is not an executable on PATH" >&2; exit 1; }
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
  else
    echo "    exists"
  fi
  PY="$(cd "$VENV" && pwd)/bin/python"
fi
PIP=("$PY" -m pip install -q)
LOCK_ARGS=()
if [[ $LOCKED == 1 ]]; then
  LOCK_ARGS=(-c requirements-lock.txt)
fi

STAMP="$("$PY" -c 'import sys; print(sys.prefix)')/.equivariant-ocelot-setup"

if [[ $FORCE == 0 && -f "$STAMP" && "$(cat "$STAMP")" == "$FINGERPRINT" ]] \
   && "$PY" -c 'import model, util, escnn, e2cnn' 2>/dev/null; then
  echo "==> packages already installed (delete $STAMP or use --force to reinstall)"
else
  # -------------------------------------------------------------- torch first
  step "PyTorch ($TORCH_SPEC)"
  if [[ -n "$TORCH_INDEX" ]]; then
    "${PIP[@]}" "$TORCH_SPEC" --extra-index-url "$TORCH_INDEX"
  else
    "${PIP[@]}" "$TORCH_SPEC"
  fi
  # -------------------------------------------------------------- project (pulls escnn's other deps, e2cnn)
  step "this project, editable, with extras notebooks,tracking,dev"
  "${PIP[@]}" -e ".[notebooks,tracking,dev]" "$TORCH_SPEC" ${LOCK_ARGS[@]+"${LOCK_ARGS[@]}"}
  # -------------------------------------------------------------- escnn without py3nj (no Fortran needed)
  step "escnn ($ESCNN_SPEC, --no-deps: its py3nj dependency needs Fortran and only serves 3D groups)"
  "${PIP[@]}" --no-deps "$ESCNN_SPEC"
  step "import check"
  "$PY" -W ignore -c 'import model, util, escnn, e2cnn; print("    model, util, escnn, e2cnn import")'
  echo "$FINGERPRINT" > "$STAMP"
fi

# ---------------------------------------------------------------- data
if [[ $MAKE_DATA == 1 ]]; then
  step "synthetic default data set in data/synthetic_ocelot"
  if [[ -f data/synthetic_ocelot/metadata.json && $FORCE == 0 ]]; then
    echo "    exists"
  elif "$PY" -c 'import util.synthetic' 2>/dev/null; then
    if [[ $FORCE == 1 && -e data/synthetic_ocelot ]]; then
      "$PY" -m util.synthetic data/synthetic_ocelot --force
    else
      "$PY" -m util.synthetic data/synthetic_ocelot
    fi
  else
    echo "    util.synthetic not available yet: skipped"
  fi
fi
if [[ $GET_OCELOT == 1 ]]; then
  step "real OCELOT 2023 data in data/ocelot"
  echo "    OCELOT 2023 (Zenodo record 8417503): about 9 GB, licence CC BY-NC-SA 4.0 (non-commercial)."
  "$PY" -m util.ocelot download data/ocelot
fi

STEP="done"
echo "==> setup finished. Python: $PY"
