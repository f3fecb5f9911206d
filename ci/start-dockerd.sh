#!/bin/bash
# Start the Docker engine (Debian's docker.io) unless one already answers; idempotent.
# Machines without systemd (containers, CI sandboxes) have nothing else to start it.
set -euo pipefail
LOG="${DOCKERD_LOG:-/var/log/procfuzz-dockerd.log}"
if docker info >/dev/null 2>&1; then
    exit 0
fi
if ! command -v dockerd >/dev/null; then
    echo "start-dockerd: no dockerd (apt-get install docker.io)" >&2
    exit 1
fi
if [ "$(id -u)" != 0 ]; then
    echo "start-dockerd: no Docker engine answers, and only root can start dockerd" >&2
    exit 1
fi
setsid dockerd >"$LOG" 2>&1 </dev/null &
for _ in $(seq 60); do
    if docker info >/dev/null 2>&1; then
        exit 0
    fi
    sleep 1
done
echo "start-dockerd: dockerd did not answer within 60 s; the end of $LOG:" >&2
tail -20 "$LOG" >&2
exit 1
