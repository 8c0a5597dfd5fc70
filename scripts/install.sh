#!/usr/bin/env bash
# Create .venv and install trainkite (+ dev tools with --dev). torch is installed first as the
# CPU build: an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  # A full disk otherwise shows up halfway through as pip's "[Errno 28] No space left on device".
  need_mb=3072
  free_mb=$(df -Pm . | awk 'NR==2 {print $4}')
  if [ "${free_mb:-0}" -lt "$need_mb" ]; then
    echo "install.sh: the install needs about ${need_mb} MB free in $(pwd) (.venv with torch, pip's cache); ${free_mb} MB free" >&2
    exit 1
  fi
  "$PY" -m venv .venv
fi
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
