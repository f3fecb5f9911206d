"""Trace: what a target reports for one program, one result per op.

Result strings (both targets use exactly this grammar):

* ``ok`` or ``ok:<payload>``: success; the payload depends on the op
  (``ok:dir`` for lookup, ``ok:a,b,c`` for readdir, ``ok:3.1`` for spawn, ...);
* an errno name such as ``ENOENT``;
* ``dead``: the actor no longer exists (exited, killed, or a thread gone through exec).

The model may put alternatives in one expected result, separated by `` | ``, and a
trailing ``*`` in an alternative accepts any continuation: that is how it states the set of
allowed results where a correct kernel may answer in more than one way, or where it does not
model the content (documented at each place it does so).

Outcomes (``Trace.outcome``):

* ``ok``: every op ran and has its result;
* ``crash``: the kernel failed: its console shows a report (oops, BUG, WARNING, panic, stall),
  titled by the report;
* ``hang``: the guest stayed up but did not answer before the watchdog;
* ``lost``: the guest went away (QEMU exited or was killed) and its console has no kernel
  report: a fault of the host until a re-run on a fresh guest says otherwise;
  titled ``QEMU exited (signal 9) with no kernel report``;
* ``error``: harness trouble (protocol garbage, an agent error, a model exception).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

OUTCOMES = ("ok", "crash", "hang", "lost", "error")
ALTERNATIVE_SEPARATOR = " | "


@dataclass(frozen=True)
class Trace:
    results: tuple[str, ...]
    outcome: str = "ok"          # one of OUTCOMES (see above)
    title: str = ""              # one-line title for crash/hang/lost/error
    kernel: str = "model"        # exact kernel (package=version) or "model"
    guest_us: int = 0            # time the guest spent executing the ops (0 for the model)
    extra: dict = field(default_factory=dict, compare=False)

    def to_json(self) -> dict:
        return {"results": list(self.results), "outcome": self.outcome, "title": self.title,
                "kernel": self.kernel, "guest_us": self.guest_us}

    @classmethod
    def from_json(cls, doc: dict) -> "Trace":
        return cls(tuple(doc["results"]), doc.get("outcome", "ok"), doc.get("title", ""),
                   doc.get("kernel", ""), int(doc.get("guest_us", 0)))

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True, indent=1)


def alternatives(expected: str) -> list[str]:
    return expected.split(ALTERNATIVE_SEPARATOR)


def result_matches(expected: str, actual: str) -> bool:
    """Does the kernel's result satisfy the model's expected (possibly multi-valued) result?"""
    for allowed in alternatives(expected):
        if allowed.endswith("*"):
            if actual.startswith(allowed[:-1]):
                return True
        elif allowed == actual:
            return True
    return False


def fnv1a64(data: bytes) -> str:
    """Content digest used by `read` results (the guest agent computes the same)."""
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"
