"""Finding directories into the bug database, as `procfuzz triage` groups them: the campaigns'
output and uploaded tarballs are collected (fuzz.triage.bugs.collect) and every bug and
finding saved.  Idempotent: a finding already in the database is not added twice, a bug is
refreshed.  Findings are on disk before their row (the store renames a finding into place,
an upload is unpacked before it is imported), so a manager killed in between finds them at
start-up; ``reconcile`` drops the rows whose directory is gone."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from reference.program import ProgramError

from fuzz.compare.classes import KERNEL_CLASSES
from fuzz.record import store
from fuzz.record.known import KnownIssues
from fuzz.record.finding import Finding
from fuzz.triage.bugs import FindingReader, bugs_of, finding_dirs, read_finding

from . import records
from .db import Database


@dataclass(frozen=True)
class Imported:
    findings: frozenset[str]       # finding directories added to the database
    bugs: int                      # bugs saved (new or refreshed)
    queued: tuple[int, ...]        # bugs queued for follow-up


class FindingCache:
    """Findings read and classified once: the files of a finding directory do not change after
    the store renames it into place (later steps only add artifacts beside them), so an import
    reads the new findings alone instead of every finding again (a service that imports on each
    upload would otherwise be quadratic in its findings).  Keyed by the known issues it
    classified with, and by the identity of each directory's meta file (a directory replaced by
    another finding of the same name is read again)."""

    def __init__(self, read_uncached: FindingReader = read_finding):
        self._read = read_uncached
        self._known: KnownIssues | None = None
        self._entries: dict[Path, tuple[tuple[int, int], tuple[Finding, int]]] = {}

    def read(self, directory: Path, known: KnownIssues) -> tuple[Finding, int]:
        if known is not self._known:
            self._known, self._entries = known, {}
        try:
            meta = (directory / store.META).stat()
        except OSError:
            return self._read(directory, known)          # says what is missing
        stamp = (meta.st_ino, meta.st_mtime_ns)
        entry = self._entries.get(directory)
        if entry is None or entry[0] != stamp:
            entry = self._entries[directory] = (stamp, self._read(directory, known))
        return entry[1]

    def keep_only(self, directories: set[str]) -> None:
        """Forget the directories gone from disk."""
        self._entries = {d: entry for d, entry in self._entries.items() if str(d) in directories}


def import_findings(db: Database, sources: dict[Path, str], known: KnownIssues, now: int, refresh: bool = False,
                    warn: Callable[[str], None] = lambda text: None, cache: FindingCache | None = None) -> Imported:
    """Import every finding below ``sources`` (directory -> the source its findings name; a "{}"
    in the name is the directory's first path component below the root, e.g. an upload id); with
    nothing new on disk, nothing is read unless ``refresh`` (follow-up artifacts changed).  With a
    ``cache`` kept between calls, only the findings it has not read yet are read."""
    roots = [root for root in sources if root.is_dir()]
    directories = finding_dirs(roots, warn)
    on_disk = {str(d) for d in directories}
    assigned = records.finding_bug_keys(db)
    fresh = on_disk - assigned.keys()
    if not fresh and not refresh:
        return Imported(frozenset(), 0, ())
    cache = cache or FindingCache()
    cache.keep_only(on_disk)
    bugs = bugs_of(directories, known, warn, cache.read)
    facts = {directory: records.FindingFacts(_source(Path(directory), sources), store.kernel_of(Path(directory)),
                                             _recorded(Path(directory)))
             for directory in fresh}
    queued = []
    with db.transaction() as cur:
        for bug in bugs:
            bug_id = records.save_bug(cur, bug, facts, assigned)
            if bug.is_new and bug.cls in KERNEL_CLASSES and records.enqueue_follow_up(cur, bug_id, now):
                queued.append(bug_id)
    added = frozenset(fresh & {str(d) for bug in bugs for d in bug.directories})
    return Imported(added, len(bugs), tuple(queued))


def drop_repeated_findings(db: Database, upload: Path) -> int:
    """Remove from an unpacked upload the findings the database has already (the same program
    id on the same kernel label, from an earlier upload or campaign): a worker that sends a
    finding again after an outage, or pushes a directory it reported live, adds nothing.
    Returns how many."""
    seen = records.finding_keys(db)
    repeated = [d for d in finding_dirs([upload], lambda text: None) if (d.name, store.kernel_of(d)) in seen]
    for directory in repeated:
        shutil.rmtree(directory)
    return len(repeated)


def reconcile(db: Database) -> int:
    """Forget findings whose directory is gone (start-up); returns how many."""
    gone = {directory for directory in records.known_directories(db) if not Path(directory).is_dir()}
    if gone:
        records.forget_findings(db, gone)
    return len(gone)


def _source(directory: Path, sources: dict[Path, str]) -> str:
    for root, name in sources.items():
        root = root.resolve()
        if directory.is_relative_to(root):
            return name.format(directory.relative_to(root).parts[0]) if "{}" in name else name
    return ""


def _recorded(directory: Path) -> int:
    try:
        return store.recorded_at(directory)
    except ProgramError:           # collect skipped it with a warning already
        return 0
