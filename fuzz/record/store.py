"""The finding store: one content-addressed directory per finding, ``<out>/findings/<program id>/``.
This module alone knows the names of a finding directory's files, and writes and reads them all::

    program.prog  program.json  model.json  kernel.json  divergence.json  console.log  meta.json
    minimized.prog  minimize.json        (procfuzz minimize)
    reproducibility.json                 (procfuzz reproduce)
    repro.c                              (procfuzz export-c)

A finding is assembled under a temporary name and renamed into place, so readers never see a
partial finding and several workers can share one output directory; later artifacts are
written atomically (fuzz/record/programs.py atomic_write).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from reference.program import Program, ProgramError, parse
from reference.trace import Trace

from fuzz.compare.oracle import Divergence

from .finding import Finding
from .programs import atomic_write, load_program

PROGRAM, PROGRAM_JSON, MODEL, KERNEL = "program.prog", "program.json", "model.json", "kernel.json"
DIVERGENCE, CONSOLE, META = "divergence.json", "console.log", "meta.json"
MINIMIZED, MINIMIZE_SUMMARY = "minimized.prog", "minimize.json"
REPRODUCIBILITY = "reproducibility.json"     # {"<kernel label>": {"diverged": k, "runs": n}}
REPRO_C = "repro.c"
CONSOLE_CHARS = 64 * 1024                    # a console excerpt kept per finding, at most


def record(out: Path, finding: Finding) -> tuple[Path, bool]:
    """Store a finding; returns (its directory, whether it is new)."""
    root = Path(out) / "findings"
    root.mkdir(parents=True, exist_ok=True)
    final = root / finding.program.id
    if final.exists():
        return final, False
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
    try:
        for name, text in _files(finding).items():
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


def _files(finding: Finding) -> dict[str, str]:
    meta = {"kernel": finding.kernel, "signature": finding.signature, "class": finding.divergence.cls,
            "recorded": int(time.time()),
            "reruns": {"diverged": finding.reruns[0], "runs": finding.reruns[1]}}
    return {PROGRAM: finding.program.to_text(),
            PROGRAM_JSON: finding.program.to_json(),
            MODEL: finding.expected.dumps(),
            KERNEL: finding.actual.dumps(),
            DIVERGENCE: json.dumps({**finding.divergence.to_json(),
                                    "others": [d.to_json() for d in finding.others]}, indent=1, sort_keys=True),
            CONSOLE: finding.console[-CONSOLE_CHARS:],
            META: json.dumps(meta, indent=1, sort_keys=True)}


def program_path(directory: Path) -> Path:
    return Path(directory) / PROGRAM


def load(directory: Path) -> Finding:
    directory = Path(directory)
    try:
        program = parse((directory / PROGRAM_JSON).read_text(), source=str(directory / PROGRAM_JSON))
        meta = _meta(directory)
        reruns = meta.get("reruns", {})
        divergence = json.loads((directory / DIVERGENCE).read_text())
        return Finding(program,
                       Trace.from_json(json.loads((directory / MODEL).read_text())),
                       Trace.from_json(json.loads((directory / KERNEL).read_text())),
                       Divergence.from_json(divergence),
                       meta.get("kernel", ""),
                       (directory / CONSOLE).read_text(errors="replace"),
                       (reruns.get("diverged", 0), reruns.get("runs", 0)),
                       tuple(Divergence.from_json(other) for other in divergence.get("others", [])))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ProgramError(f"not a readable finding: {err}", source=str(directory)) from None


def _meta(directory: Path) -> dict:
    meta = json.loads((directory / META).read_text())
    if not isinstance(meta, dict):
        raise ValueError(f"{META} is not an object")
    return meta


def recorded_at(directory: Path) -> int:
    """When the finding was recorded (meta.json, else the file's time)."""
    path = Path(directory) / META
    try:
        recorded = _meta(Path(directory)).get("recorded")
        return recorded if isinstance(recorded, int) and not isinstance(recorded, bool) else int(path.stat().st_mtime)
    except (OSError, ValueError) as err:
        raise ProgramError(f"not a readable finding: {err}", source=str(directory)) from None


def kernel_of(directory: Path) -> str:
    """The kernel label a finding ran on, '' if its meta.json is unreadable."""
    try:
        return str(_meta(Path(directory)).get("kernel", ""))
    except (OSError, ValueError):
        return ""


def list_findings(out: Path) -> list[Path]:
    root = Path(out) / "findings"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


# ---- artifacts of the follow-up steps -------------------------------------------------------------

def write_minimized(directory: Path, program: Program, summary: dict) -> None:
    atomic_write(Path(directory) / MINIMIZED, program.to_text())
    atomic_write(Path(directory) / MINIMIZE_SUMMARY, json.dumps(summary, indent=1, sort_keys=True) + "\n")


def minimized_path(directory: Path) -> Path | None:
    path = Path(directory) / MINIMIZED
    return path if path.is_file() else None


def read_minimized(directory: Path) -> Program | None:
    """The minimised program, if minimisation left one (a malformed one raises ProgramError)."""
    path = minimized_path(directory)
    return load_program(path) if path else None


def read_minimize_summary(directory: Path) -> dict:
    return json.loads((Path(directory) / MINIMIZE_SUMMARY).read_text())


def write_reproducibility(directory: Path, counts: dict[str, tuple[int, int]]) -> None:
    doc = {kernel: {"diverged": diverged, "runs": runs} for kernel, (diverged, runs) in counts.items()}
    atomic_write(Path(directory) / REPRODUCIBILITY, json.dumps(doc, indent=1, sort_keys=True) + "\n")


def read_reproducibility(directory: Path) -> dict[str, tuple[int, int]]:
    """{kernel label: (diverged, runs)}; {} if never re-run; ValueError if malformed."""
    path = Path(directory) / REPRODUCIBILITY
    if not path.exists():
        return {}
    doc = json.loads(path.read_text())
    if not isinstance(doc, dict):
        raise ValueError("expected an object of kernel label -> {diverged, runs}")
    counts = {}
    for kernel, entry in doc.items():
        diverged, runs = (entry.get(key) if isinstance(entry, dict) else None for key in ("diverged", "runs"))
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in (diverged, runs)) \
                or not 0 <= diverged <= runs or runs == 0:
            raise ValueError(f"{kernel!r}: expected 0 <= diverged <= runs, runs > 0")
        counts[kernel] = (diverged, runs)
    return counts


def repro_c_path(directory: Path) -> Path:
    return Path(directory) / REPRO_C


def write_repro_c(path: Path, source: str) -> None:
    atomic_write(path, source)


def existing_repro_c(directory: Path) -> Path | None:
    path = repro_c_path(directory)
    return path if path.is_file() else None
