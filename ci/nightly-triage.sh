#!/bin/bash
# The nightly's last step: merge every worker output found under IN_DIR (e.g. the downloaded
# artifacts of ci/nightly-worker.sh) into OUT_DIR/merged, then triage it against the known
# issues; the reports (report.md, report.html, report.json, junit.xml, report.sarif) go to OUT_DIR.
#   usage: ci/nightly-triage.sh IN_DIR OUT_DIR
# NIGHTLY_TRIAGE_ARGS adds `procfuzz triage` options.
# Exit: triage's: 0 nothing new, 1 new bugs, 2 procfuzz failed (merging included).
set -euo pipefail
if [ $# -ne 2 ]; then
    echo "usage: $0 IN_DIR OUT_DIR" >&2
    exit 2
fi
IN_DIR="$1" OUT_DIR="$2"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"     # this checkout's procfuzz
mkdir -p "$OUT_DIR"
python3 -m fuzz.cli merge "$OUT_DIR/merged" "$IN_DIR" || exit 2
status=0
# shellcheck disable=SC2086  # NIGHTLY_TRIAGE_ARGS is a list of options
python3 -m fuzz.cli triage "$OUT_DIR/merged" --known "$REPO/corpus/known-issues.toml" \
    --report "$OUT_DIR" ${NIGHTLY_TRIAGE_ARGS:-} || status=$?
exit "$status"
