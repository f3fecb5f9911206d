"""One re-run of a finding's program: does the kernel show the finding again?

Minimisation and reproducibility both ask it.  A divergence shows again when a run diverges
from the model with the same signature; a leak when the leak oracle's re-check (1 + RERUNS
measured runs) confirms at least its caches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from reference.program import Program
from reference.trace import Trace
from targets.base import Target

from fuzz.compare.leaks import Leak, leak_check
from fuzz.compare.oracle import Divergence, compare
from fuzz.execute.kernels import run_on_kernel
from fuzz.record.finding import Finding
from fuzz.record.signature import signature


@dataclass(frozen=True)
class Goal:
    """What a re-run must show: the finding's signature, and for a leak its caches."""
    signature: str
    leak: Leak | None = None

    @classmethod
    def of(cls, finding: Finding) -> "Goal":
        return cls(finding.signature, finding.divergence.leak)


def divergence_with(goal: Goal, program: Program, expected: Trace, actual: Trace) -> tuple[Divergence | None, str]:
    """(the divergence of this kernel run when its signature is the goal's, else None; the
    signature the run showed, '' when it agrees with the model)."""
    divergence = compare(program, expected, actual)
    if divergence is None:
        return None, ""
    seen = signature(program, expected.results, divergence)
    return (divergence if seen == goal.signature else None), seen


def kernel_runner(target: Target, goal: Goal) -> Callable[[Program], Trace]:
    """The target's run (a lost guest re-run once), measuring slab counts when the goal is a leak."""
    target.measure_leaks = goal.leak is not None
    return lambda program: run_on_kernel(target, program)


def attempt(goal: Goal, program: Program, expected: Trace,
            run_kernel: Callable[[Program], Trace]) -> tuple[int | None, str]:
    """One try at reproducing the goal: (the index of the last op it needs, or None; the
    signature seen, '' for none).  A divergence costs one kernel run and needs no op after the
    divergent one; a leak costs 1 + RERUNS runs (run_kernel must measure: kernel_runner), needs
    the whole program and shows when the re-check confirms at least its caches (Leak.shows)."""
    if goal.leak is not None:
        confirmed = leak_check(lambda: run_kernel(program).extra.get("slab"))
        shown = goal.leak.shows(confirmed)
        return (len(program.ops) - 1 if shown else None), confirmed.signature if confirmed else ""
    divergence, seen = divergence_with(goal, program, expected, run_kernel(program))
    if divergence is None:
        return None, seen
    return (len(program.ops) - 1 if divergence.index is None else divergence.index), seen
