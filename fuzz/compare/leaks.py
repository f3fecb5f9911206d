"""The leak oracle: kernel objects a program leaves behind after its sandbox is gone.

After every program the guest agent drops dentries and inodes, waits for an RCU grace period,
shrinks a fixed set of slab caches and reports their active object counts (the ``S`` line of the
``R`` frame, docs/agent-protocol.md; ``trace.extra["slab"]``).  A program is suspect when a
cache's count exceeds the baseline, the counts after the previous program, by more than that
cache's tolerance; it leaks when re-running it ``RERUNS`` times makes a cache's count grow at
every run, by more than its tolerance from the suspect run to the last re-run (a leak
accumulates; noise goes up and down).  ``leak_check`` re-checks a program the same way without a campaign (minimisation,
reproducibility).

The tolerances are measured, not guessed: ``bench/bench_leak_noise.py`` runs the seed corpus
repeatedly on stock kernels and prints how far the counts move between consecutive runs of the
same program.  With the agent's settling (repeated grace periods and shrinks until two reads
agree) almost nothing moves; what does is the asynchronous teardown of network namespaces
(proc_dir_entry, sock_inode_cache follow cleanup_net) and single objects.  Each tolerance is the
largest growth seen on 6.1-cloud and 6.12-cloud, times 1.5, rounded up, at least 2: a program
has to grow a cache by more than any no-bug run did before it costs re-runs.  Noise that still
gets past a tolerance costs ``RERUNS`` runs, not a finding: noise does not grow at every run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

RERUNS = 3
# Largest growth between consecutive runs of a seed on a stock kernel (bench_leak_noise.py,
# 6.1.176-1 and 6.12.117-1~deb12u1 cloud, 15 seeds x 6 runs each: 75 pairs per kernel), times
# 1.5, rounded up, at least 2. Measured: proc_dir_entry +50 and sock_inode_cache +11 (6.1 only,
# asynchronous cleanup_net), cred_jar, mm_struct, net_namespace, pid, sighand_cache,
# signal_cache, task_struct +1, every other cache 0.  net_namespace lags a batch behind: net_free
# leaves the last struct net of a cleanup_net run to the next run (net_complete_free after its
# rcu_barrier, net/core/net_namespace.c in 6.1.192), so a program's namespaces stay counted until
# the next program's are torn down; waiting for them after a program never ends.
TOLERANCE = {
    "cred_jar": 2, "dentry": 2, "files_cache": 2, "inode_cache": 2, "kernfs_node_cache": 2,
    "mm_struct": 2, "mnt_cache": 2, "net_namespace": 2, "nsproxy": 2, "pid": 2, "pid_namespace": 2,
    "proc_dir_entry": 75, "proc_inode_cache": 2, "sighand_cache": 2, "signal_cache": 2,
    "sock_inode_cache": 17, "task_struct": 2, "user_namespace": 2, "uts_namespace": 2,
}
DEFAULT_TOLERANCE = 64      # a cache the table does not know (another kernel's set)


def tolerance(cache: str) -> int:
    return TOLERANCE.get(cache, DEFAULT_TOLERANCE)


def grown(baseline: dict[str, int], counts: dict[str, int]) -> list[str]:
    """Caches whose count exceeds the baseline by more than their tolerance."""
    return sorted(c for c, n in counts.items() if c in baseline and n - baseline[c] > tolerance(c))


def _growing_at_every_run(runs: list[dict[str, int]]) -> bool:
    return any(all(b.get(cache, -1) > a.get(cache, -1) >= 0 for a, b in zip(runs, runs[1:]))
               for cache in runs[0])


def leaking(runs: list[dict[str, int]]) -> dict[str, list[int]]:
    """Of the counts after consecutive runs of one program, the caches that grew at every run,
    and by more than their tolerance from the first to the last: cache -> the counts.  Every
    cache counts, not only those that made the program suspect: a leak of one object a run (a
    pid namespace) stays within a tolerance between two runs, yet belongs to the leak's
    signature, which must not depend on how many programs lay between two measurements (so the
    counts before the first of these runs do not count either).  Growth at every run is
    strict on purpose: a leaking cache may dip once by noise and drop out of one finding's
    signature (measured: leak_dentry's dentry count went 10526, 10525, 10534, 10535 in a busy
    campaign, while its pid_namespace went up by one each run; triage joins such a finding to
    the fuller leak, fuzz/triage.py), but allowing dips let the asynchronous teardown of
    earlier runs' network namespaces through (measured: kernfs_node_cache 11414, 11478, 11580,
    11580; proc_dir_entry 271, 271, 323, 371).  A missing count (a failed run) is no growth."""
    confirmed = {}
    for cache in sorted(runs[0]) if len(runs) > 2 else ():
        series = [run.get(cache, -1) for run in runs]
        if all(b > a >= 0 for a, b in zip(series, series[1:])) and series[-1] - series[0] > tolerance(cache):
            confirmed[cache] = series
    return confirmed


@dataclass(frozen=True)
class Leak:
    """A confirmed leak: every cache that grew at every run (``leaking``), with its counts."""
    series: tuple[tuple[str, tuple[int, ...]], ...]

    @classmethod
    def of(cls, confirmed: dict[str, list[int]]) -> "Leak | None":
        return cls(tuple((cache, tuple(confirmed[cache])) for cache in sorted(confirmed))) if confirmed else None

    @property
    def caches(self) -> tuple[str, ...]:
        return tuple(cache for cache, _ in self.series)

    @property
    def signature(self) -> str:
        """Its caches, whatever the counts: the same on every worker, night and kernel."""
        return "leak " + ", ".join(self.caches)

    def shows(self, other: "Leak | None") -> bool:
        """Does a re-check that found ``other`` show this leak?  It must show at least these
        caches; more is the same leak seen more clearly (a dentry count that dipped once in a
        busy campaign grows steadily in a quiet re-check)."""
        return other is not None and set(self.caches) <= set(other.caches)

    def describe(self) -> str:
        """One clause per cache, cache name first."""
        return "; ".join(f"{cache} grew over the runs: " + ", ".join(str(n) for n in counts)
                         for cache, counts in self.series)

    def to_json(self) -> dict:
        return {cache: list(counts) for cache, counts in self.series}

    @classmethod
    def from_json(cls, doc: dict) -> "Leak":
        if not isinstance(doc, dict) or not all(isinstance(n, int) for counts in doc.values() for n in counts):
            raise ValueError("a leak is an object of cache -> list of counts")
        return cls(tuple((str(cache), tuple(doc[cache])) for cache in sorted(doc)))

    @classmethod
    def from_description(cls, detail: str) -> "Leak | None":
        """A leak recorded by a procfuzz that stored only ``describe()``'s text (older findings,
        also the wording 'grew every run')."""
        return cls.of({match.group(1): [int(n) for n in re.findall(r"\d+", match.group(2))]
                       for match in _DESCRIBED.finditer(detail)})


_DESCRIBED = re.compile(r"(?:^|; )([\w.-]+) grew (?:over the runs|every run): ([\d, ]*)")


def leak_check(run: Callable[[], dict[str, int] | None], runs: int = RERUNS) -> Leak | None:
    """Re-checks a leak without a campaign (minimisation, reproducibility): ``run`` runs the
    program once and returns its slab counts (None if that run failed).  The leak as in
    ``leaking``, over 1 + ``runs`` runs, as the campaign confirms a suspect program."""
    series = []
    for _ in range(1 + runs):
        counts = run()
        if not counts:
            return None
        series.append(counts)
    return Leak.of(leaking(series))


CONFIRM_ROUNDS = 8
CONFIRM_QUORUM = 6          # rounds that must show a cache: a real leak's count may dip once under load
SETTLING_CONTROLS = 2       # empty programs after the window: what a late teardown gives back


def confirm_leak(leak: Leak, run_program: Callable[[], dict[str, int] | None],
                 run_control: Callable[[], dict[str, int] | None], rounds: int = CONFIRM_ROUNDS) -> int:
    """How many of ``rounds`` rounds show the leak again, in a fresh VM (the caller restarts
    it first, so earlier programs' asynchronous teardown is over): each round runs the program,
    then the control (the empty program: the agent's own sandbox set-up and teardown).  A round
    shows a cache when it grew across the program's run, and by more than it moved across the
    control's run after it; a kernel whose counts drift with any run (host load) shows it in no
    round.  A cache is confirmed when CONFIRM_QUORUM rounds show it and it grew by at least one
    a round over the whole window, past its tolerance: a slow asynchronous teardown (a network
    namespace freed during the next control) shows in rounds but gives nothing back over the
    window.  The window ends at the lowest count of its last control and SETTLING_CONTROLS more:
    a teardown still pending at the last reading (cleanup_net is a workqueue, and under load it
    runs late) comes back down, a leak does not.  Returns ``rounds`` when some cache of the leak
    is confirmed, else the most rounds any cache showed, below ``rounds``.

    Measured: zoo leak_dentry confirms; on stock 6.1.176 no seed program confirms any cache
    (bench leak_noise --confirm), and a 30-minute campaign's net_namespace suspect, shown in 7 of
    8 rounds, gave no net growth."""
    first = before = run_control()
    shown = {cache: 0 for cache in leak.caches}
    for _ in range(rounds):
        after_program = run_program()
        after_control = run_control()
        if not (before and after_program and after_control):
            return min(max(shown.values(), default=0), rounds - 1)
        for cache in leak.caches:
            program = after_program.get(cache, 0) - before.get(cache, 0)
            control = after_control.get(cache, 0) - after_program.get(cache, 0)
            shown[cache] += program >= 1 and program > control
        before = after_control
    end = {cache: before.get(cache, 0) for cache in leak.caches}
    for _ in range(SETTLING_CONTROLS):
        if not (settled := run_control()):
            break
        end = {cache: min(count, settled.get(cache, 0)) for cache, count in end.items()}
    for cache in leak.caches:
        net = end[cache] - first.get(cache, 0)
        if shown[cache] >= CONFIRM_QUORUM and net >= rounds and net > tolerance(cache):
            return rounds
    return min(max(shown.values(), default=0), rounds - 1)


@dataclass
class LeakOracle:
    """Per-worker state: the baseline is the counts after the previous program."""
    reruns: int = RERUNS
    baseline: dict | None = None
    suspects: int = 0               # programs that grew a cache past its tolerance (and were re-run)

    def check(self, counts: dict[str, int] | None,
              rerun: Callable[[], dict[str, int] | None]) -> Leak | None:
        """After a program's run with slab ``counts``: None or the confirmed leak. ``rerun`` runs
        the same program again and returns its counts (None if that run failed)."""
        if not counts:
            return None
        baseline, self.baseline = self.baseline, counts
        suspects = grown(baseline, counts) if baseline else []
        if not suspects:
            return None
        self.suspects += 1
        runs = [counts]
        for _ in range(self.reruns):
            again = rerun()
            if not again:
                self.baseline = None     # the VM may have restarted: counts start over
                return None
            runs.append(again)
            if not _growing_at_every_run(runs):
                break                    # no cache can be leaking: the other re-runs would not change that
        self.baseline = runs[-1]
        return Leak.of(leaking(runs)) if len(runs) == 1 + self.reruns else None

    def reset(self) -> None:
        """Something else ran the program or restarted the VM: the next counts are the baseline."""
        self.baseline = None
