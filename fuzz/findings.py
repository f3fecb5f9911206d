"""Findings: one content-addressed directory per divergent program, written atomically.

Layout of a finding directory ``<out>/findings/<program id>/``::

    program.prog  program.json  model.json  kernel.json  divergence.json  console.log  meta.json

The directory is assembled under a temporary name and renamed into place, so readers never
see a partial finding and several workers can share one output directory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from reference.program import Program, ProgramError, parse
from reference.trace import Trace

from .oracle import Divergence

_NUMBER = re.compile(r"(?<![A-Za-z])\d+")


@dataclass(frozen=True)
class Finding:
    program: Program
    expected: Trace
    actual: Trace
    divergence: Divergence
    kernel: str
    console: str = ""
    reruns: tuple[int, int] = (0, 0)     # (runs that diverged the same way, re-runs done)

    @property
    def signature(self) -> str:
        """Stable across runs: class, op kind and the op's path with handles abstracted."""
        d = self.divergence
        if d.index is None or d.index >= len(self.program.ops):
            return f"{d.cls}: {_NUMBER.sub('N', d.detail)[:120]}"
        op = self.program.ops[d.index]
        return f"{d.cls} {op.kind} {path_pattern(_op_path(self.program, op))}".strip()



def _op_path(program: Program, op) -> str:
    """The op's path, or for an op on a held fd the path that fd was opened with."""
    args = dict(op.args)
    if "path" in args:
        return args["path"]
    opened = [o for o in program.ops if o.kind == "open" and o.ret == args.get("fd")]
    return opened[0].arg("path") if opened else ""


def path_pattern(path: str) -> str:
    """Pids, tids, fds, mount points and device names abstracted away."""
    pattern = re.sub(r"\{[pt]\d+\}", "<pid>", path)
    pattern = re.sub(r"\{m\d+\}", "/proc", pattern)
    pattern = re.sub(r"\{f\d+\}", "<fd>", pattern)
    return re.sub(r"/(conf|neigh)/(?!all\b|default\b)[a-z][a-z0-9]*", r"/\1/<dev>", pattern)


def record(out: Path, finding: Finding) -> tuple[Path, bool]:
    """Store a finding; returns (its directory, whether it is new)."""
    root = Path(out) / "findings"
    root.mkdir(parents=True, exist_ok=True)
    final = root / finding.program.id
    if final.exists():
        return final, False
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
    try:
        files = {
            "program.prog": finding.program.to_text(),
            "program.json": finding.program.to_json(),
            "model.json": finding.expected.dumps(),
            "kernel.json": finding.actual.dumps(),
            "divergence.json": json.dumps(finding.divergence.to_json(), indent=1, sort_keys=True),
            "console.log": finding.console,
            "meta.json": json.dumps({"kernel": finding.kernel, "signature": finding.signature,
                                     "class": finding.divergence.cls, "recorded": int(time.time()),
                                     "reruns": {"diverged": finding.reruns[0], "runs": finding.reruns[1]}},
                                    indent=1, sort_keys=True),
        }
        for name, text in files.items():
            with open(staging / name, "w") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
        try:
            os.rename(staging, final)
        except OSError:
            if final.exists():           # another worker recorded the same program first
                return final, False
            raise
        return final, True
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def load(directory: Path) -> Finding:
    directory = Path(directory)
    try:
        program = parse((directory / "program.json").read_text(), source=str(directory / "program.json"))
        meta = json.loads((directory / "meta.json").read_text())
        return Finding(program,
                       Trace.from_json(json.loads((directory / "model.json").read_text())),
                       Trace.from_json(json.loads((directory / "kernel.json").read_text())),
                       Divergence.from_json(json.loads((directory / "divergence.json").read_text())),
                       meta.get("kernel", ""),
                       (directory / "console.log").read_text(errors="replace"),
                       (meta.get("reruns", {}).get("diverged", 0), meta.get("reruns", {}).get("runs", 0)))
    except (OSError, ValueError, KeyError) as err:
        raise ProgramError(f"not a readable finding: {err}", source=str(directory)) from None


def list_findings(out: Path) -> list[Path]:
    root = Path(out) / "findings"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
