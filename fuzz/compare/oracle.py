"""The oracle: compares a kernel trace with the model's expected trace op by op, to the end of
the program, and classifies every divergence (fuzz/compare/classes.py).  A second, model-free
check looks for inconsistencies inside the kernel trace alone.

After a divergence the model and the kernel may hold different state.  Where the model can adopt
the kernel's answer (a known issue: ``explained``) checking simply goes on; otherwise the ops
that depend on what diverged (the handles and devices it created or changed) are that
divergence's consequences, recorded as such, and what the program checks apart from them is
still checked.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Callable

from reference.program import OBSERVING_KINDS, Program
from reference.state_check import split_state_check
from reference.trace import Trace, alternatives, result_matches

from .classes import FindingClass as C
from .leaks import Leak
from .observe import OBJECT_REMOVALS, last_removal, observed

GONE = ("ENOENT", "ESRCH", "dead")
STATE_CHECK = "state check"      # the detail of a divergence of an op of the program's state check


@dataclass(frozen=True)
class Divergence:
    cls: str
    index: int | None          # op index, None for whole-program outcomes
    op: str                    # the op's text ('' for whole-program outcomes)
    expected: str
    actual: str
    detail: str = ""
    leak: Leak | None = None   # the caches of a leak, with their counts
    role: str = ""             # "", or KNOWN (a known issue explains it) or CONSEQUENCE (of an earlier one)

    def to_json(self) -> dict:
        doc = {"class": self.cls, "index": self.index, "op": self.op, "expected": self.expected,
               "actual": self.actual, "detail": self.detail}
        doc.update({"leak": self.leak.to_json()} if self.leak else {})
        return {**doc, "role": self.role} if self.role else doc

    @classmethod
    def from_json(cls, doc: dict) -> "Divergence":
        leak = None
        if doc["class"] == C.LEAK:
            leak = Leak.from_json(doc["leak"]) if "leak" in doc else Leak.from_description(doc.get("detail", ""))
        return cls(doc["class"], doc.get("index"), doc.get("op", ""), doc.get("expected", ""),
                   doc.get("actual", ""), doc.get("detail", ""), leak, str(doc.get("role", "")))

    @classmethod
    def of_leak(cls, leak: Leak) -> "Divergence":
        return cls(C.LEAK, None, "", "", "", leak.describe(), leak)

    def summary(self) -> str:
        if self.index is None:
            return f"{self.cls}: {self.detail}"
        where = f"op {self.index} of the state check" if self.detail == STATE_CHECK else f"op {self.index}"
        return f"{self.cls} at {where} `{self.op}`: expected {self.expected}, got {self.actual}"


KNOWN, CONSEQUENCE = "known", "consequence"


@dataclass(frozen=True)
class Comparison:
    """Every divergence of one kernel run, in program order, each with its role."""
    divergences: tuple[Divergence, ...] = ()

    @property
    def primary(self) -> Divergence | None:
        """What the finding is about: the first divergence neither known nor a consequence, else
        the first known one (a finding of a known issue only)."""
        return next((d for d in self.divergences if not d.role), None) or \
            next((d for d in self.divergences if d.role == KNOWN), None)

    @property
    def others(self) -> tuple[Divergence, ...]:
        return tuple(d for d in self.divergences if d is not self.primary)

    @property
    def all_known(self) -> bool:
        return bool(self.divergences) and all(d.role == KNOWN for d in self.divergences)


Explained = Callable[[Program, Trace, Divergence], bool]


def compare_all(program: Program, expected: Trace, actual: Trace,
                explained: Explained = lambda program, expected, divergence: False) -> Comparison:
    """Every divergent op, to the end; ``explained(program, expected, divergence)`` says a known
    issue explains a divergence (the model adopts the kernel's answer there)."""
    whole = _whole_program(program, expected, actual)
    if whole is not None:
        known = whole.cls in (C.CRASH, C.HANG) and explained(program, expected, whole)
        return Comparison((replace(whole, role=KNOWN) if known else whole,))
    found, taint = [], _Taint()
    check_from = split_state_check(program)
    for index, (want, got) in enumerate(zip(expected.results, actual.results)):
        op = program.ops[index]
        if result_matches(want, got):
            continue
        divergence = Divergence(classify(program, index, want, got, expected.results), index, op.to_text(),
                                want, got, STATE_CHECK if index >= check_from else "")
        if taint.reaches(op):
            found.append(replace(divergence, role=CONSEQUENCE))
        elif explained(program, expected, divergence):
            found.append(replace(divergence, role=KNOWN))
        else:
            found.append(divergence)
            taint.add(op)
    if not found and (inconsistency := find_inconsistency(program, actual, expected)):
        found.append(inconsistency)
    return Comparison(tuple(found))


# Ops whose divergence leaves their actor in another state (ended, other credentials or netns).
_ACTOR_CHANGES = frozenset({"exit", "exec", "setuid", "setgid", "unshare_net", "setns_net"})


class _Taint:
    """What a divergent op may have left in a different state in the model and the kernel: the
    handle it created, the task, fd, mount or child it acted on, its actor when it changes the
    actor, the actor's cwd for a chdir, the devices it named.  An observing op changes nothing.
    A later op that uses one of them is a consequence."""

    def __init__(self):
        self.handles: set[str] = set()
        self.cwds: set[str] = set()
        self.devices: set[str] = set()

    def add(self, op) -> None:
        if op.kind in OBSERVING_KINDS:
            return
        args = dict(op.args)
        self.handles |= {op.ret} if op.ret else set()
        self.handles |= {str(args[name]) for name in ("child", "mount", "fd") if args.get(name)}
        if op.kind in _ACTOR_CHANGES:
            self.handles.add(op.actor)
        if op.kind == "chdir":
            self.cwds.add(op.actor)
        self.devices |= {str(args[name]) for name in ("name", "new", "peer") if args.get(name)}

    def reaches(self, op) -> bool:
        args = dict(op.args)
        path = str(args.get("path", ""))
        relative = bool(path) and not path.startswith("{") or args.get("fd") == "cwd"
        words = set(re.split(r"[/ ]", " ".join(str(value) for value in args.values())))
        used = set(op.handles_used()) | ({op.actor} if op.actor else set())
        return bool(used & self.handles or words & self.devices or relative and op.actor in self.cwds)


def _whole_program(program: Program, expected: Trace, actual: Trace) -> Divergence | None:
    """A divergence of the whole run (a model bug, a crash, a hang, a harness error), if any."""
    if expected.outcome != "ok":
        return Divergence(C.MODEL_BUG, None, "", "", "", expected.title)
    if actual.outcome in (C.CRASH, C.HANG):
        return Divergence(actual.outcome, len(actual.results), _op_text(program, len(actual.results)),
                          "", actual.outcome, actual.title)
    if actual.outcome != "ok" or len(actual.results) != len(program.ops):
        return Divergence(C.HARNESS_ERROR, None, "", "", "",
                          actual.title or f"{len(actual.results)} results for {len(program.ops)} ops")
    return None


def compare(program: Program, expected: Trace, actual: Trace) -> Divergence | None:
    """The first divergence of the run (compare_all without known issues: its primary)."""
    return compare_all(program, expected, actual).primary


def _op_text(program: Program, index: int) -> str:
    return program.ops[index].to_text() if index < len(program.ops) else ""


def classify(program: Program, index: int, expected: str, actual: str,
             results: Sequence[str] = ()) -> str:
    """``results``: the model's results of the program, so that a removal the model says failed
    does not count as one."""
    op = program.ops[index]
    want = alternatives(expected)[0]
    # ESRCH comes from a task directory that resolved to a dead task: the name should have
    # gone (a stale dentry), whatever credentials or hidepid were involved; and the reverse.
    if (want, actual) == ("ENOENT", "ESRCH"):
        return C.STALE
    if (want, actual) == ("ESRCH", "ENOENT"):
        return C.MISSING
    # Success where the model refuses for another reason than a missing object: a check the
    # kernel skipped (a permission bypass), whatever op it is.
    if actual.startswith("ok") and not want.startswith("ok") and want not in GONE:
        return C.PERMISSION
    # A listing shows every task the mount lets the reader see: an extra or missing name there
    # is visibility even after a removal; a single name is about the object the path names.
    if _involves_visibility(program, index) and (
            op.kind in ("readdir", "getdents")
            or last_removal(program, index, observed(program, index, want, actual, results), results)
            not in OBJECT_REMOVALS):
        return C.VISIBILITY
    if op.kind in ("readdir", "getdents") and want.startswith("ok:") and actual.startswith("ok:"):
        extra = set(_names(actual)) - set(_names(want))
        return C.STALE if extra else C.MISSING
    want_ok, got_ok = want.startswith("ok"), actual.startswith("ok")
    if got_ok and not want_ok and want in GONE:
        return C.STALE
    if want_ok and not got_ok and actual in GONE:
        return C.MISSING
    if not want_ok and not got_ok:
        return C.ERRNO
    return C.STALE if op.kind in OBSERVING_KINDS and got_ok else C.ERRNO


def _names(result: str) -> list[str]:
    body = result[3:]
    return body.split(",") if body else []


def _involves_visibility(program: Program, index: int) -> bool:
    """A path op through a hidepid mount, after changed credentials or nested pid namespaces."""
    op = program.ops[index]
    # getdents on a held fd lists with the mount's hidepid at that moment, like readdir
    path = observed(program, index)[0] if op.kind == "getdents" else dict(op.args).get("path", "")
    if not path:
        return False                     # other ops on held fds look nothing up
    if re.match(r"\{m\d+\}/sys(/|$)", path):
        return False                     # /proc/sys shows by network namespace, not pid visibility
    for op in program.ops[:index]:
        if op.kind in ("setuid", "setgid") or (op.kind == "spawn" and op.arg("newpid")):
            return True
        if op.kind == "mount_proc" and op.arg("hidepid") != "off" and path.startswith("{" + op.ret + "}"):
            return True
    return False



def find_inconsistency(program: Program, trace: Trace, expected: Trace | None = None) -> Divergence | None:
    """Model-free: a name listed by readdir of D must be found by a later lookup of D/name by the
    same actor, with no state-changing op in between (and the reverse for per-task dirs, where
    every existing entry is listed).  Not where the model (``expected``) leaves the lookup open
    both ways: the object may go at any moment (a veth end dies with its peer's network
    namespace, in cleanup_net, whenever that runs), so it may go between two observing ops."""
    listings: dict[tuple[str, str], tuple[int, set[str]]] = {}
    for index, (op, result) in enumerate(zip(program.ops, trace.results)):
        if op.kind not in OBSERVING_KINDS:
            listings.clear()
            continue
        if op.kind == "readdir" and result.startswith("ok:"):
            listings[(op.actor, op.arg("path"))] = (index, set(_names(result)))
        elif op.kind == "lookup":
            directory, _, name = op.arg("path").rpartition("/")
            seen = listings.get((op.actor, directory))
            if seen is None or not name or (expected is not None and _either_way(expected.results[index])):
                continue
            listed_at, names = seen
            resolved = _resolved_name(name, program, trace)
            if resolved is None:
                continue
            if resolved in names and result in GONE:
                return Divergence(C.INCONSISTENT, index, op.to_text(), "ok:*", result,
                                  f"readdir at op {listed_at} listed {resolved!r}")
            if resolved not in names and result.startswith("ok") and "/task" in directory[-5:]:
                return Divergence(C.INCONSISTENT, index, op.to_text(), "ENOENT", result,
                                  f"readdir at op {listed_at} did not list {resolved!r}")
    return None


def _either_way(want: str) -> bool:
    """Does the model allow both finding the name and not finding it?"""
    allowed = alternatives(want)
    return "*" in allowed or (any(a.startswith("ok") for a in allowed) and any(a in GONE for a in allowed))


def _resolved_name(name: str, program: Program, trace: Trace) -> str | None:
    """A literal name, or a {pN}/{tN} handle whose number the kernel reported at spawn (only
    for tasks of the sandbox's own namespace, where that number is the one paths use)."""
    if not name.startswith("{"):
        return name
    if any(op.kind == "spawn" and op.arg("newpid") for op in program.ops):
        return None                      # numbers then depend on the mount's namespace
    handle = name[1:-1]
    for op, result in zip(program.ops, trace.results):
        if op.ret == handle and op.kind in ("spawn", "spawn_thread") and result.startswith("ok:"):
            numbers = result[3:].split(".")
            return numbers[0] if len(numbers) == 1 else None
    return "1" if handle == "p1" else None


