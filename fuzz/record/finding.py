"""A finding: a program whose kernel run diverged from the model (or crashed, hung or leaked),
with both traces, the divergence and what re-runs showed."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from reference.program import Program
from reference.trace import Trace

from fuzz.compare.oracle import KNOWN, Divergence

from . import signature as signatures


@dataclass(frozen=True)
class Finding:
    program: Program
    expected: Trace
    actual: Trace
    divergence: Divergence
    kernel: str                          # the kernel label it ran on (targets.qemu.kernel_label)
    console: str = ""
    reruns: tuple[int, int] = (0, 0)     # (runs that diverged the same way, re-runs done)
    others: tuple[Divergence, ...] = ()  # the run's other divergences: known issues, consequences, later ones

    @property
    def is_known(self) -> bool:
        """A known issue explains it (and every other divergence of its run)."""
        return self.divergence.role == KNOWN

    @property
    def leak_confirmed(self) -> bool:
        """A leak counts only if its confirmation re-runs all showed it (``reruns``); anything
        else confirms by being seen."""
        return self.divergence.leak is None or self.reruns[0] == self.reruns[1]

    @cached_property             # a finding is immutable; triage asks for these per grouping
    def signature(self) -> str:
        """Stable across runs, workers and kernels (fuzz/record/signature.py)."""
        return signatures.signature(self.program, self.expected.results, self.divergence)

    @cached_property
    def bug_key(self) -> str:
        """What triage groups by (fuzz/record/signature.py bug_key)."""
        return signatures.bug_key(self.program, self.expected.results, self.divergence)
