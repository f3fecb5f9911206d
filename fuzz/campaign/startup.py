"""Where a campaign's workers start, and how long replaying the corpus may hold them up.

The seed directories (corpus/seeds, corpus/regressions) are always replayed first and whole.
Then the working corpus is replayed on the kernel smallest programs first, at most
``ReplayLimits.programs`` of them and for at most ``ReplayLimits.seconds`` once the first
program ran; after that the worker generates.  Every program of the corpus still serves as a
parent for mutation, and the features of those the replay skips count as seen all the same (the
model computes them in well under a millisecond a program): once the replay ends, the worker
has the corpus's whole coverage back and does not save again what its corpus already shows.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

from reference.profile import KernelProfile
from reference.program import Program
from targets.model_target import ModelTarget

from fuzz.generate.source import ProgramSource
from fuzz.record.corpus import program_features, size_key
from fuzz.record.programs import load_directory


@dataclass(frozen=True)
class ReplayLimits:
    programs: int = 1000           # working-corpus programs replayed on the kernel at start, at most
    seconds: float = 90.0          # ... and for at most this long after the first program


@dataclass(frozen=True)
class StartCorpus:
    always: tuple[Program, ...]    # the seed directories' programs: replayed first, always
    working: tuple[Program, ...]   # the working corpus, smallest first
    limits: ReplayLimits = ReplayLimits()

    @property
    def programs(self) -> list[Program]:
        return [*self.always, *self.working]


def load_start(seed_dirs, corpus: Path, limits: ReplayLimits = ReplayLimits()) -> StartCorpus:
    """The seed directories' programs and the working corpus as it is now."""
    always = _programs(seed_dirs)
    known = {program.id for program in always}
    working = sorted({p.id: p for p in _programs([corpus]) if p.id not in known}.values(), key=size_key)
    return StartCorpus(tuple(always), tuple(working), limits)


def _programs(directories) -> list[Program]:
    return [program for directory in directories if Path(directory).is_dir()
            for _, program in load_directory(directory)[0]]


class StartSource(ProgramSource):
    """A ProgramSource that replays a StartCorpus within its limits, then generates.
    ``seen_features`` holds the features of the corpus programs it did not replay; ``seed_ids``
    names the seed directories' programs (never copied into the working corpus: every
    campaign replays them from where they are)."""

    def __init__(self, profile: KernelProfile, start: StartCorpus | list[Program], rng: random.Random, max_ops: int):
        if not isinstance(start, StartCorpus):
            start = StartCorpus(tuple(start), ())   # a plain list: programs to replay, all of them
        limit = max(0, start.limits.programs)
        super().__init__(profile, [*start.always, *start.working[:limit]], rng, max_ops)
        self.corpus = start.programs
        self.seed_ids = frozenset(program.id for program in start.always)
        self._model = ModelTarget(profile)
        self.seen_features: set = set()
        self._skip(start.working[limit:])
        self._always, self._served = len(start.always), 0
        self._seconds, self._deadline = start.limits.seconds, None

    def _skip(self, programs) -> None:
        for program in programs:
            self.seen_features |= program_features(program, self._model)

    def next(self) -> Program:
        if self._deadline is None:
            self._deadline = time.monotonic() + self._seconds
        elif self.queue and self._served >= self._always and time.monotonic() > self._deadline:
            self._skip(self.queue)         # the rest of the corpus stays a source of parents
            self.queue.clear()
        self._served += bool(self.queue)
        return super().next()
