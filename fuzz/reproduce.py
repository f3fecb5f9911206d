"""Reproducibility of a bug across the kernel matrix: each kernel tries the program N times and
counts the tries that show the bug's signature (fuzz/minimize.py attempt: a run that diverges
from the model with it, or a leak re-check).  A verdict is reliable (every try), flaky (k of N)
or not reproducible."""

from __future__ import annotations

from typing import Callable, Iterable

from reference.program import Program

from .minimize import attempt, kernel_runner


def verdict(diverged: int, runs: int) -> str:
    if runs and diverged == runs:
        return f"reliable ({runs} of {runs})"
    if diverged:
        return f"flaky ({diverged} of {runs})"
    return f"not reproducible (0 of {runs})"


def reproducibility(program: Program, signature: str, kernels: Iterable, runs: int,
                    open_target: Callable[[str], object] | None = None,
                    model_for: Callable[[str], object] | None = None) -> dict[str, tuple[int, int]]:
    """{kernel label: (runs that diverged with the signature, runs)}, keyed by the label of the
    kernel that ran (targets/qemu.py kernel_label: package=version, plus any injected zoo bug or
    module, as findings and triage name kernels).  A kernel is a pin name, booted with
    open_target(name) (a context manager giving a target; default: QemuTarget(name)), or a started
    target.  model_for(name or label) gives the model target with that kernel's profile (default:
    ModelTarget(load_profile(...)))."""
    from targets.kernels import load_profile
    from targets.model import ModelTarget
    model_for = model_for or (lambda kernel: ModelTarget(load_profile(kernel)))
    if open_target is None:
        from targets.qemu import QemuTarget
        open_target = QemuTarget
    counts = {}
    for kernel in kernels:
        if isinstance(kernel, str):
            with open_target(kernel) as target:
                counts[target.label] = _count(program, signature, target, model_for(kernel), runs)
        else:
            counts[kernel.label] = _count(program, signature, kernel, model_for(kernel.label), runs)
    return counts


def _count(program: Program, signature: str, target, model, runs: int) -> tuple[int, int]:
    expected = model.run(program)
    if expected.outcome != "ok":
        raise ValueError(f"the model fails on this program (a procfuzz bug): {expected.title}")
    run_kernel = kernel_runner(target, signature)
    diverged = sum(attempt(signature, program, expected, run_kernel)[0] is not None for _ in range(runs))
    return diverged, runs
