#!/usr/bin/env bash
# The first hour's first minutes, as a new user meets them: a fresh clone, a fresh HOME, an empty uv cache.
# Times scripts/install.sh, then the quickstart's `trainkite train` (which starts the local Prefect server).
#   flock /tmp/trainkite-bench.lock bash benchmarks/install_quickstart.sh [REPO] [uv|pip]
# Results in BENCHMARKS.md ("Install and quickstart"). Needs network to the package index (PyPI).
set -euo pipefail
src=${1:-$(cd "$(dirname "$0")/.." && pwd)}
installer=${2:-uv}
d=$(mktemp -d /tmp/trainkite-first-hour.XXXX)
trap 'HOME=$d/home "$d/repo/.venv/bin/trainkite" server stop >/dev/null 2>&1 || true; rm -rf "$d"' EXIT
git clone -q "$src" "$d/repo"
export HOME=$d/home UV_CACHE_DIR=$d/uv-cache PIP_CACHE_DIR=$d/pip-cache TRAINKITE_INSTALLER=$installer
mkdir -p "$HOME" "$UV_CACHE_DIR"
unset XDG_CACHE_HOME TRAINKITE_HOME PREFECT_API_URL VIRTUAL_ENV
cd "$d/repo"
t0=$(date +%s.%N)
bash scripts/install.sh 2> >(tee "$d/install.log" | grep '^install.sh' >&2)
t1=$(date +%s.%N)
.venv/bin/trainkite train > "$d/train.out" 2> "$d/train.log"
t2=$(date +%s.%N)
grep -E '^(Resolved|Prepared|Installed)' "$d/install.log" >&2 || true
printf 'installer %s  nproc %s  load %s\n' "$installer" "$(nproc)" "$(cut -d' ' -f1-3 /proc/loadavg)"
printf 'install_s %.1f  train_s %.1f  quickstart_s %.1f\n' "$(echo "$t1 - $t0" | bc)" "$(echo "$t2 - $t1" | bc)" \
  "$(echo "$t2 - $t0" | bc)"
