"""One worker of a campaign: generate -> run on the model and the kernel -> compare -> record.

A worker owns one kernel target (one VM) and one model target, and writes findings and corpus
entries straight to the shared output directory (atomic writes, so workers never collide and a
kill never leaves a partial file).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from reference.profile import KernelProfile
from reference.program import Program
from targets.base import Target
from targets.model_target import ModelTarget

from fuzz.compare.classes import TOOL_CLASSES
from fuzz.compare.leaks import CONFIRM_ROUNDS, LeakOracle, confirm_leak
from fuzz.compare.oracle import Divergence, compare
from fuzz.generate.coverage import features
from fuzz.record import store
from fuzz.record.finding import Finding
from fuzz.record.programs import save_program
from fuzz.record.summary import Stats

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
    known: frozenset = frozenset()
    reruns: int = 1                 # re-runs of a divergent program, to tell flaky from reliable
    seed_dirs: tuple = ()           # read-only program directories replayed first (corpus/seeds)
    leak_every: int = 10            # slab counts (L frames, ~3x the cost) for every Nth program; 0: never


def starting_programs(config: WorkerConfig) -> StartCorpus:
    """The seed directories' programs, then the working corpus as it is now (fuzz/campaign/startup.py)."""
    return load_start(config.seed_dirs, config.corpus)


def run_worker(config: WorkerConfig, target: Target, report: Callable[[Stats], None],
               should_stop: Callable[[], bool], start: StartCorpus | None = None) -> Stats:
    """The differential loop for one worker; returns its final counters.

    Its random stream is named by (seed, index): a campaign gives each worker, of every shard,
    its own index.  ``start`` is the corpus to begin with (default: starting_programs now)."""
    rng = random.Random(f"{config.seed}-{config.index}")
    start = starting_programs(config) if start is None else start
    source = StartSource(config.profile, start, rng, config.max_ops)
    model = ModelTarget(config.profile)
    seen_features = source.seen_features    # with those of the corpus programs not replayed
    leaks = LeakOracle()
    stats, last_report = Stats(), time.monotonic()
    while not should_stop() and time.monotonic() < config.deadline:
        if config.max_programs is not None and stats.programs >= config.max_programs:
            break
        program = source.next()
        # The leak oracle's baseline is the previous measured program; its re-runs measure too.
        target.measure_leaks = bool(config.leak_every) and stats.programs % config.leak_every == 0
        expected = model.run(program)
        actual = target.run(program) if expected.outcome == "ok" else expected
        stats.programs += 1
        stats.ops += len(program)
        stats.guest_us += actual.guest_us
        divergence = compare(program, expected, actual)
        if divergence is not None:
            finding = Finding(program, expected, actual, divergence, config.kernel_label,
                              actual.extra.get("console", ""),
                              confirm(program, expected, divergence, target, config.reruns))
            _record(config, finding, stats)
            leaks.reset()               # the re-runs (or a VM restart) moved the counts
        elif leak := leaks.check(actual.extra.get("slab"), lambda: target.run(program).extra.get("slab")):
            _record(config, Finding(program, expected, actual, Divergence.of_leak(leak), config.kernel_label,
                                    "", (confirm_in_fresh_vm(program, leak, target), CONFIRM_ROUNDS)), stats)
            leaks.reset()
        elif expected.outcome == "ok":
            fresh = features(program, expected) - seen_features
            if fresh:
                seen_features |= fresh
                save_program(config.corpus, program)
                source.corpus.append(program)
                stats.corpus_added += 1
        stats.features = len(seen_features)
        stats.restarts = target.restarts
        if time.monotonic() - last_report > 1.0:
            report(stats)
            last_report = time.monotonic()
    report(stats)
    return stats


def _record(config: WorkerConfig, finding, stats: Stats) -> None:
    _, new = store.record(config.out, finding)
    if not new or finding.signature in config.known:
        stats.duplicates += 1
    elif not finding.leak_confirmed:
        stats.unconfirmed += 1          # kept for triage, never counted as new
    else:
        stats.findings[finding.divergence.cls] += 1


CONTROL = Program(())       # the empty program: only the agent's sandbox set-up and teardown


def confirm_in_fresh_vm(program: Program, leak, target: Target) -> int:
    """The rounds of confirm_leak that show ``leak`` again, on a freshly booted kernel."""
    target.restart()
    target.measure_leaks = True
    return confirm_leak(leak, lambda: target.run(program).extra.get("slab"),
                        lambda: target.run(CONTROL).extra.get("slab"))


def confirm(program: Program, expected, divergence: Divergence, target: Target, reruns: int) -> tuple[int, int]:
    """Re-run a divergent program; count the runs that diverge the same way (class and op)."""
    if divergence.cls in TOOL_CLASSES:
        return (0, 0)
    same = 0
    for _ in range(reruns):
        again = compare(program, expected, target.run(program))
        same += again is not None and (again.cls, again.index) == (divergence.cls, divergence.index)
    return (same, reruns)


