"""The automatic follow-up of a new bug: minimise its representative finding on the kernel it
was found on, re-run it on every kernel of the matrix, export the C reproducer.  The steps are
fuzz.triage.follow_up's (`procfuzz minimize`, `reproduce`, `export-c`), each leaving its
artifact in the finding directory before the database hears of it."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from reference.program import Program
from reference.trace import Trace
from targets.base import Target

from fuzz.errors import ToolError
from fuzz.execute.kernels import KernelSpec, TargetOpener
from fuzz.record import store
from fuzz.triage.follow_up import (ModelFor, as_recorded, export_finding, kernel_finding, minimize_finding,
                                   reproduce_finding)
from fuzz.triage.minimize import NotReproduced

from .config import ServeConfig


@dataclass(frozen=True)
class FollowUpResult:
    ok: bool
    detail: str                                       # what happened, step by step, for people
    reproducibility: tuple[tuple[str, str, int, int], ...] = ()   # (kernel label, _configured, diverged, runs)


def matrix(config: ServeConfig, zoo: str | None) -> list[KernelSpec]:
    """Every fuzzed kernel as configured, each fuzzed and follow-up pin with the finding's zoo
    bug (a zoo bug is injected, so whether it shows on another kernel is the question), each
    once, in that order."""
    specs = [kernel.spec for kernel in config.kernels]
    pins = [kernel.pin for kernel in config.kernels] + list(config.follow_up_pins)
    specs += [KernelSpec(pin, zoo) for pin in pins]
    return list(dict.fromkeys(specs))


def follow_up_finding(directory: Path, config: ServeConfig, open_target: TargetOpener, model_for: ModelFor,
                      step: Callable[[str], None]) -> FollowUpResult:
    """Minimise (if configured and not done), reproduce on the matrix, export C; ``step`` is
    told each step's name as it starts.  A step that fails ends the follow-up with its reason."""
    notes = []
    try:
        finding = kernel_finding(directory)
        spec = as_recorded(finding, KernelSpec())
        if config.minimize and store.minimized_path(directory) is None:
            step("minimise")
            try:
                result = minimize_finding(directory, spec, config.retries, open_target, model_for)
                notes.append(f"minimised {len(finding.program)} -> {len(result.program)} ops "
                             f"in {result.kernel_runs} kernel runs")
            except NotReproduced as err:
                notes.append(f"not minimised: {err}")
        step("reproduce")
        kernels = matrix(config, spec.zoo)
        reproduced = reproduce_finding(directory, kernels, config.runs, open_target, model_for)
        rows = tuple((label, _configured(kernel), diverged, runs)
                     for kernel, (label, (diverged, runs)) in zip(kernels, reproduced.counts.items()))
        notes.append("reproduced on " + ", ".join(f"{label}: {d}/{n}" for label, _, d, n in rows))
        step("export")
        export = export_finding(directory, model_for=model_for)
        notes.append(f"C reproducer of the {export.which} program")
        return FollowUpResult(True, "; ".join(notes), rows)
    except ToolError as err:
        return FollowUpResult(False, "; ".join([*notes, str(err)]))


def _configured(spec: KernelSpec) -> str:
    """A kernel as configured, whatever package its pin names today: a new label under the same
    name is a newer kernel (fuzz/serve/records.py record_reproducibility tells fixed bugs by it)."""
    return (spec.pin or "default") + (f" +zoo:{spec.zoo}" if spec.zoo else "")


class Stopped(ToolError):
    """The manager is stopping: a follow-up is cut short at its next kernel run (and queued
    again at the next start), so that no guest outlives the manager."""


class _StoppableTarget:
    """A started target whose next run raises Stopped once the manager stops."""

    def __init__(self, target: Target, stopping: threading.Event):
        self._target, self._stopping = target, stopping

    @property
    def label(self) -> str:
        return self._target.label

    @property
    def restarts(self) -> int:
        return self._target.restarts

    @property
    def host_faults(self) -> int:
        return self._target.host_faults

    @property
    def measure_leaks(self) -> bool:
        return self._target.measure_leaks

    @measure_leaks.setter
    def measure_leaks(self, value: bool) -> None:
        self._target.measure_leaks = value

    def _check(self) -> None:
        if self._stopping.is_set():
            raise Stopped("the service is stopping")

    def run(self, program: Program) -> Trace:
        self._check()
        return self._target.run(program)

    def restart(self) -> None:
        self._check()
        self._target.restart()

    def close(self) -> None:
        self._target.close()


def stoppable(open_target: TargetOpener, stopping: threading.Event) -> TargetOpener:
    """``open_target`` whose targets stop running programs once ``stopping`` is set."""
    @contextmanager
    def open_stoppable(spec: KernelSpec) -> Iterator[Target]:
        if stopping.is_set():
            raise Stopped("the service is stopping")
        with open_target(spec) as target:
            yield _StoppableTarget(target, stopping)
    return open_stoppable
