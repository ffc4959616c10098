#!/usr/bin/env bash
# Install FedAAA into ./.venv, then simulate 3 synthetic hospitals federating for 10 rounds of 3 local epochs and test
# the global model on held-out studies. Results land in runs/demo/ (about 12 minutes on 2 CPU cores).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install.sh
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
exec .venv/bin/fedaaa simulate --output runs/demo --studies-per-site 40 --rounds 10 --local-epochs 3 "$@"
