#!/usr/bin/env bash
# Run the test suite on a fresh machine (sets everything up first).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest -q "$@"
