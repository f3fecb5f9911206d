"""`procfuzz run --report-to URL`: a campaign that reports to a `procfuzz serve` as it goes.

The run still writes its own OUT (nothing depends on the service being there).  A thread posts
the campaign's counters every few seconds (``/api/workers/<name>/stats``) and each finding
directory as the store renames it into place (``/api/import``, one finding an upload); the
names of the findings the service took are appended to ``OUT/reported``, so a worker restarted
on the same OUT does not send them again.  A service that cannot be reached or answers 5xx is
retried with a growing pause (up to a minute) while the campaign goes on: what it has not taken
stays on disk and goes when it is back.  A refusal of the token (401/403) stops the reporting,
never the fuzzing.  The service takes a finding once, whatever upload repeats it, so a crash
between a post and the ledger line costs nothing; `procfuzz push URL OUT` sends whatever is
left after the campaign.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from fuzz.record.summary import Stats
from fuzz.serve.client import ServiceError, post
from fuzz.serve.upload import pack_findings
from fuzz.triage.bugs import finding_dirs

LEDGER = "reported"
MAX_PAUSE = 60.0


class Reporter:
    def __init__(self, url: str, out: Path, worker: str, kernel: str, token: str | None = None,
                 every: float = 5.0, timeout: float = 30.0):
        self.url, self.out, self.worker, self.kernel, self.token = url, Path(out), worker, kernel, token
        self.every, self.timeout = every, timeout
        self.sent = 0                        # findings the service took in this run
        self.error: str | None = None        # the last failure, None after a success
        self.refused = False                 # the token was refused: no more posts
        self._stats: Stats | None = None
        self._pause = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="report-to", daemon=True)

    def update(self, stats: Stats) -> None:
        """The campaign's latest counters (its on_update callback)."""
        self._stats = stats

    def __enter__(self) -> "Reporter":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.flush()                         # the last counters and findings, one attempt

    def pending(self) -> list[Path]:
        """Finding directories of OUT the service has not taken yet."""
        done = self._ledger()
        return [d for d in sorted(finding_dirs([self.out], lambda text: None)) if d.name not in done]

    def flush(self) -> bool:
        """Post the counters and every pending finding; whether all went."""
        if self.refused:
            return False
        try:
            if self._stats is not None:
                body = json.dumps({"kernel": self.kernel, "stats": self._stats.to_json()}).encode()
                post(self.url, f"/api/workers/{self.worker}/stats", body, "application/json", self.token, self.timeout)
            for directory in self.pending():
                post(self.url, "/api/import", pack_findings([directory], self.out), "application/gzip",
                     self.token, self.timeout)
                self._record(directory.name)
        except ServiceError as err:
            self.error = str(err)
            self.refused = err.status in (401, 403)
            return False
        self.error = None
        return True

    def _loop(self) -> None:
        while not self._stop.wait(self._pause):
            self._pause = self.every if self.flush() else min(self._pause * 2, MAX_PAUSE)
            if self.refused:
                return

    def _ledger(self) -> set[str]:
        try:
            return set((self.out / LEDGER).read_text().split())
        except FileNotFoundError:
            return set()

    def _record(self, name: str) -> None:
        with open(self.out / LEDGER, "a") as ledger:
            ledger.write(name + "\n")
            ledger.flush()
            os.fsync(ledger.fileno())
        self.sent += 1

    def describe(self) -> str:
        left = len(self.pending())
        state = f"refused: {self.error}" if self.refused else (self.error or "ok")
        return (f"reported to {self.url}: {self.sent} finding(s) sent, {left} not taken yet ({state})"
                + (f"; `procfuzz push {self.url} {self.out}` sends them" if left else ""))
