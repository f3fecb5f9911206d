"""Model coverage: which behaviours of the reference model a program exercised.

A feature is (op kind, shape of the path, shape of the result): e.g. ("lookup", "m/p/task/t",
"ENOENT").  A program that shows a feature the campaign has not seen joins the working corpus.
This is the cheap, kernel-free signal used on every executed program; `procfuzz atheris` adds
code-coverage guidance over the instrumented model on top of it.
"""

from __future__ import annotations

import re

from reference.program import Program
from reference.trace import Trace

_HANDLE = re.compile(r"\{([ptmf])\d+\}")


def path_shape(path: str) -> str:
    return _HANDLE.sub(lambda m: m.group(1), path)


def result_shape(result: str) -> str:
    if result.startswith("ok:") and result.count(":") >= 2 and result[3:4].isdigit():
        return "ok:data"                       # read: length and digest vary
    if result.startswith("ok:") and ("," in result or result[3:].isdigit()):
        return "ok:list"
    return result if not result.startswith("ok:/") else "ok:path"


def features(program: Program, trace: Trace) -> set[tuple]:
    found = set()
    previous = "start"
    for op, result in zip(program.ops, trace.results):
        args = dict(op.args)
        shape = path_shape(args.get("path", ""))
        found.add((op.kind, shape, result_shape(result)))
        found.add(("after", previous, op.kind, result_shape(result)))
        previous = op.kind
    return found


# ---- kernel coverage (targets/coverage): what the kernel's proc code ran ---------------------

# AFL's hit-count classes: a function called 1, 2, 3, 4-7, 8-15, 16-31, 32-127 or 128+ times.
_BUCKETS = (1, 2, 3, 4, 8, 16, 32, 128)


def hit_bucket(hits: int) -> int:
    """The lower bound of the AFL class of a (positive) hit count."""
    return max(bound for bound in _BUCKETS if bound <= hits)


def kernel_features(trace: Trace) -> set[tuple]:
    """("kernel", function) for every probed function the program reached, and ("kernel",
    function, class of its hit count); none from a trace without coverage (probe off)."""
    found = set()
    for name, hits in trace.extra.get("kcov", {}).items():
        if hits > 0:
            found.add(("kernel", name))
            found.add(("kernel", name, hit_bucket(hits)))
    return found
