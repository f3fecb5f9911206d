"""One program, or a directory of them, on the model and the kernel, compared: ``procfuzz
repro`` (one case side by side) and ``procfuzz replay`` (a directory, e.g. the regressions)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from reference.program import Program
from reference.trace import Trace
from targets.base import Target

from fuzz.compare.oracle import Divergence, compare


@dataclass(frozen=True)
class Case:
    program: Program
    expected: Trace
    actual: Trace
    divergence: Divergence | None
    path: Path | None = None


def run_case(program: Program, model: Target, kernel: Target, path: Path | None = None) -> Case:
    """The model first: a program the model fails on is not run on the kernel (a procfuzz bug)."""
    expected = model.run(program)
    actual = kernel.run(program) if expected.outcome == "ok" else expected
    return Case(program, expected, actual, compare(program, expected, actual), path)


def replay(programs: Iterable[tuple[Path, Program]], model: Target, kernel: Target) -> Iterator[Case]:
    for path, program in programs:
        yield run_case(program, model, kernel, path)
