#!/bin/bash
# Set up a fresh Debian/Ubuntu machine for procfuzz: QEMU, busybox, the C toolchain for the
# guest agent, procfuzz itself, the default kernel (downloaded with apt-get download), and the
# Docker engine plus debootstrap for the worker image (ci/Dockerfile, ci/base-image.sh),
# chromium, in which the tests look at the HTML triage report and (with chromium-driver) the
# service's dashboard, and postgresql, which the service's database tests start in a temporary
# directory.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
# An engine that is already there (e.g. docker-ce on CI runners) is kept: docker.io conflicts with it.
DOCKER_ENGINE="docker.io"
if command -v dockerd >/dev/null; then DOCKER_ENGINE=""; fi
$SUDO apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    qemu-system-x86 busybox-static cpio gcc libc6-dev python3-pip python3-venv xz-utils \
    debootstrap chromium chromium-driver postgresql $DOCKER_ENGINE >/dev/null
python3 -m pip install -q -e . -c ci/constraints.txt 2>&1 | grep -v -e "Running pip as the 'root' user" -e "^WARNING: Location" || true
procfuzz kernels fetch
procfuzz kernels fetch 6.12-cloud
$SUDO bash ci/start-dockerd.sh || echo "setup: no Docker engine: the docker tests will be skipped" >&2
