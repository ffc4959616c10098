#!/usr/bin/env bash
# Install FedAAA into ./.venv (created if absent). Sourced by demo.sh and test.sh; safe to re-run.
# Without an NVIDIA GPU the CPU build of PyTorch is installed first (no multi-GB CUDA download);
# with one, pip resolves PyTorch's default (CUDA) build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    python -m pip install --quiet "torch>=2.4,<2.14"
  else
    python -m pip install --quiet "torch==2.13.0"
  fi
fi
python -m pip install --quiet -e ".[${FEDAAA_EXTRAS:-test}]"
