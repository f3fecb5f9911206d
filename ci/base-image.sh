#!/bin/bash
# Make the Dockerfile's base image locally when no registry is reachable: debootstrap a minimal
# Debian bookworm from the Debian mirror and `docker import` it under the official tag, so
# ci/Dockerfile builds unchanged. Does nothing when the tag already exists.
#   usage: ci/base-image.sh [TAG]        (default debian:bookworm-slim; MIRROR overrides the mirror)
set -euo pipefail
TAG="${1:-debian:bookworm-slim}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
if docker image inspect "$TAG" >/dev/null 2>&1; then
    echo "base-image: $TAG already present"
    exit 0
fi
ROOT="$(mktemp -d /var/tmp/procfuzz-base.XXXXXX)"
trap 'rm -rf "$ROOT"' EXIT
started=$(date +%s)
debootstrap --variant=minbase bookworm "$ROOT" "$MIRROR" >"$ROOT.log" 2>&1 || {
    tail -20 "$ROOT.log" >&2; rm -f "$ROOT.log"; exit 1; }
rm -f "$ROOT.log"
# The suites of the official image: kernels pinned from bookworm-security must be reachable too.
rm -f "$ROOT/etc/apt/sources.list"
cat >"$ROOT/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: ${MIRROR}
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${MIRROR%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/*
tar -C "$ROOT" --numeric-owner -c . | docker import \
    --change 'CMD ["bash"]' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    - "$TAG" >/dev/null
echo "base-image: imported $TAG in $(( $(date +%s) - started )) s"
