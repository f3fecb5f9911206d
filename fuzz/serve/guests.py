"""The guest budget of the service: campaigns and follow-ups take QEMU guests from one pool,
so the machine never runs more than ``guests`` at once.  A follow-up has priority: while one
waits, campaigns get nothing new and a running campaign is asked to stop (``wanted``), so a
new bug is minimised within one stats tick rather than after a campaign's whole budget."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator


class GuestPool:
    def __init__(self, capacity: int):
        self.capacity = capacity
        self._free = capacity
        self._urgent = 0                      # follow-ups waiting
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, count: int, urgent: bool, cancelled: threading.Event) -> Iterator[bool]:
        """Hold ``count`` guests while inside; yields False (holding none) if ``cancelled`` is
        set before they are free."""
        got = self._acquire(count, urgent, cancelled)
        try:
            yield got
        finally:
            if got:
                with self._cond:
                    self._free += count
                    self._cond.notify_all()

    def _acquire(self, count: int, urgent: bool, cancelled: threading.Event) -> bool:
        with self._cond:
            self._urgent += urgent
            try:
                while not (self._free >= count and (urgent or not self._urgent)):
                    if cancelled.is_set():
                        return False
                    self._cond.wait(timeout=0.5)
                self._free -= count
                return True
            finally:
                self._urgent -= urgent

    def wanted(self) -> bool:
        """A follow-up waits for a guest that is not free."""
        with self._cond:
            return self._urgent > 0 and self._free < 1

    def in_use(self) -> int:
        with self._cond:
            return self.capacity - self._free
