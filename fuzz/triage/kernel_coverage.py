"""What a corpus reaches of the kernel's proc code: ``procfuzz coverage``.

Every program runs on a kernel with the coverage probe (targets/coverage: each trace carries
``extra["kcov"]``, function -> calls); the hits are summed per function over the corpus and held
against the pin's probed-function list (targets/kernels/<package>.kcov.txt). The functions never
reached are the generator's (and often the model's) blind spots: docs/model-gaps.md explains
them. The netns teardown (cleanup_net) runs in a workqueue after a program's end, so its calls
are counted in whichever program runs next: hits per program are not exact, the corpus's
totals are.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from reference.program import Program
from targets.base import Target
from targets.coverage.lists import ProbeList

from fuzz.errors import ToolError
from fuzz.execute.kernels import run_on_kernel


@dataclass
class KernelCoverage:
    kernel: str                                   # the kernel's label
    probes: ProbeList
    hits: Counter = field(default_factory=Counter)        # function -> calls over the corpus
    programs: Counter = field(default_factory=Counter)    # function -> programs that reached it
    runs: int = 0
    failed: list[str] = field(default_factory=list)       # "path: outcome: title" of failed runs

    def add(self, kcov: dict[str, int]) -> None:
        listed = set(self.probes.names)
        self.runs += 1
        for name, calls in kcov.items():
            if name in listed and calls:
                self.hits[name] += calls
                self.programs[name] += 1

    @property
    def reached(self) -> int:
        return sum(1 for name in self.probes.names if self.hits[name])

    @property
    def fraction(self) -> float:
        return self.reached / len(self.probes.names) if self.probes.names else 0.0

    def by_file(self) -> list[tuple[str, int, int]]:
        """(source file, functions reached, functions probed), in the list's order."""
        totals: dict[str, list[int]] = {}
        for path, name in self.probes.functions:
            entry = totals.setdefault(path, [0, 0])
            entry[0] += bool(self.hits[name])
            entry[1] += 1
        return [(path, reached, total) for path, (reached, total) in totals.items()]

    def unreached(self) -> list[tuple[str, str]]:
        return [(path, name) for path, name in self.probes.functions if not self.hits[name]]

    def to_json(self) -> dict:
        return {"kernel": self.kernel, "runs": self.runs, "probed": len(self.probes.names),
                "reached": self.reached, "fraction": round(self.fraction, 4),
                "files": [{"file": path, "reached": reached, "probed": total}
                          for path, reached, total in self.by_file()],
                "functions": [{"file": path, "function": name, "hits": self.hits[name],
                               "programs": self.programs[name]} for path, name in self.probes.functions],
                "unreached": [f"{path} {name}" for path, name in self.unreached()],
                "failed": self.failed}


def measure(programs: Iterable[tuple[Path, Program]], kernel: Target, probes: ProbeList) -> KernelCoverage:
    """Runs every program on the kernel (a target with the coverage probe) and sums its hits."""
    coverage = KernelCoverage(kernel.label, probes)
    for path, program in programs:
        trace = run_on_kernel(kernel, program)
        if "kcov" not in trace.extra and trace.outcome == "ok":
            raise ToolError(f"{kernel.label}: the kernel target has no coverage probe")
        if trace.outcome != "ok":
            coverage.failed.append(f"{path}: {trace.outcome}: {trace.title}")
        coverage.add(trace.extra.get("kcov", {}))
    return coverage


def format_text(coverage: KernelCoverage) -> list[str]:
    """Per file, then per reached function (calls, programs), then the unreached ones."""
    lines = [f"kernel coverage on {coverage.kernel}: {coverage.reached} of {len(coverage.probes.names)} "
             f"probed functions reached ({coverage.fraction:.1%}) by {coverage.runs} programs"]
    lines += [f"  {path:28} {reached:4} / {total:<4} {reached / total:6.1%}"
              for path, reached, total in coverage.by_file()]
    lines.append("reached (calls, programs):")
    lines += [f"  {path:28} {name:44} {coverage.hits[name]:9} {coverage.programs[name]:5}"
              for path, name in coverage.probes.functions if coverage.hits[name]]
    unreached = coverage.unreached()
    lines.append(f"never reached ({len(unreached)}):")
    lines += [f"  {path:28} {name}" for path, name in unreached]
    lines += [f"failed: {line}" for line in coverage.failed]
    return lines
