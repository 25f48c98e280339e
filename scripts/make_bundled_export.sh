#!/usr/bin/env bash
# Re-export the shipped checkpoint into the package's bundled export (shipped in the wheel, so
# `sacvit-edge demo` runs on the core install without torch). Run after retraining;
# tests/test_runtime_split.py fails while the bundled export is stale. (The format-3 directory
# tests/test_manifest_schema.py loads is a copy of an older bundled export in tests/fixtures/.)
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/sacvit-edge export checkpoints/sacvit_tiny_112.pt -o sacvit_edge/assets/sacvit_tiny_112 --no-with-checkpoint
