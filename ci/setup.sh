#!/bin/bash
# Set up a fresh Debian/Ubuntu machine for procfuzz: QEMU, busybox, the C toolchain for the
# guest agent, procfuzz itself, and the default kernel (downloaded with apt-get download).
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    qemu-system-x86 busybox-static cpio gcc libc6-dev python3-pip python3-venv xz-utils >/dev/null
python3 -m pip install -q -e . 2>&1 | grep -v -e "Running pip as the 'root' user" -e "^WARNING: Location" || true
procfuzz kernels fetch
procfuzz kernels fetch 6.12-cloud
