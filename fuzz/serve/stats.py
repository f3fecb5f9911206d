"""A campaign's counters as stat points: one row per campaign and time bucket (a minute by
default) in the database, holding the bucket's latest counters, and the live counters the
dashboard shows between two points."""

from __future__ import annotations

import os
import time
from pathlib import Path

from fuzz.record import store
from fuzz.record.summary import Stats

from . import records
from .db import Database

WRITE_SECONDS = 5.0      # at most one database write per campaign this often (updates come every second)


class StatTracker:
    def __init__(self, db: Database, campaign_id: int, out: Path, bucket_seconds: int = 60):
        self.db, self.campaign_id, self.out = db, campaign_id, Path(out)
        self.bucket_seconds = bucket_seconds
        self.started = time.time()
        self._bucket = -1
        self._bucket_start = (self.started, 0)          # (time, programs) when the bucket began
        self._written, self._written_bucket = 0.0, -1
        self._live: dict = {}

    def update(self, stats: Stats, final: bool = False) -> dict:
        """The live counters; a stat point when the bucket changed or a while has passed."""
        now = time.time()
        bucket = int(now // self.bucket_seconds) * self.bucket_seconds
        if bucket != self._bucket:
            self._bucket, self._bucket_start = bucket, (now, self._live.get("programs", 0))
        since, programs_then = self._bucket_start
        rate = (stats.programs - programs_then) / (now - since) if now - since >= 1 else \
            self._live.get("programs_per_second", 0.0)
        self._live = {"campaign_id": self.campaign_id, "programs": stats.programs,
                      "programs_per_second": round(rate, 2), "features": stats.features,
                      "kernel_functions": stats.kernel_functions,
                      "corpus": _count(self.out / "corpus"), "restarts": stats.restarts,
                      "findings": len(store.list_findings(self.out)), "updated": int(now)}
        if final or now - self._written >= min(WRITE_SECONDS, self.bucket_seconds) or bucket != self._written_bucket:
            records.add_stat_point(self.db, records.StatPoint(
                self.campaign_id, bucket, stats.programs, self._live["programs_per_second"], stats.features,
                self._live["corpus"], stats.restarts, self._live["findings"], stats.kernel_functions))
            self._written = now
            self._written_bucket = bucket
        return self._live


def _count(directory: Path) -> int:
    try:
        with os.scandir(directory) as entries:
            return sum(1 for entry in entries if not entry.name.startswith("."))
    except OSError:
        return 0
