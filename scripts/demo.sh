#!/usr/bin/env bash
# Main job on the bundled default: export the shipped SAC-ViT checkpoint into two ONNX engines
# and classify the bundled sample images with EdgeClassifier on ONNX Runtime.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/sacvit-edge demo "$@"
