#!/usr/bin/env bash
# Create .venv and install trainkite (+ dev tools with --dev). torch is installed first as the
# CPU build: an unpinned torch would pull a multi-GB CUDA build.
#
# uv installs the locked set in seconds where pip takes minutes (resolving and downloading one by one):
# the uv on PATH, else uv installed from PyPI into the venv, else pip (TRAINKITE_INSTALLER=pip forces it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
say() { echo "install.sh [${SECONDS}s]: $*" >&2; }
if [ ! -x .venv/bin/python ]; then
  # A full disk otherwise shows up halfway through as "[Errno 28] No space left on device".
  need_mb=3072
  free_mb=$(df -Pm . | awk 'NR==2 {print $4}')
  if [ "${free_mb:-0}" -lt "$need_mb" ]; then
    say "the install needs about ${need_mb} MB free in $(pwd) (.venv with torch, the installer's cache); ${free_mb} MB free"
    exit 1
  fi
  say "creating .venv with $("$PY" --version 2>&1)"
  "$PY" -m venv .venv
fi
extras=""
# The encoder extra too: tests/test_encoder.py must run (not skip) in CI.
[ "${1:-}" = "--dev" ] && extras="[dev,encoder]"

installer=${TRAINKITE_INSTALLER:-uv}
uv=""
if [ "$installer" = uv ]; then
  if command -v uv >/dev/null 2>&1; then
    uv=$(command -v uv)
  elif [ -x .venv/bin/uv ]; then
    uv=.venv/bin/uv
  else
    say "uv not found: installing it from PyPI into .venv (pip is the fallback if that fails)"
    if .venv/bin/python -m pip install -q --disable-pip-version-check uv 2>&1 >&2; then
      uv=.venv/bin/uv
    fi
  fi
fi

if [ -n "$uv" ]; then
  # uv reads no pip configuration: pass on a find-links folder set for pip (a local wheel of torch, say).
  links=()
  [ -n "${PIP_FIND_LINKS:-}" ] && for l in $PIP_FIND_LINKS; do links+=(--find-links "$l"); done
  say "installing with $uv ($("$uv" --version)): torch==2.13.0 and trainkite${extras} pinned by requirements.lock"
  # One resolution and one parallel download for everything; requirements.lock pins the resolved set.
  "$uv" pip install --python .venv/bin/python ${links[@]+"${links[@]}"} -c requirements.lock "torch==2.13.0" -e ".${extras}"
else
  say "installing with pip (slower; uv is faster): torch==2.13.0, then trainkite${extras} pinned by requirements.lock"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q "torch==2.13.0"
  .venv/bin/python -m pip install -q -c requirements.lock -e ".${extras}"
fi
# uv installs no bytecode. Python caches it at a module's first import, unless PYTHONDONTWRITEBYTECODE is set (CI
# images, containers): then every process compiles its imports from source again (a demo `trainkite train`: 10 s
# with bytecode, 14 s without). Only then is it worth compiling here, and only what a run imports (cli/bytecode.py
# names it: the flow, the fits and plots its steps import, the server a first run starts), one process per group
# in parallel with the database template, where uv's --compile-bytecode of the whole venv takes about 95 s. The
# bytecode lands in .venv and the checkout's own __pycache__ folders (ignored by git).
pids=()
if [ -n "${PYTHONDONTWRITEBYTECODE:-}" ]; then
  say "PYTHONDONTWRITEBYTECODE is set: compiling the bytecode of a local run once, here"
  for group in flow fit server; do
    { env -u PYTHONDONTWRITEBYTECODE .venv/bin/python -m cli.bytecode "$group" || say "could not compile the $group imports"; } &
    pids+=($!)
  done
fi
# An empty Prefect database (from the shipped schema, or Prefect's migrations), once per Prefect version: a first
# local run starts ~6 s sooner.
say "preparing the local Prefect database template"
.venv/bin/trainkite server prepare >/dev/null
for pid in ${pids[@]+"${pids[@]}"}; do wait "$pid"; done
if [ "${1:-}" = "--dev" ]; then
  # checkov pins libraries that clash with ours: it gets its own venv.
  if [ ! -x .venv-checkov/bin/checkov ]; then
    "$PY" -m venv .venv-checkov
    if [ -n "$uv" ]; then
      "$uv" pip install --python .venv-checkov/bin/python "checkov==3.3.30"
    else
      .venv-checkov/bin/python -m pip install -q "checkov==3.3.30"
    fi
  fi
fi
say "done: .venv/bin/trainkite"
