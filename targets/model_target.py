"""The model target: runs a program on the reference model and returns its Trace.

It implements the Target protocol (targets/base.py) like the QEMU target, so the engine treats
both sides alike.  An exception inside the model is a procfuzz bug: it is reported as a
Trace with outcome "error", never swallowed and never mistaken for a kernel result.
"""

from __future__ import annotations

import traceback

from reference.model import Kernel
from reference.profile import KernelProfile
from reference.program import Program
from reference.trace import Trace


class ModelTarget:
    label = "model"
    restarts = host_faults = 0
    measure_leaks = False       # the model has no slab caches

    def __init__(self, profile: KernelProfile, model: type[Kernel] = Kernel):
        """``model``: the kernel model to run (tests pass one with a planted mistake)."""
        self.profile, self.model = profile, model

    def run(self, program: Program) -> Trace:
        kernel = self.model(self.profile)
        results = []
        for index, op in enumerate(program.ops):
            try:
                results.append(kernel.apply(op))
            except Exception as err:  # noqa: BLE001 - any model exception is our bug, reported as such
                return Trace(tuple(results), outcome="error", kernel="model",
                             title=f"model bug at op {index} ({op.to_text()}): {type(err).__name__}: {err}",
                             extra={"traceback": traceback.format_exc()})
        return Trace(tuple(results), kernel="model")

    def cpu_seconds(self) -> float:
        return 0.0              # the model runs in the caller's process

    def restart(self) -> None:
        pass                    # every run starts from a fresh model anyway

    def close(self) -> None:
        pass
