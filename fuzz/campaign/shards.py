"""Shards of a campaign: shard I of N runs its own random streams into its own directory, so the
shards of one campaign (same seed, same workers per shard) never repeat each other's programs.
Shards are 0-based (``0/2`` and ``1/2``), like Kubernetes' completion index."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Shard:
    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> "Shard":
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not match:
            raise ValueError(f"bad shard {text!r}: use I/N, e.g. 0/2 (0-based: I is 0..N-1)")
        shard = cls(int(match.group(1)), int(match.group(2)))
        if shard.count < 1 or not 0 <= shard.index < shard.count:
            raise ValueError(f"bad shard {text!r}: shards are 0-based, so I must be 0..N-1 with N >= 1")
        return shard

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def dirname(self) -> str:
        return f"shard-{self.index}-of-{self.count}"

    def streams(self, workers: int) -> range:
        """The random-stream indexes of this shard's workers: disjoint across the shards of one
        campaign (same seed, same workers per shard), and shard 0/1 with W workers has the
        same streams as the W shards of W/1 worker each."""
        return range(self.index * workers, (self.index + 1) * workers)

    def split(self, parts: int) -> list["Shard"]:
        """This shard as ``parts`` shards of one worker each, with the same random streams."""
        return [Shard(self.index * parts + part, self.count * parts) for part in range(parts)]


WHOLE = Shard(0, 1)
