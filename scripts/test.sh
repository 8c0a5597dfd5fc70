#!/usr/bin/env bash
# Install with dev tools and run the whole test suite (starts its own Prefect and moto servers).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --dev
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# tests/test_images.py builds and runs the images: set a container engine up where none answers (podman and a
# local base image, as root on Debian; about 2.5 min the first time, seconds after). TRAINKITE_IMAGE_TESTS=0 skips
# both; where the set-up cannot run, the image tests skip and say why.
if [[ "${TRAINKITE_IMAGE_TESTS:-}" != 0 ]]; then
  if bash scripts/container-engine.sh; then
    export TRAINKITE_IMAGE_TESTS=1
  else
    echo "test.sh: no container engine could be set up; tests/test_images.py will skip" >&2
  fi
fi
.venv/bin/python -m pytest -q "$@"
