"""Following up a finding: minimise it, re-run it on a kernel matrix, export it as C.  Each step
reads the finding directory and leaves its artifact there (fuzz/record/store.py), so that triage
(``with_artifacts``) shows it; ``procfuzz minimize``, ``reproduce``, ``export-c`` and ``triage
--minimize/--kernels`` are these calls."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from reference.program import Program
from targets.base import Target
from targets.qemu import injected_zoo_bug, stock_label

from fuzz.compare.classes import KERNEL_CLASSES, FindingClass as C
from fuzz.errors import ToolError
from fuzz.execute.kernels import KernelSpec, TargetOpener, model_for as default_model_for, open_qemu
from fuzz.record import store
from fuzz.record.finding import Finding

from .bugs import Bug, with_artifacts
from .export_c import ExportError, export_c
from .minimize import DEFAULT_RETRIES, Minimized, NotReproduced, minimize
from .rerun import Goal, kernel_runner
from .reproduce import reproducibility

ModelFor = Callable[[str | None], Target]


def kernel_finding(directory: Path) -> Finding:
    """A finding whose class a re-run can show again (divergence, inconsistency, crash, hang, leak)."""
    finding = store.load(directory)
    if finding.divergence.cls not in KERNEL_CLASSES:
        raise ToolError(f"{directory}: a {finding.divergence.cls!r} finding is procfuzz's own failure, "
                        "not the kernel's: nothing to re-run")
    return finding


def as_recorded(finding: Finding, spec: KernelSpec) -> KernelSpec:
    """``spec`` with its pin and zoo bug defaulting to the kernel the finding ran on (its label
    names the package and any injected zoo bug)."""
    from targets.kernels import load_pins
    package = stock_label(finding.kernel).split("=", 1)[0]
    pin = spec.pin or next((name for name, pin in load_pins()[1].items() if pin.package == package), None)
    return KernelSpec(pin, spec.zoo or injected_zoo_bug(finding.kernel), spec.modules, spec.cpus)


def finding_program(directory: Path, finding: Finding) -> tuple[Program, str]:
    """The minimised program when the finding has one, else its own; with a word saying which."""
    minimized = store.read_minimized(directory)
    return (minimized, "minimised") if minimized else (finding.program, "original")


def minimize_finding(directory: Path, spec: KernelSpec, retries: int = DEFAULT_RETRIES,
                     open_target: TargetOpener = open_qemu, model_for: ModelFor = default_model_for) -> Minimized:
    """Minimise on the kernel ``spec`` names (as_recorded) and store minimized.prog and
    minimize.json; NotReproduced when the finding does not show again."""
    finding = kernel_finding(directory)
    if retries < 1:
        raise ToolError("--retries must be at least 1")
    goal = Goal.of(finding)
    with open_target(spec) as target:
        result = minimize(finding.program, goal, kernel_runner(target, goal), model_for(spec.pin), retries=retries)
        label = target.label
    store.write_minimized(directory, result.program, {
        "signature": finding.signature, "kernel": label,
        "original_ops": [op.to_text() for op in finding.program.ops],
        "minimized_ops": [op.to_text() for op in result.program.ops],
        "kernel_runs": result.kernel_runs, "seconds": round(result.seconds, 2),
        "steps": result.steps, "retries": retries})
    return result


@dataclass(frozen=True)
class Reproducibility:
    program: Program
    which: str                              # "minimised" or "original"
    counts: dict[str, tuple[int, int]]      # kernel label -> (diverged, runs)

    @property
    def reproduces(self) -> bool:
        return any(diverged for diverged, _ in self.counts.values())


def reproduce_finding(directory: Path, kernels: list[KernelSpec], runs: int,
                      open_target: TargetOpener = open_qemu,
                      model_for: ModelFor = default_model_for) -> Reproducibility:
    """Re-run the finding's (minimised) program ``runs`` times on each kernel; store
    reproducibility.json."""
    finding = kernel_finding(directory)
    if not kernels or runs < 1:
        raise ToolError("--kernels needs at least one kernel name and --runs at least 1")
    program, which = finding_program(directory, finding)
    try:
        counts = reproducibility(program, Goal.of(finding), kernels, runs, open_target, model_for)
    except ValueError as err:
        raise ToolError(str(err)) from None
    store.write_reproducibility(directory, counts)
    return Reproducibility(program, which, counts)


@dataclass(frozen=True)
class Export:
    path: Path
    program: Program
    which: str
    note: str = ""                          # a caveat for the user, if any


def export_finding(directory: Path, kernel: str | None = None, output: Path | None = None,
                   model_for: ModelFor = default_model_for) -> Export:
    """Write a standalone C reproducer of the finding's (minimised) program (default
    FINDING/repro.c); ``kernel`` gives the profile of the expected results (default the
    finding's)."""
    finding = store.load(directory)
    program, which = finding_program(directory, finding)
    expected = model_for(kernel or stock_label(finding.kernel) or None).run(program)
    summary = f"{finding.signature} (first seen as: {finding.divergence.summary()})"
    note = ("the reproducer compares each result with the model's; it does not check this "
            "'inconsistent' finding's own condition") if finding.divergence.cls == C.INCONSISTENT else ""
    leak = finding.divergence.leak
    try:
        source = export_c(program, expected, kernel=finding.kernel or "unknown", summary=summary,
                          leaked=leak.caches if leak else ())
    except ExportError as err:
        raise ToolError(str(err)) from None
    path = Path(output) if output else store.repro_c_path(directory)
    store.write_repro_c(path, source)
    return Export(path, program, which, note)


def follow_up(bug: Bug, minimize_it: bool, kernels: list[KernelSpec], runs: int,
              log: Callable[[str], None], open_target: TargetOpener = open_qemu,
              model_for: ModelFor = default_model_for) -> Bug:
    """`triage --minimize/--kernels`: a new bug's representative finding is minimised, re-run
    on the kernels and exported as C; a step that fails is logged and the bug keeps what it has."""
    if not bug.is_new or bug.cls not in KERNEL_CLASSES:
        return bug
    log(f"# following up: {bug.signature}")
    try:
        spec = as_recorded(bug.representative, KernelSpec())
        if minimize_it and bug.minimized is None:
            minimize_finding(bug.directory, spec, open_target=open_target, model_for=model_for)
        if kernels:
            reproduce_finding(bug.directory, [KernelSpec(k.pin, spec.zoo, k.modules, k.cpus) for k in kernels],
                              runs, open_target, model_for)
        if minimize_it:
            export_finding(bug.directory, model_for=model_for)
    except NotReproduced as err:
        log(f"procfuzz: {bug.signature}: not minimised: {err}")
    except ToolError as err:
        log(f"procfuzz: {bug.signature}: {err}")
    return with_artifacts(bug)
