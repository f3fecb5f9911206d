"""The guest budget of the service: campaigns and follow-ups take QEMU guests from one pool,
so the machine never runs more than ``guests`` at once.  A follow-up has priority: while one
waits, campaigns get nothing new and just enough running campaigns are asked to stop
(``Lease.should_yield``), so a new bug is minimised within a stats tick rather than after a
campaign's whole budget, and the other campaigns go on."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator


class Lease:
    """Guests held by one campaign or follow-up."""

    def __init__(self, pool: "GuestPool", count: int, held: bool):
        self.pool, self.count, self.held = pool, count, held
        self.yielding = False

    def should_yield(self) -> bool:
        """Whether this holder should give its guests back for a waiting follow-up (once asked,
        it counts as leaving, so that no other holder is asked for the same guest)."""
        if not self.yielding:
            self.yielding = self.pool._claim(self.count)
        return self.yielding


class GuestPool:
    def __init__(self, capacity: int):
        self.capacity = capacity
        self._free = capacity
        self._urgent = 0                      # guests that waiting follow-ups need
        self._leaving = 0                     # guests of holders asked to yield, not yet back
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, count: int, urgent: bool, cancelled: threading.Event) -> Iterator[Lease]:
        """Hold ``count`` guests while inside; the lease is not ``held`` if ``cancelled`` was
        set before they were free."""
        lease = Lease(self, count, self._acquire(count, urgent, cancelled))
        try:
            yield lease
        finally:
            if lease.held:
                with self._cond:
                    self._free += count
                    self._leaving -= count if lease.yielding else 0
                    self._cond.notify_all()

    def _acquire(self, count: int, urgent: bool, cancelled: threading.Event) -> bool:
        with self._cond:
            self._urgent += count if urgent else 0
            try:
                while not (self._free >= count and (urgent or not self._urgent)):
                    if cancelled.is_set():
                        return False
                    self._cond.wait(timeout=0.5)
                self._free -= count
                return True
            finally:
                self._urgent -= count if urgent else 0

    def _claim(self, count: int) -> bool:
        with self._cond:
            if self._urgent > self._free + self._leaving:
                self._leaving += count
                return True
            return False

    def in_use(self) -> int:
        with self._cond:
            return self.capacity - self._free
