"""One program, or a directory of them, on the model and the kernel, compared op by op with the
known issues in mind: ``procfuzz repro`` (one case side by side) and ``procfuzz replay`` (a
directory, e.g. the regressions)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from reference.program import Program
from reference.trace import Trace
from targets.base import Target

from fuzz.compare.oracle import Comparison, Divergence, compare_all
from fuzz.execute.kernels import run_on_kernel
from fuzz.record.known import KnownIssues


@dataclass(frozen=True)
class Case:
    program: Program
    expected: Trace
    actual: Trace
    comparison: Comparison
    path: Path | None = None

    @property
    def divergence(self) -> Divergence | None:
        """What the case shows: its first divergence that no known issue explains, else None."""
        primary = self.comparison.primary
        return None if primary is None or self.comparison.all_known else primary

    def verdict(self) -> str:
        if self.divergence is not None:
            return "DIVERGES"
        return "known" if self.comparison.all_known else "ok"


def run_case(program: Program, model: Target, kernel: Target, known: KnownIssues = KnownIssues(),
             path: Path | None = None) -> Case:
    """The model first: a program the model fails on is not run on the kernel (a procfuzz bug)."""
    expected = model.run(program)
    actual = run_on_kernel(kernel, program) if expected.outcome == "ok" else expected
    return Case(program, expected, actual, compare_all(program, expected, actual, known.explainer(kernel.label)), path)


def replay(programs: Iterable[tuple[Path, Program]], model: Target, kernel: Target,
           known: KnownIssues = KnownIssues()) -> Iterator[Case]:
    for path, program in programs:
        yield run_case(program, model, kernel, known, path)
