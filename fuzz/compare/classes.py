"""The classes of a finding, named once.

Kernel classes are the kernel's: stale (the kernel shows what the model says is gone), missing
(the reverse), permission (an op succeeds where the model expects it refused: EACCES, EPERM,
EINVAL...), visibility (the difference involves hidepid, credentials or another pid
namespace), errno (both fail, differently), inconsistent (readdir and lookup disagree inside
one kernel trace), crash, hang, leak (slab objects that accumulate run after run).  Tool
classes are procfuzz's own failures (model-bug, harness-error): never counted as kernel findings.
"""

from enum import StrEnum


class FindingClass(StrEnum):
    STALE = "stale"
    MISSING = "missing"
    PERMISSION = "permission"
    VISIBILITY = "visibility"
    ERRNO = "errno"
    INCONSISTENT = "inconsistent"
    CRASH = "crash"
    HANG = "hang"
    LEAK = "leak"
    MODEL_BUG = "model-bug"
    HARNESS_ERROR = "harness-error"


KERNEL_CLASSES = tuple(c for c in FindingClass if c not in ("model-bug", "harness-error"))
TOOL_CLASSES = (FindingClass.MODEL_BUG, FindingClass.HARNESS_ERROR)
# Whole-program outcomes of the kernel: in the console, not in the traces.
OUTCOME_CLASSES = (FindingClass.CRASH, FindingClass.HANG, FindingClass.LEAK)


def is_tool_failure(cls: str) -> bool:
    return cls in TOOL_CLASSES
