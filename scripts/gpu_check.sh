#!/usr/bin/env bash
# Run on a lent GPU machine (the device tool copies the working tree there; $OUT comes back):
#   timeout 480 bash scripts/gpu_check.sh
# Installs nothing beyond what the machine has (PyTorch with CUDA, cuda-bindings, ONNX Runtime): the
# project's own packages come from the checkout by path.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/nvidia_smi.csv" 2>&1 || true
python -m pip install -q --no-deps --no-build-isolation -e . > "$OUT/pip.log" 2>&1 || true
timeout 450 python scripts/gpu_check.py --out "$OUT/gpu_check.json" 2>&1 | tee "$OUT/gpu_check.log"
