"""How much of a kernel trace the oracle really checks, and which episodes a program holds.

A model result is exact (one value), a set of alternatives the kernel code allows (``a | b``),
or unchecked: a ``*`` anywhere (anything, or ``ok:*``: any payload), or alternatives that mix a
success with an error (either outcome passes).  An episode is an observation of an object, a
change of that object, and an observation of it again: its cell is (object family, change, way
of observing again).  ``procfuzz bench oracle`` reports both over generated programs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from reference.program import Program
from reference.trace import alternatives

from .observe import last_removal, observed

EXACT, ALTERNATIVES, UNCHECKED = "exact", "alternatives", "unchecked"
OBSERVING = ("lookup", "readdir", "getdents", "read", "readlink", "open", "chdir", "write")
# The changes each family of object can undergo (fuzz/compare/observe.py _affects), i.e. the
# cells of the episode matrix the model can express.
CHANGES = {
    "task": ("exit", "reap", "exec", "setuid", "setgid"),
    "thread": ("exit", "exec"),
    "fd": ("close",),
    "task net": ("unshare_net", "setns_net"),
    "sysctl device": ("link_del", "link_rename", "link_set_netns"),
    "sysctl view": ("unshare_net", "setns_net"),
    "mount": ("umount",),
}


def result_check(expected: str) -> str:
    allowed = alternatives(expected)
    if any("*" in a for a in allowed):
        return UNCHECKED
    if len(allowed) == 1:
        return EXACT
    succeeds = {a.startswith("ok") for a in allowed}
    return UNCHECKED if succeeds == {True, False} else ALTERNATIVES


# The kind of object a path names, first match wins (a device's sysctl directory before the view
# of the namespace, a task's fd or net entry before the task itself).
_FAMILIES = tuple((re.compile(pattern), name) for pattern, name in (
    (r"\{m\d+\}/sys/net/ipv[46]/(conf|neigh)/(?!all\b|default\b)\w+", "sysctl device"),
    (r"\{m\d+\}/sys/net", "sysctl view"),
    (r"\{m\d+\}/\{[pt]\d+\}/fd/\{f\d+\}", "fd"),
    (r"\{m\d+\}/\{[pt]\d+\}/net\b", "task net"),
    (r"\{m\d+\}/\{[pt]\d+\}/task/\{[pt]\d+\}", "thread"),
    (r"\{m\d+\}/\{[pt]\d+\}", "task"),
    (r"\{m\d+\}(/|$)", "mount")))


def family(path: str) -> str | None:
    """The kind of object a path names, for the episode matrix."""
    return next((name for pattern, name in _FAMILIES if pattern.match(path)), None)


_HOLDER_LINK = re.compile(r"/(fd/\{f\d+\}|cwd)$")


def episodes(program: Program, results: Sequence[str]) -> set[tuple[str, str, str]]:
    """The (family, change, way) cells of the program's episodes: an op that looks at a path
    seen before, with a change of that path's object in between (last_removal)."""
    cells, seen = set(), set()
    for index, op in enumerate(program.ops):
        if op.kind not in OBSERVING:
            continue
        path, bound = observed(program, index, results=results)
        kind = family(path) if path else None
        # Through a held fd or cwd: an op on it, or a readlink of the link that holds it.
        held = bound is not None or op.kind == "readlink" and _HOLDER_LINK.search(op.arg("path"))
        way = f"held {op.kind}" if held else op.kind
        if kind and path in seen:
            change = last_removal(program, index, (path, bound), results)
            if change in CHANGES[kind]:
                cells.add((kind, change, way))
        if path:
            seen.add(path)
    return cells


class CheckedTally:
    """Over many (program, model results) pairs: ops per kind by check, programs with anything
    unchecked, and the episode matrix."""

    def __init__(self):
        self.ops: dict[str, dict[str, int]] = {kind: {EXACT: 0, ALTERNATIVES: 0, UNCHECKED: 0} for kind in OBSERVING}
        self.programs = self.programs_unchecked = 0
        self.cells: dict[tuple[str, str], set[str]] = {(kind, change): set() for kind, changes in CHANGES.items()
                                                       for change in changes}
        self.hits: dict[tuple[str, str], int] = dict.fromkeys(self.cells, 0)

    def add(self, program: Program, results: Sequence[str]) -> None:
        self.programs += 1
        unchecked = False
        for op, result in zip(program.ops, results):
            if op.kind in self.ops:
                check = result_check(result)
                self.ops[op.kind][check] += 1
                unchecked |= check == UNCHECKED
        self.programs_unchecked += unchecked
        for kind, change, way in episodes(program, results):
            self.cells[(kind, change)].add(way)
            self.hits[(kind, change)] += 1

    def unchecked_share(self) -> float:
        total = sum(sum(counts.values()) for counts in self.ops.values())
        return sum(counts[UNCHECKED] for counts in self.ops.values()) / max(total, 1)

    def missed_cells(self) -> list[tuple[str, str]]:
        return [cell for cell, hits in self.hits.items() if not hits]
