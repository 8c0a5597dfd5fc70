#!/usr/bin/env bash
# The local stand-in for the images' base, for machines that reach no image registry:
#   debootstrap --variant=minbase bookworm (from the Debian mirror apt already uses), `podman import`,
#   then Debian's Python 3.11 in a venv at /opt/venv (on PATH, so `pip install` and console scripts work
#   as in python:3.11-slim). Tagged $TRAINKITE_LOCAL_BASE (default localhost/trainkite-base:bookworm-py311).
#
# It is NOT python:3.11.14-slim-bookworm (Debian's 3.11.2, in a venv, not /usr/local) and is never tagged
# as that: build-images.sh --local-base passes it as the Dockerfiles' BASE_IMAGE build argument.
# Does nothing when the image exists. Needs root, podman, debootstrap.
set -euo pipefail

BASE="${TRAINKITE_LOCAL_BASE:-localhost/trainkite-base:bookworm-py311}"
if podman image exists "$BASE"; then
  exit 0
fi
MIRROR="${DEBIAN_MIRROR:-$(awk '/^URIs:/ {print $2; exit} /^deb / {print $2; exit}' \
  /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list 2>/dev/null || true)}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"

work="$(mktemp -d /tmp/trainkite-base.XXXXXX)"
trap 'rm -rf "$work"' EXIT
echo "local-base: debootstrap bookworm minbase from $MIRROR" >&2
debootstrap --variant=minbase bookworm "$work/root" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
  || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"*
tar -C "$work/root" -c . | podman import - localhost/trainkite-bookworm-minbase:latest >/dev/null

cat >"$work/Containerfile" <<'EOF'
FROM localhost/trainkite-bookworm-minbase:latest
ENV LANG=C.UTF-8 VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
       python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
    && python3 -m venv /opt/venv \
    && ln -s /opt/venv/bin/python /usr/local/bin/python
CMD ["python3"]
EOF
podman build --network host --pull=never -t "$BASE" -f "$work/Containerfile" "$work" >"$work/build.log" 2>&1 \
  || { tail -30 "$work/build.log" >&2; exit 1; }
echo "local-base: built $BASE" >&2
