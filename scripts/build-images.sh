#!/usr/bin/env bash
# Build trainkite's images: scripts/build-images.sh [--local-base] [serve|train|gpu|all]   (default: all)
#
#   serve  infra/docker/Dockerfile.serve  lean SageMaker serving image (numpy / ONNX Runtime, no torch)
#   train  infra/docker/Dockerfile.cpu    the full set: CPU training, Prefect flow runs, Batch/ECS jobs
#   gpu    infra/docker/Dockerfile.gpu    CUDA training (torch's CUDA 13 wheels from the package index)
#
# Tags: trainkite-<target>:<commit> (the commit is also baked in as TRAINKITE_GIT_COMMIT, the manifest's
# lineage.git.commit). A tree with uncommitted changes is tagged and baked <commit>-dirty: such an image
# is not that commit, and a Buildkite-started run refuses it. Prints one "target image" line per build.
#
# Engine: docker when its daemon answers, else podman ($TRAINKITE_CONTAINER_ENGINE overrides).
#
# --local-base (or TRAINKITE_LOCAL_BASE=1): for machines that reach no image registry. Builds from
# the debootstrapped bookworm + Python 3.11 image that scripts/local-base.sh makes (once), passed as the
# Dockerfiles' BASE_IMAGE, with --pull=never. Without it the Dockerfiles' own base (python:3.11.14-slim-
# bookworm) is pulled as usual.
#
# With podman, pip inside the build reaches the package index exactly as this machine's pip does: its
# effective configuration (`pip config list`: every config file and PIP_* variable) becomes the build's
# /etc/pip.conf, and every local path it names (CA bundle, find-links folders, file:// indexes,
# constraint files) is bind-mounted read-only at the same path. Nothing of it lands in an image layer.
# Docker builds take no bind mounts; there pip uses the image's defaults (PyPI).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

usage() { echo "usage: scripts/build-images.sh [--local-base] [serve|train|gpu|all]" >&2; exit 2; }

local_base="${TRAINKITE_LOCAL_BASE:-0}"
[[ "$local_base" == 0 || "$local_base" == 1 ]] || { echo "TRAINKITE_LOCAL_BASE=$local_base must be 0 or 1" >&2; exit 2; }
targets=()
for arg in "$@"; do
  case "$arg" in
    --local-base) local_base=1 ;;
    serve|train|gpu) targets+=("$arg") ;;
    all) targets+=(serve train gpu) ;;
    -h|--help) usage ;;
    *) echo "build-images: unknown target or option '$arg' (serve, train, gpu, all, --local-base)" >&2; exit 2 ;;
  esac
done
((${#targets[@]})) || targets=(serve train gpu)

engine="${TRAINKITE_CONTAINER_ENGINE:-}"
if [[ -z "$engine" ]]; then
  if command -v docker >/dev/null && timeout 10 docker info >/dev/null 2>&1; then engine=docker
  elif command -v podman >/dev/null; then engine=podman
  else echo "build-images: no container engine (docker with a running daemon, or podman); see scripts/container-engine.sh" >&2; exit 1
  fi
fi
[[ "$engine" == docker || "$engine" == podman ]] \
  || { echo "TRAINKITE_CONTAINER_ENGINE=$engine must be docker or podman" >&2; exit 2; }

commit="$(git rev-parse HEAD)"
if [[ -n "$(git status --porcelain --untracked-files=no)" ]]; then
  commit="$commit-dirty"
  echo "build-images: uncommitted changes; tagging $commit" >&2
fi

args=(--build-arg "GIT_COMMIT=$commit")
if [[ "$local_base" == 1 ]]; then
  [[ "$engine" == podman ]] || { echo "build-images: --local-base needs podman (scripts/local-base.sh)" >&2; exit 2; }
  base="${TRAINKITE_LOCAL_BASE_IMAGE:-localhost/trainkite-base:bookworm-py311}"
  TRAINKITE_LOCAL_BASE="$base" "$REPO_ROOT/scripts/local-base.sh"
  args+=(--build-arg "BASE_IMAGE=$base" --pull=never)
fi

tmp="$(mktemp -d /tmp/trainkite-build.XXXXXX)"
trap 'rm -rf "$tmp"' EXIT
if [[ "$engine" == podman ]]; then
  pip_cmd=(python3 -m pip)
  command -v python3 >/dev/null && python3 -m pip --version >/dev/null 2>&1 || pip_cmd=(pip)
  # `pip config list` prints the merged settings as  section.key='value'  (env vars as :env:.key='value').
  { echo "[global]"
    # The environment's value first (it is the one pip uses), then a key only once.
    "${pip_cmd[@]}" config list 2>/dev/null | sed -n "s/^[^.]*\.\([a-z-]*\)='\(.*\)'$/\1 = \2/p" | awk '!seen[$1]++'
  } >"$tmp/pip.conf"
  # An index a Dockerfile names (--index-url) that does not answer here would cost pip five retries with
  # backoff for every package it looks up; with retries 0 it moves on to the configured find-links and indexes.
  for url in $(grep -ho -- '--index-url [^ ]*' infra/docker/Dockerfile.* | awk '{print $2}' | sort -u); do
    if ! timeout 15 python3 -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=10)" \
        "$url/" >/dev/null 2>&1; then
      echo "build-images: $url does not answer here; pip in the build runs with retries = 0" >&2
      grep -q '^retries = ' "$tmp/pip.conf" || echo "retries = 0" >>"$tmp/pip.conf"
    fi
  done
  args+=(--network host -v "$tmp/pip.conf:/etc/pip.conf:ro")
  # podman 4.3's buildah reuses a cached `ENV X=${ARG}` layer built with another value of the ARG: a rebuild
  # for a new commit whose files are unchanged kept the old commit. Set both on the final image instead.
  args+=(--env "TRAINKITE_GIT_COMMIT=$commit" --label "org.opencontainers.image.revision=$commit")
  declare -A mounted=()
  for value in $(sed -n 's/^[a-z-]* = //p' "$tmp/pip.conf"); do
    path="${value#file://}"
    # A file:// index's pages link to the files beside it (../../files/...): mount the folder above it.
    [[ "$value" == file://* ]] && path="$(dirname "$path")"
    [[ "$path" == /* && -e "$path" ]] || continue
    [[ -z "${mounted[$path]:-}" ]] || continue
    mounted[$path]=1
    args+=(-v "$path:$path:ro")
  done
fi

dockerfile() {
  case "$1" in serve) echo infra/docker/Dockerfile.serve ;; train) echo infra/docker/Dockerfile.cpu ;;
    gpu) echo infra/docker/Dockerfile.gpu ;; esac
}

for target in "${targets[@]}"; do
  image="trainkite-$target:$commit"
  start=$(date +%s)
  echo "build-images: $engine build $target -> $image" >&2
  "$engine" build "${args[@]}" -f "$(dockerfile "$target")" -t "$image" . >&2
  echo "build-images: $image built in $(( $(date +%s) - start )) s" >&2
  echo "$target $image"
done
