#!/usr/bin/env bash
# Set up a fresh machine: the Fashion-MNIST data package, a virtualenv, the CPU torch wheel and
# this package. Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] && [ -z "${SACVIT_FASHION_MNIST:-}" ]; then
  SUDO=""; [ "$(id -u)" != 0 ] && SUDO="sudo"
  echo "installing Debian package dataset-fashion-mnist" >&2
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# torch==2.13.0 resolves to the local CPU wheel; an unpinned torch would pull CUDA wheels.
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
