"""Where a worker's programs come from: the seeds and the corpus first, then fresh programs from
the Hypothesis strategy (decoded from random bytes with ``fuzz_one_input``) and mutations of the
corpus."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings

from reference.profile import KernelProfile
from reference.program import Program

from .mutate import mutate
from .strategy import programs


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
