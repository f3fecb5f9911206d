"""The oracle: compares a kernel trace with the model's expected trace and classifies the first
divergence (fuzz/compare/classes.py).  A second, model-free check looks for inconsistencies
inside the kernel trace alone.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from reference.program import OBSERVING_KINDS, Program
from reference.trace import Trace, alternatives, result_matches

from .classes import FindingClass as C
from .leaks import Leak
from .observe import OBJECT_REMOVALS, last_removal, observed

GONE = ("ENOENT", "ESRCH", "dead")


@dataclass(frozen=True)
class Divergence:
    cls: str
    index: int | None          # op index, None for whole-program outcomes
    op: str                    # the op's text ('' for whole-program outcomes)
    expected: str
    actual: str
    detail: str = ""
    leak: Leak | None = None   # the caches of a leak, with their counts

    def to_json(self) -> dict:
        doc = {"class": self.cls, "index": self.index, "op": self.op, "expected": self.expected,
               "actual": self.actual, "detail": self.detail}
        return {**doc, "leak": self.leak.to_json()} if self.leak else doc

    @classmethod
    def from_json(cls, doc: dict) -> "Divergence":
        leak = None
        if doc["class"] == C.LEAK:
            leak = Leak.from_json(doc["leak"]) if "leak" in doc else Leak.from_description(doc.get("detail", ""))
        return cls(doc["class"], doc.get("index"), doc.get("op", ""), doc.get("expected", ""),
                   doc.get("actual", ""), doc.get("detail", ""), leak)

    @classmethod
    def of_leak(cls, leak: Leak) -> "Divergence":
        return cls(C.LEAK, None, "", "", "", leak.describe(), leak)

    def summary(self) -> str:
        if self.index is None:
            return f"{self.cls}: {self.detail}"
        return f"{self.cls} at op {self.index} `{self.op}`: expected {self.expected}, got {self.actual}"


def compare(program: Program, expected: Trace, actual: Trace) -> Divergence | None:
    if expected.outcome != "ok":
        return Divergence(C.MODEL_BUG, None, "", "", "", expected.title)
    if actual.outcome in (C.CRASH, C.HANG):
        return Divergence(actual.outcome, len(actual.results), _op_text(program, len(actual.results)),
                          "", actual.outcome, actual.title)
    if actual.outcome != "ok" or len(actual.results) != len(program.ops):
        return Divergence(C.HARNESS_ERROR, None, "", "", "",
                          actual.title or f"{len(actual.results)} results for {len(program.ops)} ops")
    for index, (want, got) in enumerate(zip(expected.results, actual.results)):
        if not result_matches(want, got):
            op = program.ops[index]
            return Divergence(classify(program, index, want, got, expected.results), index, op.to_text(),
                              want, got)
    return find_inconsistency(program, actual)


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



def find_inconsistency(program: Program, trace: Trace) -> Divergence | None:
    """Model-free: a name listed by readdir of D must be found by a later lookup of D/name by the
    same actor, with no state-changing op in between (and the reverse for per-task dirs, where
    every existing entry is listed)."""
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
            if seen is None or not name:
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


