"""Known issues (corpus/known-issues.toml): divergences already understood, a documented kernel
inconsistency or a bug already reported, each with a note.  A campaign records them but does not
count them as new; triage marks them known; replay and repro say so.

An entry names exactly what it explains: the signature, the model's result (``expected``) and
the kernel's (``actual``) at the divergent op, and optionally the kernels (labels of the stock
kernel) it is known on; a different result on the same path is not that issue.  Crash, hang and
leak entries have no per-op results: their signature is their title or caches.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from reference.program import Program, ProgramError
from reference.trace import Trace
from targets.qemu import stock_label

from fuzz.compare.oracle import Divergence, Explained

from .signature import signature

WHOLE_RUN_PREFIXES = ("crash:", "hang:", "leak ")


@dataclass(frozen=True)
class KnownIssue:
    signature: str
    note: str
    kernels: tuple[str, ...] = ()      # stock kernel labels; empty: every kernel
    expected: str | None = None        # the model's result it explains (None: a whole-run signature)
    actual: str | None = None          # the kernel's result it explains

    def explains(self, divergence: Divergence, sig: str, kernel: str) -> bool:
        if sig != self.signature or (self.kernels and stock_label(kernel) not in self.kernels):
            return False
        return self.expected is None or (divergence.expected, divergence.actual) == (self.expected, self.actual)


@dataclass(frozen=True)
class KnownIssues:
    issues: tuple[KnownIssue, ...] = ()

    def match(self, program: Program, expected: Trace, divergence: Divergence, kernel: str) -> KnownIssue | None:
        """The entry that explains this divergence of this program on this kernel, if any."""
        if not self.issues:
            return None
        sig = signature(program, expected.results, divergence)
        return next((issue for issue in self.issues if issue.explains(divergence, sig, kernel)), None)

    def explainer(self, kernel: str) -> Explained:
        """For fuzz.compare.oracle.compare_all: does a known issue of ``kernel`` explain it?"""
        return lambda program, expected, divergence: self.match(program, expected, divergence, kernel) is not None

    def __len__(self) -> int:
        return len(self.issues)


def load_known_issues(path: Path) -> KnownIssues:
    """A missing file means no known issues; a malformed one is a ProgramError naming the entry."""
    path = Path(path)
    if not path.exists():
        return KnownIssues()
    try:
        doc = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ProgramError(f"malformed known-issues file: {err}", source=str(path)) from None
    return KnownIssues(tuple(_entry(index, entry, path) for index, entry in enumerate(doc.get("issue", []))))


def _entry(index: int, entry, path: Path) -> KnownIssue:
    def fail(why: str):
        raise ProgramError(f"issue {index}: {why}", source=str(path))
    if not isinstance(entry, dict) or not isinstance(entry.get("signature"), str):
        fail("needs a 'signature' string")
    kernels = entry.get("kernels", [])
    if not isinstance(kernels, list) or not all(isinstance(k, str) for k in kernels):
        fail("'kernels' must be a list of kernel labels")
    expected, actual = entry.get("expected"), entry.get("actual")
    whole_run = entry["signature"].startswith(WHOLE_RUN_PREFIXES)
    if not whole_run and not (isinstance(expected, str) and isinstance(actual, str)):
        fail("needs the 'expected' and 'actual' results it explains (strings), so that it cannot "
             "explain a different divergence of the same op and path")
    return KnownIssue(entry["signature"], str(entry.get("note", "")), tuple(kernels),
                      None if whole_run else expected, None if whole_run else actual)
