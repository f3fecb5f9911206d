"""The interface every target implements: the reference model, the QEMU guest, and the fake
kernels of the tests.  The engine knows targets only through it."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from reference.program import Program
from reference.trace import Trace


@runtime_checkable
class Target(Protocol):
    label: str             # what findings name: "model", or package=version [+zoo:BUG +module.ko]
    restarts: int          # VM restarts so far (a crash, hang or lost guest restarts it)
    host_faults: int       # guests lost with no kernel report (trace outcome "lost")
    measure_leaks: bool    # report settled slab counts (trace.extra["slab"]) after each program

    def run(self, program: Program) -> Trace: ...

    def cpu_seconds(self) -> float: ...      # host CPU its guests used so far (0: none of its own)

    def restart(self) -> None: ...           # a fresh kernel: the leak oracle confirms a leak in one

    def close(self) -> None: ...
