"""`procfuzz run` on this machine: a campaign of N workers against one kernel, its summary, and
its exit code.  The command line, the benchmarks and the service all start campaigns here."""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

from corpus import KNOWN_ISSUES, SEED_DIRS
from targets.model_target import ModelTarget

from fuzz.compare.classes import TOOL_CLASSES
from fuzz.errors import EXIT_FOUND, EXIT_OK, EXIT_TOOL, ToolError
from fuzz.execute.kernels import KernelSpec, TargetOpener, open_qemu, profile_for
from fuzz.record.corpus import distill_directory, program_features
from fuzz.record.known import load_known_issues
from fuzz.record.programs import is_disk_full
from fuzz.record.summary import Stats, write_summary

from .parallel import follow_campaign, guest_cpus_for
from .shards import WHOLE, Shard
from .startup import ReplayLimits, StartCorpus, load_start
from .worker import WorkerConfig

HARD_STOP_WINDOW = 5.0      # seconds: a second stop signal within them kills the workers at once


def parse_duration(text: str) -> float:
    """Seconds of a budget such as 90s, 10m or 2h."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smh]?)", text.strip())
    if not match:
        raise ToolError(f"bad budget {text!r}: use e.g. 90s, 10m or 2h")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def parse_state_check(text: str) -> int:
    """`--state-check every|N|off`: check every Nth program (every: 1), or never (off: 0)."""
    value = {"every": "1", "off": "0"}.get(text.strip(), text.strip())
    if not value.isdigit():
        raise ToolError(f"bad --state-check {text!r}: use every, off or a number N (every Nth program)")
    return int(value)


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
    replay: ReplayLimits = ReplayLimits()    # the working corpus replayed at start, at most
    distill: bool = True                     # distill the working corpus when the campaign ends
    state_check: int = WorkerConfig.state_check   # the end-of-program state check every Nth program; 0: never
    exchange_every: float = 0.0              # seconds between the workers' looks for programs other workers added

    @property
    def out_dir(self) -> Path:
        """Where this run writes: OUT, or OUT/shard-I-of-N/ for one shard."""
        return Path(self.out) / self.shard.dirname if self.shard else Path(self.out)

    @property
    def working_corpus(self) -> Path:
        return Path(self.corpus) if self.corpus else self.out_dir / "corpus"


@dataclass(frozen=True)
class RunResult:
    out: Path
    stats: Stats
    summary: dict
    failure: str | None = None      # why the campaign could not go on (a full disk), one line

    @property
    def exit_code(self) -> int:
        """2 a tool failure (or no worker could boot its kernel), 1 new findings, 0 nothing new.
        A stop by the operator is none of these: it exits like a campaign that ran out of budget."""
        nothing_ran = bool(self.stats.stopped) and not self.stats.programs
        if self.failure or self.stats.errors or nothing_ran or any(self.stats.findings.get(c) for c in TOOL_CLASSES):
            return EXIT_TOOL
        return EXIT_FOUND if sum(self.stats.findings.values()) else EXIT_OK


def run(options: RunOptions, on_update: Callable[[Stats], None], stop,
        open_target: TargetOpener = open_qemu, kill_now: Callable[[], bool] = lambda: False) -> RunResult:
    """Run the campaign until its budget is spent or ``stop`` (a multiprocessing Event of the
    spawn context, see new_stop_event) is set; ``kill_now`` turning true ends the workers at
    once.  Distills the working corpus and writes OUT/summary.json.  A full disk under OUT stops
    the campaign: the result's ``failure`` says so."""
    if options.workers < 1:
        raise ToolError("--workers must be at least 1")
    shard = options.shard or WHOLE
    out = options.out_dir
    working_corpus = options.working_corpus
    out.mkdir(parents=True, exist_ok=True)
    working_corpus.mkdir(parents=True, exist_ok=True)
    kernel = replace(options.kernel, cpus=options.guest_cpus or guest_cpus_for(options.workers, os.cpu_count()))
    label = kernel.label
    profile = profile_for(kernel.pin)
    known = load_known_issues(options.known or KNOWN_ISSUES)
    seed = options.seed if options.seed is not None else int(time.time())
    started = time.monotonic()
    start = load_start(options.seed_dirs, working_corpus, options.replay)
    deadline = started + options.budget
    configs = [WorkerConfig(stream, seed, profile, label, out, working_corpus, deadline, options.max_ops,
                            options.max_programs, known=known, seed_dirs=options.seed_dirs,
                            leak_every=options.leak_every, state_check=options.state_check,
                            exchange_every=options.exchange_every)
               for stream in shard.streams(options.workers)]
    outcome = follow_campaign(configs, kernel, on_update, stop, open_target, start, kill_now)
    elapsed = time.monotonic() - started
    failure = _no_space(options.out, outcome.no_space) if outcome.no_space else None
    corpus = None
    if options.distill and not failure and not outcome.killed:
        corpus, failure = _distill(working_corpus, profile, start, options.out)
    extra = {"kernel": label, "seed": seed, "workers": options.workers, "shard": str(shard),
             "seconds": round(elapsed, 1), "programs_per_second": round(outcome.stats.programs / max(elapsed, 1e-9), 2),
             "interrupted": stop.is_set() or outcome.killed, "start_corpus": len(start.working),
             **({"corpus": corpus} if corpus else {}), **({"failure": failure} if failure else {})}
    summary = {**extra, **outcome.stats.to_json()}
    try:
        write_summary(out, outcome.stats, extra)
    except OSError as err:
        if not is_disk_full(err):
            raise
        failure = failure or _no_space(options.out, str(err.strerror))
        summary["failure"] = failure
    return RunResult(out, outcome.stats, summary, failure)


def _no_space(out: Path, detail: str) -> str:
    return f"no space left on device under {out}: {detail}"


def _distill(corpus: Path, profile, start: StartCorpus, out: Path) -> tuple[dict | None, str | None]:
    """Distill the working corpus (what the seeds show counts as covered); its figures, or why not."""
    model = ModelTarget(profile)
    covered = frozenset().union(*(program_features(p, model) for p in start.always))
    try:
        report = distill_directory(corpus, model, covered)
    except OSError as err:
        if not is_disk_full(err):
            raise
        return None, _no_space(out, str(err.strerror))
    return {"programs": report.after, "before_distill": report.before,
            "features_beyond_seeds": report.features}, None


def new_stop_event():
    """The event that stops a campaign's workers (they are spawned processes)."""
    return multiprocessing.get_context("spawn").Event()


class StopSignals:
    """The handler of the stop signals.  The first sets ``stop``: the workers end the program they
    run and the campaign keeps everything it recorded.  Another within HARD_STOP_WINDOW seconds
    sets ``kill``: the workers are ended at once (still no half-written finding: findings are
    staged and renamed into place)."""

    def __init__(self, stop, announce: Callable[[str], None]):
        self.stop, self.announce = stop, announce
        self.kill = False
        self._last: float | None = None

    def __call__(self, signum, _frame) -> None:
        name, now = signal.Signals(signum).name, time.monotonic()
        if self._last is not None and now - self._last <= HARD_STOP_WINDOW:
            if not self.kill:
                self.announce(f"\nprocfuzz: {name} again: ending the workers now")
            self.kill = True
            return
        self._last = now
        self.announce(f"\nprocfuzz: {name}: stopping workers, keeping everything "
                      f"(again within {HARD_STOP_WINDOW:.0f} s: end them at once)")
        self.stop.set()


@contextmanager
def stop_on_signals(stop, announce: Callable[[str], None] = lambda text: print(text, file=sys.stderr)) -> Iterator[StopSignals]:
    """SIGINT (Ctrl-C: the whole foreground process group gets it; the workers, in sessions of
    their own, do not), SIGTERM and SIGHUP all stop a campaign the same way (StopSignals)."""
    handler = StopSignals(stop, announce)
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield handler
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
