"""A corpus that stays small: distillation, after libFuzzer's ``-merge=1``, afl-cmin and
syzkaller's corpus minimisation.

A program stays only if it shows a model-coverage feature (fuzz/generate/coverage.py) that no
smaller kept program shows.  Programs are taken smallest first (ops, then text length, then id:
a total order, so the result depends neither on file names nor on their order) and kept
greedily, as libFuzzer's merge does.  Then, largest first, a kept program all of whose features
the other kept programs show is dropped too (afl-cmin's "no feature of its own"), so every kept
program shows a feature no other kept program shows.  Every feature of the input stays
covered, and distilling a distilled corpus keeps every program of it.

On disk nothing is deleted before what replaces it is written: the kept programs are written
under their content names (``<id>.prog``, atomically and fsynced) first, and only then are the
other files removed.  An interrupted or failed distillation (a full disk) leaves a corpus with
at least every feature it had.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from reference.program import Program

from fuzz.generate.coverage import features

from .programs import load_directory, save_program


def size_key(program: Program) -> tuple:
    return (len(program), len(program.to_text()), program.id)


def program_features(program: Program, model) -> frozenset:
    """The model-coverage features of a program (``model``: a Target running the model)."""
    return frozenset(features(program, model.run(program)))


@dataclass(frozen=True)
class Distilled:
    kept: list[Program]            # smallest first
    features: frozenset            # every feature of the input not in ``covered`` (``kept`` shows them all)
    seen: int                      # distinct programs in the input


def distill(programs: Iterable[Program], model, covered: Iterable = ()) -> Distilled:
    """The programs that each add a feature to the smaller kept ones (and to ``covered``:
    features that other programs, e.g. the seeds, already show)."""
    unique = {program.id: program for program in programs}
    seen, every, kept = set(covered), set(), {}
    for program in sorted(unique.values(), key=size_key):
        shown = program_features(program, model) - set(covered)
        every |= shown
        if not shown <= seen:
            kept[program.id] = (program, shown)
            seen |= shown
    holders = Counter(feature for _, shown in kept.values() for feature in shown)
    for program, shown in sorted(kept.values(), key=lambda entry: size_key(entry[0]), reverse=True):
        if all(holders[feature] > 1 for feature in shown):
            del kept[program.id]
            holders.subtract(shown)
    return Distilled(sorted((program for program, _ in kept.values()), key=size_key), frozenset(every), len(unique))


@dataclass(frozen=True)
class DistillReport:
    before: int                    # program files before
    after: int                     # program files after
    features: int                  # features of the corpus, before and after alike
    unreadable: int                # files that are not programs: left alone


def distill_directory(directory: Path, model, covered: Iterable = ()) -> DistillReport:
    """Distill a corpus directory in place (see the module's docstring for the order of writes).
    Files written into it meanwhile by others are not touched."""
    directory = Path(directory)
    entries, errors = load_directory(directory)
    result = distill((program for _, program in entries), model, covered)
    keep = {program.id for program in result.kept}
    for program in result.kept:
        save_program(directory, program)            # a no-op for those already under <id>.prog
    _sync_directory(directory)
    for path, program in entries:
        if program.id not in keep or path != directory / f"{program.id}.prog":
            path.unlink(missing_ok=True)
    return DistillReport(len(entries), len(result.kept), len(result.features), len(errors))


def _sync_directory(directory: Path) -> None:
    """The renames of the kept programs reach the disk before any removal does."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
