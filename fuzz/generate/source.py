"""Where a worker's programs come from: the seeds and the corpus first, then fresh programs of the
generator (choices from the worker's random stream) and mutations of the corpus."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings

from reference.profile import KernelProfile
from reference.program import Program

from .mutate import mutate
from .choices import RandomChoices
from .strategy import build_program, programs


class ProgramSource:
    """Seeds first, then fresh programs of the generator and mutations of the corpus."""

    def __init__(self, profile: KernelProfile, seeds: list[Program], rng: random.Random, max_ops: int):
        self.rng, self.profile, self.max_ops = rng, profile, max_ops
        self.queue = list(seeds)
        self.corpus = list(seeds)
        self.incoming: list[Program] = []      # other workers' corpus programs: each run once, then parents
        self.from_others = 0                   # how many of those were handed out to run
        self._choices = RandomChoices(rng)
        self._decode = None

    def decode(self, data: bytes) -> Program | None:
        """Hypothesis decodes any byte string into a program (None if the bytes run short):
        how atheris drives the same generator."""
        if self._decode is None:
            self._decode = _hypothesis_decoder(self.profile, self.max_ops)
        return self._decode(data)

    def take(self, programs: list[Program]) -> None:
        """Programs another worker added to the corpus: run next, then parents of mutations."""
        self.incoming.extend(programs)
        self.corpus.extend(programs)

    def next(self) -> Program:
        if self.queue:
            return self.queue.pop(0)
        if self.incoming:
            self.from_others += 1
            return self.incoming.pop(0)
        if self.corpus and self.rng.random() < 0.4:
            mutant = mutate(self.rng.choice(self.corpus), self.rng.choice(self.corpus), self.rng)
            if mutant is not None:
                return mutant
        while True:
            program = build_program(self._choices, self.profile, self.max_ops)
            if len(program):
                return program


def _hypothesis_decoder(profile: KernelProfile, max_ops: int):
    box: list[Program] = []

    @settings(database=None, suppress_health_check=list(HealthCheck), deadline=None)
    @given(programs(profile, max_ops=max_ops))
    def capture(program):
        box.append(program)

    def decode(data: bytes) -> Program | None:
        box.clear()
        capture.hypothesis.fuzz_one_input(data)
        return box[-1] if box else None
    return decode
