"""`procfuzz run` on this machine: a campaign of N workers against one kernel, its summary, and
its exit code.  The command line, the benchmarks and the service all start campaigns here."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from corpus import KNOWN_ISSUES, SEED_DIRS
from fuzz.compare.classes import TOOL_CLASSES
from fuzz.errors import EXIT_FOUND, EXIT_OK, EXIT_TOOL, ToolError
from fuzz.execute.kernels import KernelSpec, TargetOpener, open_qemu, profile_for
from fuzz.record.known import load_known_issues
from fuzz.record.summary import Stats, write_summary

from .parallel import guest_cpus_for, run_campaign
from .shards import WHOLE, Shard
from .worker import WorkerConfig


def parse_duration(text: str) -> float:
    """Seconds of a budget such as 90s, 10m or 2h."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smh]?)", text.strip())
    if not match:
        raise ToolError(f"bad budget {text!r}: use e.g. 90s, 10m or 2h")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]



@dataclass
class RunOptions:
    kernel: KernelSpec = field(default_factory=KernelSpec)
    budget: float = 600.0                # seconds
    workers: int = 1
    out: Path = Path("out")
    corpus: Path | None = None           # the working corpus (default OUT/corpus)
    seed: int | None = None              # default: the clock
    shard: Shard | None = None           # one shard of a campaign: output in OUT/shard-I-of-N/
    max_ops: int = 40
    max_programs: int | None = None
    leak_every: int = 10
    known: Path | None = None            # default corpus/known-issues.toml
    guest_cpus: int | None = None        # default guest_cpus_for(workers, host cores)
    seed_dirs: tuple = SEED_DIRS


@dataclass(frozen=True)
class RunResult:
    out: Path
    stats: Stats
    summary: dict

    @property
    def exit_code(self) -> int:
        """2 a tool failure, 1 new findings, 0 nothing new."""
        if self.stats.errors or any(self.stats.findings.get(c) for c in TOOL_CLASSES):
            return EXIT_TOOL
        return EXIT_FOUND if sum(self.stats.findings.values()) else EXIT_OK


def run(options: RunOptions, on_update: Callable[[Stats], None], stop,
        open_target: TargetOpener = open_qemu) -> RunResult:
    """Run the campaign until its budget is spent or ``stop`` (a multiprocessing Event of the
    spawn context, see new_stop_event) is set; write OUT/summary.json."""
    if options.workers < 1:
        raise ToolError("--workers must be at least 1")
    shard = options.shard or WHOLE
    out = Path(options.out) / shard.dirname if options.shard else Path(options.out)
    working_corpus = Path(options.corpus) if options.corpus else out / "corpus"
    out.mkdir(parents=True, exist_ok=True)
    working_corpus.mkdir(parents=True, exist_ok=True)
    kernel = KernelSpec(options.kernel.pin, options.kernel.zoo, options.kernel.modules,
                        options.guest_cpus or guest_cpus_for(options.workers, os.cpu_count()))
    label = kernel.label
    profile = profile_for(kernel.pin)
    known = load_known_issues(options.known or KNOWN_ISSUES)
    seed = options.seed if options.seed is not None else int(time.time())
    deadline = time.monotonic() + options.budget
    configs = [WorkerConfig(stream, seed, profile, label, out, working_corpus, deadline, options.max_ops,
                            options.max_programs, known=known, seed_dirs=options.seed_dirs,
                            leak_every=options.leak_every)
               for stream in shard.streams(options.workers)]
    started = time.monotonic()
    stats = run_campaign(configs, kernel, on_update, stop, open_target)
    elapsed = time.monotonic() - started
    extra = {"kernel": label, "seed": seed, "workers": options.workers, "shard": str(shard),
             "seconds": round(elapsed, 1), "programs_per_second": round(stats.programs / max(elapsed, 1e-9), 2),
             "interrupted": stop.is_set()}
    summary_path = write_summary(out, stats, extra)
    return RunResult(out, stats, json.loads(summary_path.read_text()))


def new_stop_event():
    """The event that stops a campaign's workers (they are spawned processes)."""
    return multiprocessing.get_context("spawn").Event()


@contextmanager
def stop_on_signals(stop, announce: Callable[[str], None] = lambda text: print(text, file=sys.stderr)) -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP set ``stop``: the workers end their program and the campaign
    keeps everything it recorded."""
    def request_stop(signum, _frame):
        announce(f"\nprocfuzz: {signal.Signals(signum).name}: stopping workers, keeping everything")
        stop.set()
    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
