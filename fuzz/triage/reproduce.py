"""Reproducibility of a bug across the kernel matrix: each kernel tries the program N times and
counts the tries that show the bug again (fuzz/triage/rerun.py attempt: a run that diverges from
the model with its signature, or a leak re-check).  A verdict is reliable (every try), flaky (k
of N) or not reproducible."""

from __future__ import annotations

from typing import Callable, Iterable

from reference.program import Program
from targets.base import Target

from fuzz.execute.kernels import KernelSpec, TargetOpener, model_for as default_model_for, open_qemu

from .rerun import Goal, attempt, kernel_runner


def verdict(diverged: int, runs: int) -> str:
    if runs and diverged == runs:
        return f"reliable ({runs} of {runs})"
    if diverged:
        return f"flaky ({diverged} of {runs})"
    return f"not reproducible (0 of {runs})"


def reproducibility(program: Program, goal: Goal, kernels: Iterable[KernelSpec | Target], runs: int,
                    open_target: TargetOpener = open_qemu,
                    model_for: Callable[[str | None], Target] = default_model_for) -> dict[str, tuple[int, int]]:
    """{kernel label: (runs that showed the goal, runs)}, keyed by the label of the kernel that
    ran (targets/qemu.py kernel_label: package=version, plus any injected zoo bug or module, as
    findings and triage name kernels).  A kernel is a KernelSpec, booted with open_target, or a
    started target.  model_for(pin or label) gives the model with that kernel's profile."""
    counts = {}
    for kernel in kernels:
        if isinstance(kernel, KernelSpec):
            with open_target(kernel) as target:
                counts[target.label] = _count(program, goal, target, model_for(kernel.pin), runs)
        else:
            counts[kernel.label] = _count(program, goal, kernel, model_for(kernel.label), runs)
    return counts


def _count(program: Program, goal: Goal, target: Target, model: Target, runs: int) -> tuple[int, int]:
    expected = model.run(program)
    if expected.outcome != "ok":
        raise ValueError(f"the model fails on this program (a procfuzz bug): {expected.title}")
    run_kernel = kernel_runner(target, goal)
    diverged = sum(attempt(goal, program, expected, run_kernel)[0] is not None for _ in range(runs))
    return diverged, runs
