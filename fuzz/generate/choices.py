"""Where the generator's choices come from.

The strategy (strategy.py) only asks for an integer in a range, one of some options, or a coin
flip.  Under Hypothesis the answers are drawn from its byte stream, so shrinking, replay and
atheris decoding work on the same generator; a campaign's fresh programs take them straight from
the worker's random stream, which costs a small fraction of building and validating a Hypothesis
strategy for every choice (`procfuzz bench throughput`).
"""

from __future__ import annotations

import random
from typing import Protocol, Sequence, TypeVar

from hypothesis import strategies as st

T = TypeVar("T")


class Choices(Protocol):
    def integer(self, low: int, high: int) -> int: ...

    def pick(self, options: Sequence[T]) -> T: ...

    def coin(self) -> bool: ...


class DrawnChoices:
    """Choices drawn by Hypothesis (inside a composite strategy)."""

    def __init__(self, draw):
        self._draw = draw

    def integer(self, low: int, high: int) -> int:
        return self._draw(st.integers(low, high))

    def pick(self, options: Sequence[T]) -> T:
        return self._draw(st.sampled_from(options))

    def coin(self) -> bool:
        return self._draw(st.booleans())


class RandomChoices:
    """Choices from a random stream: uniform, like Hypothesis's draws from fresh random bytes."""

    def __init__(self, rng: random.Random):
        self._rng = rng

    def integer(self, low: int, high: int) -> int:
        return self._rng.randint(low, high)

    def pick(self, options: Sequence[T]) -> T:
        if not options:
            raise ValueError("nothing to pick from")
        return options[self._rng.randrange(len(options))]

    def coin(self) -> bool:
        return self._rng.random() < 0.5
