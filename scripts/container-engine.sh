#!/usr/bin/env bash
# Make a container engine usable on a Debian bookworm machine without a registry (CI agents, the dev box).
#
#   scripts/container-engine.sh          # podman + its config + the local base image, each only when absent
#   scripts/container-engine.sh --check  # exit 0 when an engine answers, 1 when not; changes nothing
#
# Docker with a running daemon is used as it is. Otherwise, as root: Debian's podman (runc as the runtime:
# crun refuses hybrid cgroups and raising RLIMIT_NOFILE on these machines), /etc/containers/containers.conf
# with explicit ulimits, and the local stand-in for `python:3.11.14-slim-bookworm` that
# `scripts/build-images.sh --local-base` builds from (scripts/local-base.sh). Idempotent: a second run only checks.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PACKAGES=(podman buildah runc fuse-overlayfs netavark slirp4netns debootstrap)

engine_ok() {
  if command -v docker >/dev/null && timeout 10 docker info >/dev/null 2>&1; then echo docker; return 0; fi
  if command -v podman >/dev/null && timeout 30 podman info >/dev/null 2>&1; then echo podman; return 0; fi
  return 1
}

if [[ "${1:-}" == "--check" ]]; then
  engine_ok && exit 0 || exit 1
fi

if engine="$(engine_ok)" && [[ "$engine" == docker ]]; then
  echo "container-engine: docker answers; nothing to set up" >&2
  exit 0
fi

if [[ "$(id -u)" != 0 ]]; then
  echo "container-engine: podman set-up needs root (apt-get, /etc/containers); run it as root or install docker" >&2
  exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "container-engine: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
    || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }
fi

conf=/etc/containers/containers.conf
if ! grep -qs '^runtime *= *"runc"' "$conf"; then
  mkdir -p /etc/containers
  if [[ -s "$conf" ]]; then
    echo "container-engine: $conf exists without runtime = \"runc\"; leaving it alone (podman may fail here)" >&2
  else
    cat >"$conf" <<'EOF'
# Written by trainkite scripts/container-engine.sh. runc, not crun: crun refuses this kind of machine's
# hybrid cgroups and raising RLIMIT_NOFILE. Explicit ulimits: the defaults podman derives from the host fail.
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
EOF
  fi
fi

timeout 60 podman info >/dev/null || { echo "container-engine: podman info fails after set-up" >&2; exit 1; }
"$REPO_ROOT/scripts/local-base.sh"
echo "container-engine: podman ready" >&2
