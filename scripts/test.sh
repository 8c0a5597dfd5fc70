#!/usr/bin/env bash
# Install with dev tools and run the whole test suite (starts its own Prefect and moto servers).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --dev
.venv/bin/ruff check .
.venv/bin/python -m pytest -q "$@"
