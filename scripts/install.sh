#!/usr/bin/env bash
# Create .venv and install trainkite (+ dev tools with --dev). torch is installed first as the
# CPU build: an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
extras=""
# The encoder extra too: tests/test_encoder.py must run (not skip) in CI.
[ "${1:-}" = "--dev" ] && extras="[dev,encoder]"
# requirements.lock pins the resolved set (resolving boto3/aiobotocore from scratch takes minutes).
.venv/bin/python -m pip install -q -c requirements.lock -e ".${extras}"
# Prefect's migrations of an empty database, once per Prefect version: a first local run starts ~6 s sooner.
.venv/bin/trainkite server prepare >/dev/null
if [ "${1:-}" = "--dev" ]; then
  # checkov pins libraries that clash with ours: it gets its own venv.
  [ -x .venv-checkov/bin/checkov ] || { "$PY" -m venv .venv-checkov && .venv-checkov/bin/python -m pip install -q "checkov==3.3.30"; }
fi
