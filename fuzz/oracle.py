"""The oracle: compares a kernel trace with the model's expected trace and classifies the first
divergence.  A second, model-free check looks for inconsistencies inside the kernel trace alone.

Classes: stale (the kernel shows what the model says is gone), missing (the reverse),
visibility (the difference involves hidepid, credentials or another pid namespace), errno
(both fail, differently), inconsistent (readdir and lookup disagree inside one kernel trace),
crash, hang; leak (slab objects that accumulate run after run, fuzz/leaks.py); plus model-bug and harness-error, which are procfuzz's own failures and never
counted as kernel findings.
"""

from __future__ import annotations

from dataclasses import dataclass

from reference.program import OBSERVING_KINDS, Program
from reference.trace import Trace, alternatives, result_matches

KERNEL_CLASSES = ("stale", "missing", "visibility", "errno", "inconsistent", "crash", "hang", "leak")
TOOL_CLASSES = ("model-bug", "harness-error")
GONE = ("ENOENT", "ESRCH", "dead")


@dataclass(frozen=True)
class Divergence:
    cls: str
    index: int | None          # op index, None for whole-program outcomes
    op: str                    # the op's text ('' for whole-program outcomes)
    expected: str
    actual: str
    detail: str = ""

    def to_json(self) -> dict:
        return {"class": self.cls, "index": self.index, "op": self.op, "expected": self.expected,
                "actual": self.actual, "detail": self.detail}

    @classmethod
    def from_json(cls, doc: dict) -> "Divergence":
        return cls(doc["class"], doc.get("index"), doc.get("op", ""), doc.get("expected", ""),
                   doc.get("actual", ""), doc.get("detail", ""))

    def summary(self) -> str:
        if self.index is None:
            return f"{self.cls}: {self.detail}"
        return f"{self.cls} at op {self.index} `{self.op}`: expected {self.expected}, got {self.actual}"


def compare(program: Program, expected: Trace, actual: Trace) -> Divergence | None:
    if expected.outcome != "ok":
        return Divergence("model-bug", None, "", "", "", expected.title)
    if actual.outcome in ("crash", "hang"):
        return Divergence(actual.outcome, len(actual.results), _op_text(program, len(actual.results)),
                          "", actual.outcome, actual.title)
    if actual.outcome != "ok" or len(actual.results) != len(program.ops):
        return Divergence("harness-error", None, "", "", "",
                          actual.title or f"{len(actual.results)} results for {len(program.ops)} ops")
    for index, (want, got) in enumerate(zip(expected.results, actual.results)):
        if not result_matches(want, got):
            op = program.ops[index]
            return Divergence(classify(program, index, want, got), index, op.to_text(), want, got)
    return find_inconsistency(program, actual)


def _op_text(program: Program, index: int) -> str:
    return program.ops[index].to_text() if index < len(program.ops) else ""


def classify(program: Program, index: int, expected: str, actual: str) -> str:
    op = program.ops[index]
    if _involves_visibility(program, index):
        return "visibility"
    want = alternatives(expected)[0]
    if op.kind in ("readdir", "getdents") and want.startswith("ok:") and actual.startswith("ok:"):
        extra = set(_names(actual)) - set(_names(want))
        return "stale" if extra else "missing"
    want_ok, got_ok = want.startswith("ok"), actual.startswith("ok")
    if got_ok and not want_ok and want in GONE:
        return "stale"
    if want_ok and not got_ok and actual in GONE:
        return "missing"
    if not want_ok and not got_ok:
        return "errno"
    return "stale" if op.kind in OBSERVING_KINDS and got_ok else "errno"


def _names(result: str) -> list[str]:
    body = result[3:]
    return body.split(",") if body else []


def _involves_visibility(program: Program, index: int) -> bool:
    """A path op through a hidepid mount, after changed credentials or nested pid namespaces."""
    path = dict(program.ops[index].args).get("path", "")
    if not path:
        return False                     # ops on held fds do not look anything up
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
                return Divergence("inconsistent", index, op.to_text(), "ok:*", result,
                                  f"readdir at op {listed_at} listed {resolved!r}")
            if resolved not in names and result.startswith("ok") and "/task" in directory[-5:]:
                return Divergence("inconsistent", index, op.to_text(), "ENOENT", result,
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
