#!/usr/bin/env bash
# Install FedAAA and its test dependencies into ./.venv, then run the whole test suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install.sh
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
exec .venv/bin/python -m pytest "$@"
