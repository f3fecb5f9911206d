#!/bin/bash
# The nightly's last step: merge every worker output found under IN_DIR (e.g. the downloaded
# artifacts of ci/nightly-worker.sh) into OUT_DIR/merged, then triage it against the known
# issues; the reports (report.md, report.html, report.json, junit.xml, report.sarif) go to OUT_DIR.
#   usage: ci/nightly-triage.sh IN_DIR OUT_DIR
# NIGHTLY_TRIAGE_ARGS adds `procfuzz triage` options. With PROCFUZZ_URL set, the merged findings
# also go into that `procfuzz serve` (PROCFUZZ_TOKEN: its write token), whose dashboard keeps the
# bugs across nights (first seen, last seen, fixed); the service counts each finding once.
# Exit: triage's: 0 nothing new, 1 new bugs, 2 procfuzz failed (merging included, or the push:
# then after the reports are written).
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
if [ -n "${PROCFUZZ_URL:-}" ] && [ -n "$(ls -A "$OUT_DIR/merged/findings" 2>/dev/null)" ]; then
    token_args=()
    if [ -n "${PROCFUZZ_TOKEN:-}" ]; then
        token_file="$(mktemp)"
        trap 'rm -f "$token_file"' EXIT
        printf '%s' "$PROCFUZZ_TOKEN" > "$token_file"
        token_args=(--token-file "$token_file")
    fi
    if ! python3 -m fuzz.cli push "$PROCFUZZ_URL" "$OUT_DIR/merged" "${token_args[@]}"; then
        echo "nightly-triage: pushing to $PROCFUZZ_URL failed; the reports are complete:" \
             "push $OUT_DIR/merged again with procfuzz push" >&2
        status=2
    fi
fi
exit "$status"
