"""One worker of a campaign: generate -> run on the model and the kernel -> compare -> record.

A worker owns one kernel target (one VM) and one model target, and writes findings and corpus
entries straight to the shared output directory (atomic writes, so workers never collide and a
kill never leaves a partial file).
"""

from __future__ import annotations

import random
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from reference.profile import KernelProfile
from reference.program import Program, ProgramError
from reference.state_check import with_state_check
from targets.base import Target
from targets.model_target import ModelTarget

from fuzz.compare.classes import TOOL_CLASSES
from fuzz.compare.leaks import CONFIRM_ROUNDS, LeakOracle, confirm_leak
from fuzz.compare.oracle import KNOWN, Divergence, Explained, compare_all
from fuzz.execute.kernels import run_on_kernel
from fuzz.generate.coverage import features, kernel_features
from fuzz.record import store
from fuzz.record.finding import Finding
from fuzz.record.known import KnownIssues
from fuzz.record.programs import load_program, program_files, save_program
from fuzz.record.summary import Breakdown, Stats

from .startup import StartCorpus, StartSource, load_start


@dataclass
class WorkerConfig:
    index: int
    seed: int
    profile: KernelProfile
    kernel_label: str
    out: Path
    corpus: Path
    deadline: float
    max_ops: int = 40
    max_programs: int | None = None
    known: KnownIssues = KnownIssues()
    reruns: int = 1                 # re-runs of a divergent program, to tell flaky from reliable
    seed_dirs: tuple = ()           # read-only program directories replayed first (corpus/seeds)
    leak_every: int = 10            # slab counts (L frames, ~3x the cost) for every Nth program; 0: never
    state_check: int = 1            # the end-of-program state check (reference/state_check.py) for every Nth program; 0: never
    exchange_every: float = 0.0     # seconds between looks for other workers' programs in the corpus; 0: never


def starting_programs(config: WorkerConfig) -> StartCorpus:
    """The seed directories' programs, then the working corpus as it is now (fuzz/campaign/startup.py)."""
    return load_start(config.seed_dirs, config.corpus)


def run_worker(config: WorkerConfig, target: Target, report: Callable[[Stats], None],
               should_stop: Callable[[], bool], start: StartCorpus | None = None,
               model: Target | None = None) -> Stats:
    """The differential loop for one worker; returns its final counters.

    Its random stream is named by (seed, index): a campaign gives each worker, of every shard,
    its own index.  ``start`` is the corpus to begin with (default: starting_programs now);
    ``model`` the model target (default: the reference model with the config's profile)."""
    rng = random.Random(f"{config.seed}-{config.index}")
    start = starting_programs(config) if start is None else start
    source = StartSource(config.profile, start, rng, config.max_ops)
    # seen_features starts with those of the corpus programs the start-up replay skips
    loop = _Loop(config, target, model or ModelTarget(config.profile), config.known.explainer(config.kernel_label),
                 source.seen_features)
    clock = loop.clock
    others = CorpusWatcher(config.corpus, config.exchange_every) if config.exchange_every else None
    last_report = time.monotonic()
    while not should_stop() and time.monotonic() < config.deadline:
        if config.max_programs is not None and loop.stats.programs >= config.max_programs:
            break
        with clock("generate"):
            if others is not None:
                source.take(others.new_programs())
            program = source.next()
            loop.stats.from_others = source.from_others
        if loop.run(program) and program.id not in source.seed_ids:
            with clock("record"):
                saved = save_program(config.corpus, program)
            loop.stats.corpus_added += 1
            if others is not None:
                others.known.add(saved.name)
            source.corpus.append(program)
        if time.monotonic() - last_report > 1.0:
            report(loop.snapshot())
            last_report = time.monotonic()
    report(loop.snapshot())
    return loop.stats


class CorpusWatcher:
    """Programs that appear in the working corpus after the worker started: other workers' of
    the campaign, or other campaigns' through a service's hub (run --report-to).  A look every
    ``every`` seconds, at most ``batch`` programs a look; an unreadable file is skipped once."""

    def __init__(self, directory: Path, every: float, batch: int = 64):
        self.directory, self.every, self.batch = Path(directory), every, batch
        self.known = {path.name for path in program_files(self.directory)}
        self._next = time.monotonic() + every

    def new_programs(self) -> list[Program]:
        if time.monotonic() < self._next:
            return []
        self._next = time.monotonic() + self.every
        fresh = [path for path in program_files(self.directory) if path.name not in self.known][:self.batch]
        programs = []
        for path in fresh:
            self.known.add(path.name)
            try:
                programs.append(load_program(path))
            except ProgramError:
                pass                         # not a program (writers write atomically): never run
        return programs


class _Loop:
    """One program at a time: run it on the model and the kernel, compare every op, record what
    diverged or leaked, and say whether it joins the corpus."""

    def __init__(self, config: WorkerConfig, target: Target, model: Target, explained: Explained,
                 seen_features: set):
        self.config, self.target, self.model, self.explained = config, target, model, explained
        self.leaks = LeakOracle()
        self.seen_features = seen_features
        self.stats = Stats()
        self.clock = PhaseClock(self.stats.time)

    def run(self, program: Program) -> bool:
        """Returns whether the program reached new model behaviour (it joins the corpus)."""
        config, target, stats = self.config, self.target, self.stats
        if config.state_check and stats.programs % config.state_check == 0:
            program = with_state_check(program)
        # The leak oracle's baseline is the previous measured program; its re-runs measure too.
        target.measure_leaks = bool(config.leak_every) and stats.programs % config.leak_every == 0
        clock = self.clock
        with clock("model"):
            expected = self.model.run(program)
        with clock("transport") as kernel_wall:
            actual = run_on_kernel(target, program) if expected.outcome == "ok" else expected
        clock.split_kernel(actual, kernel_wall(), target.measure_leaks)
        stats.programs += 1
        stats.ops += len(program)
        stats.guest_us += actual.guest_us
        with clock("compare"):
            comparison = compare_all(program, expected, actual, self.explained)
        if comparison.primary is not None:
            with clock("reruns"):
                reruns = confirm(program, expected, comparison.primary, target, config.reruns, self.explained)
            with clock("record"):
                self._record(Finding(program, expected, actual, comparison.primary, config.kernel_label,
                                     actual.extra.get("console", ""), reruns, comparison.others))
            self.leaks.reset()               # the re-runs (or a VM restart) moved the counts
            return False
        with clock("leak"):
            leak = self.leaks.check(actual.extra.get("slab"), lambda: target.run(program).extra.get("slab"))
            if leak:
                divergence = Divergence.of_leak(leak)
                if self.explained(program, expected, divergence):
                    divergence = replace(divergence, role=KNOWN)
                shown = confirm_in_fresh_vm(program, leak, target)
        if leak:
            with clock("record"):
                self._record(Finding(program, expected, actual, divergence, config.kernel_label, "",
                                     (shown, CONFIRM_ROUNDS)))
            self.leaks.reset()
            return False
        with clock("compare"):
            fresh = features(program, expected) - self.seen_features
            fresh |= kernel_features(actual) - self.seen_features     # none unless run --kernel-coverage
        self.seen_features |= fresh
        stats.features = len(self.seen_features)
        stats.kernel_functions += sum(1 for feature in fresh if feature[0] == "kernel" and len(feature) == 2)
        return bool(fresh)

    def snapshot(self) -> Stats:
        """The counters, with the target's and the leak oracle's brought up to date."""
        self.stats.restarts, self.stats.host_faults = self.target.restarts, self.target.host_faults
        self.stats.leak_suspects = self.leaks.suspects
        self.stats.time.qemu_cpu = self.target.cpu_seconds()
        return self.stats

    def _record(self, finding: Finding) -> None:
        _, new = store.record(self.config.out, finding)
        if not new or finding.is_known:
            self.stats.duplicates += 1
        elif not finding.leak_confirmed:
            self.stats.unconfirmed += 1          # kept for triage, never counted as new
        else:
            self.stats.findings[finding.divergence.cls] += 1


class PhaseClock:
    """Wall and CPU seconds of the loop, per phase (fuzz/record/summary.py PHASES): what
    `procfuzz bench throughput` prints, to see where a program's time goes."""

    def __init__(self, breakdown: Breakdown):
        self.breakdown = breakdown

    @contextmanager
    def __call__(self, phase: str):
        wall, cpu = time.monotonic(), time.thread_time()
        elapsed = [0.0]
        try:
            yield lambda: elapsed[0]         # the phase's wall seconds, once it has ended
        finally:
            elapsed[0] = time.monotonic() - wall
            self.breakdown.wall[phase] += elapsed[0]
            self.breakdown.cpu[phase] += time.thread_time() - cpu

    def split_kernel(self, trace, wall: float, measured_leaks: bool) -> None:
        """A kernel run was booked as transport: move the guest's own parts to theirs (the
        agent's clocks), and the slab settling of a leak-measured run to leak."""
        ops = trace.guest_us / 1e6
        sandbox = max(trace.extra.get("total_us", 0) / 1e6 - ops, 0.0)
        outside = max(wall - ops - sandbox, 0.0)
        self.breakdown.wall["transport"] -= wall - (0.0 if measured_leaks else outside)
        self.breakdown.wall["guest ops"] += ops
        self.breakdown.wall["guest sandbox"] += sandbox
        if measured_leaks:
            self.breakdown.wall["leak"] += outside


CONTROL = Program(())       # the empty program: only the agent's sandbox set-up and teardown


def confirm_in_fresh_vm(program: Program, leak, target: Target) -> int:
    """The rounds of confirm_leak that show ``leak`` again, on a freshly booted kernel."""
    target.restart()
    target.measure_leaks = True
    return confirm_leak(leak, lambda: target.run(program).extra.get("slab"),
                        lambda: target.run(CONTROL).extra.get("slab"))


def confirm(program: Program, expected, divergence: Divergence, target: Target, reruns: int,
            explained: Explained) -> tuple[int, int]:
    """Re-run a divergent program; count the runs that diverge the same way (class and op)."""
    if divergence.cls in TOOL_CLASSES:
        return (0, 0)
    same = 0
    for _ in range(reruns):
        again = compare_all(program, expected, run_on_kernel(target, program), explained).primary
        same += again is not None and (again.cls, again.index) == (divergence.cls, divergence.index)
    return (same, reruns)


