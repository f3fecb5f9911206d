#!/bin/bash
# One nightly worker: shard SHARD/N (0-based: 0/4 .. 3/4) of tonight's campaign on KERNEL for
# BUDGET (e.g. 45m). Writes OUT/KERNEL/shard-I-of-N/ (findings, corpus, summary.json), so any
# number of workers can share OUT.
#   usage: ci/nightly-worker.sh KERNEL SHARD/N BUDGET OUT
# Every shard of one night needs the same seed (NIGHTLY_SEED; default: the UTC date, YYYYMMDD):
# their random streams are then disjoint. NIGHTLY_RUN_ARGS adds `procfuzz run` options.
# With PROCFUZZ_URL set (token in PROCFUZZ_TOKEN), the worker also reports to that `procfuzz
# serve` as it goes (counters, findings, corpus exchange); a service away never fails the worker:
# OUT is complete, and ci/nightly-triage.sh pushes the merged findings after.
# Exit: 0 whether or not something was found (triage decides what is new), 2 if procfuzz failed.
set -euo pipefail
if [ $# -ne 4 ]; then
    echo "usage: $0 KERNEL SHARD/N BUDGET OUT" >&2
    exit 2
fi
KERNEL="$1" SHARD="$2" BUDGET="$3" OUT="$4"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"     # this checkout's procfuzz
SEED="${NIGHTLY_SEED:-$(date -u +%Y%m%d)}"
report_args=()
if [ -n "${PROCFUZZ_URL:-}" ]; then
    report_args=(--report-to "$PROCFUZZ_URL" --worker-name "nightly-$KERNEL-shard-${SHARD/\//-of-}")
    if [ -n "${PROCFUZZ_TOKEN:-}" ]; then
        token_file="$(mktemp)"
        trap 'rm -f "$token_file"' EXIT
        printf '%s' "$PROCFUZZ_TOKEN" > "$token_file"
        report_args+=(--token-file "$token_file")
    fi
fi
status=0
# shellcheck disable=SC2086  # NIGHTLY_RUN_ARGS is a list of options
python3 -m fuzz.cli run --kernel "$KERNEL" --shard "$SHARD" --budget "$BUDGET" --seed "$SEED" \
    --out "$OUT/$KERNEL" "${report_args[@]}" ${NIGHTLY_RUN_ARGS:-} || status=$?
if [ "$status" = 1 ]; then
    status=0
fi
exit "$status"
