#!/usr/bin/env bash
# Install and train on the bundled demo data; ends with the model ID, its metrics and a sample prediction.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/trainkite train "$@"
