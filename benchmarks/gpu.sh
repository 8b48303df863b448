#!/usr/bin/env bash
# Run the model benchmarks on a CUDA machine whose Python has NumPy 2 (where escnn cannot import).
#
#   bash benchmarks/gpu.sh [WHEEL_DIR]
#
# escnn's dependency lie_learn is compiled against NumPy 1.x, so on a NumPy-2 machine we put NumPy 1.26 and a
# SciPy built for it (plus escnn, e2cnn and their pure-Python deps) in front of the system packages. Make the
# wheel folder on a machine with network access (Python 3.12 target shown; adjust --python-version):
#
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl numpy==1.26.4 scipy==1.15.3 lie_learn==0.0.2 \
#       escnn==1.0.11 e2cnn==0.2.3 pymanopt==2.2.1 autograd
#
# (a lie_learn folder may be given as lie_learn*.tgz instead of a wheel, e.g. without its SO(3) data files,
# which 2-D groups never use). TF32 is switched off by the benchmarks for the equivariance columns.
set -euo pipefail
WHEELS="${1:-.whl}"
SITE="${SITE:-/tmp/bench-site}"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
for t in "$WHEELS"/*.tgz; do [[ -e "$t" ]] && tar xzf "$t" -C "$SITE"; done
export PYTHONPATH="$SITE:$(pwd)"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
OUT_DIR="${OUT:-.}"
python3 benchmarks/models.py --device cuda --batch 8 --size 512 --width 32 --repeats 10 --no-extra 2>&1 | tee "$OUT_DIR/gpu_models.txt"
[[ -f benchmarks/moment.py ]] && python3 benchmarks/moment.py --device cuda 2>&1 | tee "$OUT_DIR/gpu_moment.txt"
[[ -f benchmarks/steerable.py ]] && python3 benchmarks/steerable.py --device cuda 2>&1 | tee "$OUT_DIR/gpu_escnn.txt"
