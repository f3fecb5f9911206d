"""Triage: one Bug per bug key out of any number of finding directories.

Nightly runs leave ``findings/`` directories under several workers, nights and kernels; a
developer wants one row per bug.  ``collect`` finds every ``findings/`` below the directories
it is given, groups the findings by bug key (fuzz/findings.py: class, object and kind of
removal; the row lists the finer signatures, its symptoms) and marks what the known-issues
file already explains.  ``with_artifacts`` reads what later steps leave in a
finding directory (``procfuzz minimize`` / ``reproduce`` / ``export-c``), so that whoever runs
those steps on a Bug can refresh it with the same function.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from reference.program import Program, ProgramError

from fuzz.compare.classes import OUTCOME_CLASSES
from fuzz.compare.oracle import KNOWN, compare_all
from fuzz.record import store
from fuzz.record.finding import Finding
from fuzz.record.known import KnownIssues

from .reproduce import verdict


@dataclass(frozen=True)
class Bug:
    signature: str                           # the bug key of its findings (Finding.bug_key)
    cls: str
    kernels: tuple[str, ...]                 # sorted kernel labels it was found on
    first_seen: int                          # meta.json "recorded", seconds since the epoch
    last_seen: int
    count: int                               # finding directories with this signature
    representative: Finding                  # the smallest program (ties: the smallest id)
    directory: Path                          # the representative's finding directory
    directories: tuple[Path, ...]            # every finding directory of the bug
    note: str = ""                           # known-issues note, if the signature is listed
    known_on: tuple[str, ...] = ()           # the bug's kernels that the known-issues entry covers
    reproducibility: dict[str, tuple[int, int]] = field(default_factory=dict)  # kernel -> (diverged, runs)
    minimized: Program | None = None
    repro_c: Path | None = None
    symptoms: tuple[tuple[str, int], ...] = ()   # (finding signature, count), most frequent first
    leak_confirmed: bool = True              # a leak: did any finding's fresh-VM confirmation show it?

    @property
    def is_known(self) -> bool:
        """A known-issues entry covers every kernel it was seen on."""
        return set(self.kernels) <= set(self.known_on)

    @property
    def unconfirmed(self) -> str:
        """Why the bug is not confirmed ('' if it is): a leak that its fresh-VM confirmation did
        not show again, or a bug that re-runs on the kernel matrix showed nowhere."""
        if not self.leak_confirmed:
            return "the leak did not confirm in a fresh VM"
        if self.reproducibility and not any(diverged for diverged, _ in self.reproducibility.values()):
            return "did not reproduce on " + ", ".join(sorted(self.reproducibility))
        return ""

    @property
    def is_new(self) -> bool:
        """New unless known on every kernel it was seen on, or unconfirmed: a nightly fails on
        new bugs only."""
        return not self.is_known and not self.unconfirmed

    def verdict(self, kernel: str) -> str:
        return verdict(*self.reproducibility[kernel])

    def status(self) -> str:
        if self.is_known:
            return "known"
        if self.unconfirmed:
            return "unconfirmed"
        return f"new on {', '.join(sorted(set(self.kernels) - set(self.known_on)))}" if self.known_on else "new"


def _stderr(message: str) -> None:
    print(f"procfuzz: warning: {message}", file=sys.stderr)


def finding_dirs(dirs: list[Path], warn: Callable[[str], None] = _stderr) -> list[Path]:
    """Every finding directory in every ``findings/`` at or below ``dirs``, each once."""
    found: dict[Path, None] = {}
    for top in dirs:
        top = Path(top).resolve()        # below it only linked finding directories need resolving
        for root, subdirs, _ in os.walk(top, onerror=lambda err: warn(f"skipped {err.filename}: {err.strerror}")):
            subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))   # work in progress
            if Path(root).name == "findings":
                found.update((_resolved(Path(root, d)), None) for d in subdirs)
                subdirs.clear()          # a finding directory holds no further runs
    return list(found)


def _resolved(path: Path) -> Path:
    return path.resolve() if path.is_symlink() else path


def read_finding(directory: Path, known: KnownIssues) -> tuple[Finding, int]:
    """The finding, classified by today's oracle and known issues, and when it was recorded."""
    return reclassified(store.load(directory), known), store.recorded_at(directory)


def reclassified(finding: Finding, known: KnownIssues = KnownIssues()) -> Finding:
    """Every op compared again, with today's known issues: findings of older procfuzz versions
    (or nights) group with today's, and a known divergence no longer hides a later one.
    Crashes, hangs and leaks are not in the traces alone and keep their record."""
    if finding.divergence.cls in OUTCOME_CLASSES:
        entry = known.match(finding.program, finding.expected, finding.divergence, finding.kernel)
        return dataclasses.replace(finding, divergence=dataclasses.replace(finding.divergence, role=KNOWN)) \
            if entry else finding
    comparison = compare_all(finding.program, finding.expected, finding.actual, known.explainer(finding.kernel))
    if comparison.primary is None:
        return finding
    return dataclasses.replace(finding, divergence=comparison.primary, others=comparison.others)


def _leaks_joined(groups: dict[str, list]) -> dict[str, list]:
    """A leak seen with fewer caches than another leak on the same kernel joins it (the
    fullest such): a count that dipped once by noise drops out of a finding's signature
    (fuzz/leaks.py leaking), so `leak pid_namespace` is `leak dentry, pid_namespace,
    proc_inode_cache` seen less clearly.  Across kernels, or without a fuller leak, it stays."""
    caches = {key: set(members[0][0].divergence.leak.caches) for key, members in groups.items()
              if members[0][0].divergence.leak}
    kernels = {key: {finding.kernel for finding, _, _ in groups[key]} for key in caches}
    joined: dict[str, list] = defaultdict(list)
    for key, members in groups.items():
        for member in members:
            fuller = [other for other in caches if key in caches and caches[key] < caches[other]
                      and member[0].kernel in kernels[other]]
            joined[max(fuller, key=lambda other: (len(caches[other]), other)) if fuller else key].append(member)
    return joined


FindingReader = Callable[[Path, KnownIssues], tuple[Finding, int]]


def collect(dirs: list[Path], known: KnownIssues = KnownIssues(),
            warn: Callable[[str], None] = _stderr, read: FindingReader = read_finding) -> list[Bug]:
    """Bugs from run output directories (a run's ``--out``, a merged directory, a tree of
    shards), new ones first, then the most frequent; an unreadable finding is skipped with a
    warning.  ``read`` loads and classifies one finding (a service passes a cached reader)."""
    return bugs_of(finding_dirs([Path(d) for d in dirs], warn), known, warn, read)


def bugs_of(directories: list[Path], known: KnownIssues = KnownIssues(),
            warn: Callable[[str], None] = _stderr, read: FindingReader = read_finding) -> list[Bug]:
    """collect's bugs of these finding directories."""
    groups: dict[str, list[tuple[Finding, int, Path]]] = defaultdict(list)
    for directory in directories:
        try:
            finding, recorded = read(directory, known)
        except ProgramError as err:
            warn(f"skipped {err}")
            continue
        groups[finding.bug_key].append((finding, recorded, directory))
    groups = _leaks_joined(groups)
    bugs = [with_artifacts(_bug(key, members, known), warn) for key, members in groups.items()]
    return sorted(bugs, key=lambda b: (not b.is_new, b.is_known, -b.count, b.signature))


def _bug(signature: str, members: list[tuple[Finding, int, Path]], known: KnownIssues) -> Bug:
    representative, _, directory = min(members, key=lambda m: (len(m[0].program), m[0].program.id, str(m[2])))
    kernels = tuple(sorted({finding.kernel for finding, _, _ in members}))
    # Known on a kernel when a known issue explains every finding of the bug on that kernel.
    known_on = tuple(k for k in kernels if all(f.is_known for f, _, _ in members if f.kernel == k))
    entries = (known.match(f.program, f.expected, f.divergence, f.kernel) for f, _, _ in members if f.is_known)
    note = next((entry.note for entry in entries if entry), "")
    times = [recorded for _, recorded, _ in members]
    symptoms = Counter(finding.signature for finding, _, _ in members)
    return Bug(signature, representative.divergence.cls, kernels, min(times), max(times), len(members),
               representative, directory, tuple(sorted(d for _, _, d in members)), note, known_on,
               symptoms=tuple(sorted(symptoms.items(), key=lambda item: (-item[1], item[0]))),
               leak_confirmed=any(finding.leak_confirmed for finding, _, _ in members))


def with_artifacts(bug: Bug, warn: Callable[[str], None] = _stderr) -> Bug:
    """The bug with what minimisation and reproduction left in its finding directories:
    re-run counts per kernel (summed over every finding of the bug), and the representative's
    minimised program and C reproducer.  A malformed file is a warning, not a failure."""
    reproducibility: dict[str, tuple[int, int]] = {}
    for directory in bug.directories:
        try:
            for kernel, (diverged, runs) in store.read_reproducibility(directory).items():
                before = reproducibility.get(kernel, (0, 0))
                reproducibility[kernel] = (before[0] + diverged, before[1] + runs)
        except (OSError, ValueError) as err:
            warn(f"{directory / store.REPRODUCIBILITY}: ignored: {err}")
    minimized = None
    try:
        minimized = store.read_minimized(bug.directory)
    except ProgramError as err:
        warn(f"ignored: {err}")
    return dataclasses.replace(bug, reproducibility=dict(sorted(reproducibility.items())),
                               minimized=minimized, repro_c=store.existing_repro_c(bug.directory))
