"""The functions the coverage probe counts, one committed list per kernel pin.

A list is ``targets/kernels/<package>.kcov.txt``: one ``<source file> <function>`` line per probed
function, then ``#`` lines naming what was left out and why. It is made from the kernel's sources
and checked in the booted guest, so CI reads the file and never unpacks a kernel tree:

- candidates: every function defined in the procfs files the model mirrors (PROC_FILES) but the
  ``__init``/``__exit`` ones (gone after boot), plus the functions under ``net/`` that the model
  names in reference/model.py and reference/sysctl.py (sysctl registration, netns teardown);
- probed: the candidates with exactly one text symbol in the guest's /proc/kallsyms and an entry
  in ftrace's available_filter_functions. Absent from kallsyms = inlined; two symbols of one name
  = the probe (which resolves names) cannot tell them apart; not in ftrace = notrace.

Regenerate: ``python -m targets.coverage.regenerate --source 6.1=DIR --source 6.12=DIR [PIN ...]``
(DIR: an unpacked ``/usr/src/linux-source-<series>.tar.xz``; boots each pin once).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from targets.kernels import KERNELS_DIR, find_pin

PROC_FILES = tuple(f"fs/proc/{name}.c" for name in (
    "base", "root", "inode", "generic", "fd", "array", "proc_sysctl", "proc_net", "self",
    "thread_self", "namespaces")) + ("net/sysctl_net.c",)     # the netns sysctl registration
MIRROR_TREE = "net"
REFERENCE = Path(__file__).resolve().parents[2] / "reference"
MIRROR_SOURCES = ("model.py", "sysctl.py")
# Words of the model that are a kernel function's name but not that function: ip_forward is the
# sysctl file there (net/ipv4/ip_forward.c's ip_forward forwards packets).
NOT_MIRRORED = frozenset({"ip_forward"})
SKIP_REASONS = {
    "inlined": "absent from /proc/kallsyms (inlined or folded)",
    "duplicate": "two or more text symbols of this name (or its gcc clones): the probe resolves names",
    "notrace": "in kallsyms but not in ftrace's available_filter_functions",
}
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LINE = re.compile(r"(fs/[a-z_/]+\.c|net/[a-z0-9_/]+\.c) ([A-Za-z_][A-Za-z0-9_]{0,80}(?:\.[a-z]+\.[0-9]+)*)")


class ListError(RuntimeError):
    pass


@dataclass(frozen=True)
class ProbeList:
    functions: tuple[tuple[str, str], ...]                 # (source file, function), probed
    skipped: tuple[tuple[str, str, str], ...] = ()         # (reason, source file, function)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for _, name in self.functions)

    def file_of(self) -> dict[str, str]:
        return {name: path for path, name in self.functions}


# ---- sources ---------------------------------------------------------------------------------

def definitions(text: str) -> list[tuple[str, bool]]:
    """(name, is __init/__exit) of each function defined in C source text, kernel style: the
    body's ``{`` alone at column 0, the declarator on the lines before it."""
    lines = text.split("\n")
    found = []
    for i, line in enumerate(lines):
        if not line.startswith("{"):
            continue
        start = i
        while start > 0 and lines[start - 1].strip() and not lines[start - 1].rstrip().endswith((";", "}", "*/")) \
                and not lines[start - 1].startswith("#"):
            start -= 1
        header = " ".join(lines[start:i])
        if "=" in header.split("(", 1)[0]:
            continue                    # an initializer, not a function
        match = re.search(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(", header)
        if match and match.group(1) not in ("if", "for", "while", "switch", "__attribute__"):
            found.append((match.group(1), bool(re.search(r"\b__(init|exit)\b", header))))
    return found


def mirrored_names(reference: Path = REFERENCE) -> set[str]:
    """Identifiers the model's modules mention (its comments cite kernel functions; a name
    without an underscore is a common word more often than a kernel function)."""
    return {word for name in MIRROR_SOURCES for word in _IDENT.findall((reference / name).read_text())
            if "_" in word.strip("_")} - NOT_MIRRORED


def candidates(source: Path, mirrored: set[str]) -> dict[str, str]:
    """function -> source file (relative to the tree) of every candidate, proc files first."""
    out: dict[str, str] = {}
    for rel in PROC_FILES:
        for name, init in definitions((source / rel).read_text(errors="replace")):
            if not init:
                out.setdefault(name, rel)
    for path in sorted((source / MIRROR_TREE).rglob("*.c")):
        rel = str(path.relative_to(source))
        for name, init in definitions(path.read_text(errors="replace")):
            if name in mirrored and not init:
                out.setdefault(name, rel)
    return out


def probe_list(found: dict[str, str], kallsyms: dict[str, list[str]], ftrace: Mapping[str, int]) -> ProbeList:
    """Probed: one text symbol (the function itself, else its one gcc clone) that ftrace traces;
    a ``.part`` split next to the function is its cold half, not a second entry."""
    probed, skipped = [], []
    for name, rel in found.items():
        symbols = kallsyms.get(name, [])
        if symbols.count(name) == 1:
            symbols = [name]
        reason = ("inlined" if not symbols else "duplicate" if len(symbols) > 1
                  else "notrace" if not ftrace.get(symbols[0]) else None)
        if reason:
            skipped.append((reason, rel, name))
        else:
            probed.append((rel, symbols[0]))
    return ProbeList(tuple(sorted(probed)), tuple(sorted(skipped)))


# ---- the committed file ----------------------------------------------------------------------

def list_path(package: str) -> Path:
    return KERNELS_DIR / f"{package}.kcov.txt"


def format_list(probes: ProbeList, package: str, source: str) -> str:
    head = [f"# Kernel coverage probe of {package}: one '<source file> <function>' line per probed",
            f"# function (sources: linux-source {source}, checked in the booted guest).",
            "# Regenerate: python -m targets.coverage.regenerate (see targets/coverage/lists.py)."]
    body = [f"{rel} {name}" for rel, name in probes.functions]
    tail = []
    for reason, text in SKIP_REASONS.items():
        names = [f"#   {rel} {name}" for why, rel, name in probes.skipped if why == reason]
        if names:
            tail += [f"# not probed, {reason}: {text}"] + names
    return "\n".join(head + body + tail) + "\n"


def parse_list(text: str) -> ProbeList:
    functions = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line or line.startswith("#"):
            continue
        match = _LINE.fullmatch(line)
        if not match:
            raise ListError(f"line {number}: not '<source file> <function>': {line[:100]!r}")
        functions.append((match.group(1), match.group(2)))
    if len({name for _, name in functions}) != len(functions):
        raise ListError("a function is listed twice")
    return ProbeList(tuple(functions))


def load_probe_list(kernel: str | None = None) -> ProbeList:
    """The committed list of a pin (name, package or None for the default)."""
    path = list_path(find_pin(kernel).package)
    if not path.is_file():
        raise ListError(f"no coverage list {path.name}; make it with python -m targets.coverage.regenerate")
    return parse_list(path.read_text())


def series(package: str) -> str:
    match = re.match(r"linux-image-(\d+\.\d+)", package)
    if not match:
        raise ListError(f"{package}: no kernel series in the name")
    return match.group(1)
