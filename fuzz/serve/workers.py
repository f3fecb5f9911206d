"""Remote workers: campaigns started elsewhere (`procfuzz run --report-to URL`, by the docker
or kubernetes runtimes or a CI matrix) post their counters every few seconds; the service
keeps the latest of each, in memory, for the dashboard's API.  A report is untrusted: its
worker name and kernel label are bounded, its counters parsed as a summary's (Stats)."""

from __future__ import annotations

import json
import re
import threading
import time

from fuzz.record.summary import Stats

WORKER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")
MAX_REPORT_BYTES = 64 << 10
STALE_SECONDS = 60              # no report for this long: the worker is shown as stale
MAX_WORKERS = 1000              # the oldest is forgotten first


class ReportError(ValueError):
    """A malformed report (answered 400; nothing is kept)."""


class RemoteWorkers:
    def __init__(self):
        self._latest: dict[str, dict] = {}
        self._lock = threading.Lock()

    def report(self, name: str, body: bytes, now: float | None = None) -> dict:
        """Keep a worker's report: JSON {"kernel": label, "stats": a summary's counters}."""
        if not WORKER_NAME.fullmatch(name):
            raise ReportError(f"bad worker name {name[:120]!r}")
        if len(body) > MAX_REPORT_BYTES:
            raise ReportError(f"a report of {len(body)} bytes exceeds {MAX_REPORT_BYTES}")
        try:
            doc = json.loads(body)
            kernel, stats = doc["kernel"], Stats.from_json(doc["stats"])
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise ReportError(f"malformed report: {err}") from None
        if not isinstance(kernel, str) or len(kernel) > 200:
            raise ReportError("the report's kernel must be a label of at most 200 characters")
        row = {"name": name, "kernel": kernel, "programs": stats.programs, "ops": stats.ops,
               "features": stats.features, "kernel_functions": stats.kernel_functions,
               "findings": sum(stats.findings.values()), "restarts": stats.restarts,
               "host_faults": stats.host_faults, "updated": int(time.time() if now is None else now)}
        with self._lock:
            self._latest.pop(name, None)
            self._latest[name] = row
            while len(self._latest) > MAX_WORKERS:
                self._latest.pop(next(iter(self._latest)))
        return row

    def rows(self, now: float | None = None) -> list[dict]:
        now = time.time() if now is None else now
        with self._lock:
            rows = [dict(row) for row in self._latest.values()]
        for row in rows:
            row["stale"] = now - row["updated"] > STALE_SECONDS
        return sorted(rows, key=lambda row: row["name"])
