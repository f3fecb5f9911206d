"""Live campaign status: a rich panel on a terminal (in the spirit of AFL's status screen), a
plain log line per minute otherwise (CI logs)."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.live import Live
from rich.table import Table

from fuzz.record.summary import Stats

LOG_EVERY = 60.0


class StatusDisplay:
    def __init__(self, kernel: str, workers: int, budget: float):
        self.kernel, self.workers, self.budget = kernel, workers, budget
        self.started = time.monotonic()
        self.interactive = sys.stdout.isatty()
        self.live = Live(self._render(Stats()), refresh_per_second=2, console=Console()) if self.interactive else None
        self.last_log = self.started

    def __enter__(self):
        if self.live:
            self.live.__enter__()
        return self

    def __exit__(self, *exc):
        if self.live:
            self.live.__exit__(*exc)

    def update(self, stats: Stats) -> None:
        if self.live:
            self.live.update(self._render(stats))
        elif time.monotonic() - self.last_log >= LOG_EVERY:
            self.last_log = time.monotonic()
            print(self.line(stats), flush=True)

    def line(self, stats: Stats) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        found = ", ".join(f"{k}={v}" for k, v in sorted(stats.findings.items())) or "none"
        return (f"[{elapsed:7.0f}s] programs={stats.programs} ({stats.programs / elapsed:.1f}/s) "
                f"ops/s={stats.ops / elapsed:.0f} corpus+={stats.corpus_added} features={stats.features} "
                f"findings: {found} leak_suspects={stats.leak_suspects} unconfirmed_leaks={stats.unconfirmed} restarts={stats.restarts} host_faults={stats.host_faults}")

    def _render(self, stats: Stats) -> Table:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        table = Table(title=f"procfuzz  {self.kernel}  {self.workers} worker(s)", show_header=False)
        table.add_column(style="bold cyan")
        table.add_column()
        rows = [
            ("run time", f"{elapsed:.0f}s of {self.budget:.0f}s"),
            ("programs", f"{stats.programs}  ({stats.programs / elapsed:.2f}/s)"),
            ("ops", f"{stats.ops}  ({stats.ops / elapsed:.0f}/s)"),
            ("guest share", f"{stats.guest_us / 1e6 / elapsed / max(self.workers, 1):.0%} of wall time"),
            ("corpus added", str(stats.corpus_added)),
            ("model coverage", f"{stats.features} features"),
            *([("kernel coverage", f"{stats.kernel_functions} functions")] if stats.kernel_functions else []),
            ("findings", ", ".join(f"{k}: {v}" for k, v in sorted(stats.findings.items())) or "none"),
            ("duplicates", str(stats.duplicates)),
            ("leaks", f"{stats.leak_suspects} suspects, {stats.unconfirmed} unconfirmed"),
            ("VM restarts", str(stats.restarts)),
            ("host faults", str(stats.host_faults)),
            ("tool errors", str(len(stats.errors))),
            ("stopped workers", "; ".join(stats.stopped) or "none"),
        ]
        for key, value in rows:
            table.add_row(key, value)
        return table
