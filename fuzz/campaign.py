"""Campaigns: generate -> run on the model and the kernel -> compare -> record, per worker.

One worker owns one kernel target (one VM) and one model target.  Workers run as separate
processes when there are several; each reports counters to the parent through a queue, and
writes findings and corpus entries straight to the shared output directory (atomic writes, so
workers never collide and a kill never leaves a partial file).
"""

from __future__ import annotations

import json
import multiprocessing
import random
import signal
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from hypothesis import HealthCheck, given, settings

from reference.profile import KernelProfile
from reference.program import Program
from targets.model import ModelTarget

from . import findings as findings_store
from .coverage import features
from .generate import mutate, programs
from .leaks import LeakOracle, describe
from .oracle import Divergence, compare
from .storage import atomic_write, load_directory, save_program


@dataclass
class Stats:
    programs: int = 0
    ops: int = 0
    findings: Counter = field(default_factory=Counter)     # class -> new findings recorded
    duplicates: int = 0
    corpus_added: int = 0
    features: int = 0
    restarts: int = 0
    guest_us: int = 0
    errors: list = field(default_factory=list)              # worker-level failures (tool bugs)

    def merge(self, other: "Stats"):
        self.programs += other.programs
        self.ops += other.ops
        self.findings.update(other.findings)
        self.duplicates += other.duplicates
        self.corpus_added += other.corpus_added
        self.features = max(self.features, other.features)
        self.restarts += other.restarts
        self.guest_us += other.guest_us
        self.errors += other.errors

    def to_json(self) -> dict:
        return {"programs": self.programs, "ops": self.ops, "findings": dict(self.findings),
                "duplicates": self.duplicates, "corpus_added": self.corpus_added,
                "model_features": self.features, "vm_restarts": self.restarts,
                "guest_seconds": round(self.guest_us / 1e6, 3), "errors": self.errors}

    @classmethod
    def from_json(cls, doc: dict) -> "Stats":
        """The counters of a summary (to_json's inverse), for merging runs; raises KeyError,
        TypeError, ValueError or AttributeError on a malformed one."""
        return cls(int(doc["programs"]), int(doc["ops"]),
                   Counter({str(cls_): int(n) for cls_, n in doc["findings"].items()}),
                   int(doc["duplicates"]), int(doc["corpus_added"]), int(doc["model_features"]),
                   int(doc["vm_restarts"]), round(float(doc["guest_seconds"]) * 1e6),
                   [str(error) for error in _json_list(doc["errors"])])


def _json_list(value) -> list:
    if not isinstance(value, list):
        raise TypeError(f"expected a list, got {type(value).__name__}")
    return value


class ProgramSource:
    """Seeds first, then fresh programs from the Hypothesis strategy and mutations of the corpus."""

    def __init__(self, profile: KernelProfile, seeds: list[Program], rng: random.Random, max_ops: int):
        self.rng = rng
        self.queue = list(seeds)
        self.corpus = list(seeds)
        self._box: list[Program] = []

        @settings(database=None, suppress_health_check=list(HealthCheck), deadline=None)
        @given(programs(profile, max_ops=max_ops))
        def capture(program):
            self._box.append(program)

        self._decode = capture.hypothesis.fuzz_one_input

    def decode(self, data: bytes) -> Program | None:
        """Hypothesis decodes any byte string into a program (None if the bytes run short)."""
        self._box.clear()
        self._decode(data)
        return self._box[-1] if self._box else None

    def next(self) -> Program:
        if self.queue:
            return self.queue.pop(0)
        if self.corpus and self.rng.random() < 0.4:
            mutant = mutate(self.rng.choice(self.corpus), self.rng.choice(self.corpus), self.rng)
            if mutant is not None:
                return mutant
        while True:
            program = self.decode(self.rng.randbytes(8192))
            if program is not None and len(program):
                return program


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
    zoo_bug: str | None = None      # a bug-zoo bug injected into this worker's kernel
    modules: tuple = ()             # targets.qemu.ModuleSpec: out-of-tree modules loaded after every boot
    guest_cpus: int = 2             # vCPUs of this worker's guest (see guest_cpus_for)


def starting_programs(config: WorkerConfig) -> list[Program]:
    """The seed directories' programs, then the working corpus as it is now."""
    return [program for directory in (*config.seed_dirs, config.corpus) if Path(directory).is_dir()
            for _, program in load_directory(directory)[0]]


def run_worker(config: WorkerConfig, target, report: Callable[[Stats], None],
               should_stop: Callable[[], bool], start: list[Program] | None = None) -> Stats:
    """The differential loop for one worker; returns its final counters.

    Its random stream is named by (seed, index): a campaign gives each worker, of every shard,
    its own index.  ``start`` is the corpus to begin with (default: starting_programs now)."""
    rng = random.Random(f"{config.seed}-{config.index}")
    seeds = starting_programs(config) if start is None else start
    source = ProgramSource(config.profile, seeds, rng, config.max_ops)
    model = ModelTarget(config.profile)
    seen_features: set = set()
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
            finding = findings_store.Finding(program, expected, actual, divergence, config.kernel_label,
                                             actual.extra.get("console", ""),
                                             confirm(program, expected, divergence, target, config.reruns))
            _record(config, finding, stats)
            leaks.reset()               # the re-runs (or a VM restart) moved the counts
        elif leaked := leaks.check(actual.extra.get("slab"), lambda: target.run(program).extra.get("slab")):
            leak = Divergence("leak", None, "", "", "", describe(leaked))
            _record(config, findings_store.Finding(program, expected, actual, leak, config.kernel_label,
                                                   "", (leaks.reruns, leaks.reruns)), stats)
        elif expected.outcome == "ok":
            fresh = features(program, expected) - seen_features
            if fresh:
                seen_features |= fresh
                save_program(config.corpus, program)
                source.corpus.append(program)
                stats.corpus_added += 1
        stats.features = len(seen_features)
        stats.restarts = getattr(target, "restarts", 0)
        if time.monotonic() - last_report > 1.0:
            report(stats)
            last_report = time.monotonic()
    report(stats)
    return stats


def _record(config: WorkerConfig, finding, stats: Stats) -> None:
    _, new = findings_store.record(config.out, finding)
    if new and finding.signature not in config.known:
        stats.findings[finding.divergence.cls] += 1
    else:
        stats.duplicates += 1


def confirm(program: Program, expected, divergence, target, reruns: int) -> tuple[int, int]:
    """Re-run a divergent program; count the runs that diverge the same way (class and op)."""
    if divergence.cls in ("model-bug", "harness-error"):
        return (0, 0)
    same = 0
    for _ in range(reruns):
        again = compare(program, expected, target.run(program))
        same += again is not None and (again.cls, again.index) == (divergence.cls, divergence.index)
    return (same, reruns)


# ---- multi-process orchestration ----------------------------------------------------------------

def _worker_main(config: WorkerConfig, kernel: str, start: list[Program], queue, stop_event):
    signal.signal(signal.SIGINT, signal.SIG_IGN)      # the parent decides when to stop
    from targets.qemu import QemuTarget
    try:
        with QemuTarget(kernel, zoo=config.zoo_bug, modules=config.modules, cpus=config.guest_cpus) as target:
            run_worker(config, target, lambda s: queue.put((config.index, s)), stop_event.is_set, start)
    except Exception:  # noqa: BLE001 - reported to the parent as a tool failure
        failed = Stats(errors=[f"worker {config.index}: {traceback.format_exc(limit=6)}"])
        queue.put((config.index, failed))
    queue.put((config.index, None))


def guest_cpus_for(workers: int, host_cpus: int | None) -> int:
    """vCPUs per guest so that the workers' guests do not oversubscribe the host: under TCG each
    vCPU is a busy host thread, and a worker also needs a core for generation and the model.
    Measured on 2 cores (`procfuzz bench scaling`): one worker does 12 programs/s with 1 or 2
    vCPUs alike; two workers do 10.6 programs/s with 2 vCPUs each but 19.4 with 1 each."""
    return max(1, min(2, (host_cpus or 1) // max(1, workers)))


def run_campaign(configs: list[WorkerConfig], kernel: str, on_update: Callable[[Stats], None],
                 stop_event) -> Stats:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    # One snapshot of the corpus for all: a worker that boots later must not start from what
    # another has added meanwhile, or a seeded campaign would not be reproducible.
    start = starting_programs(configs[0]) if configs else []
    workers = [context.Process(target=_worker_main, args=(c, kernel, start, queue, stop_event), daemon=True)
               for c in configs]
    for worker in workers:
        worker.start()
    latest: dict[int, Stats] = {}
    running = len(workers)
    while running:
        try:
            index, stats = queue.get(timeout=1.0)
        except Exception:  # noqa: BLE001 - queue.Empty: refresh the display, check liveness
            if not any(w.is_alive() for w in workers):
                break
            on_update(_total(latest))
            continue
        if stats is None:
            running -= 1
        elif stats.errors and index in latest:
            latest[index].errors += stats.errors
        else:
            latest[index] = stats
        on_update(_total(latest))
    for worker in workers:
        worker.join(timeout=30)
    return _total(latest)


def _total(latest: dict[int, Stats]) -> Stats:
    total = Stats()
    for stats in latest.values():
        total.merge(stats)
    return total


def write_summary(out: Path, stats: Stats, extra: dict) -> Path:
    path = Path(out) / "summary.json"
    atomic_write(path, json.dumps({**extra, **stats.to_json()}, indent=1, sort_keys=True))
    return path
