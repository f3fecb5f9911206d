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

from .leaks import leak_signature
from .oracle import OBJECT_REMOVALS, Divergence, last_removal, observed, op_path

_NUMBER = re.compile(r"(?<![A-Za-z])\d+")
# fuzz/leaks.py describe(), and its wording before 2026-11-25 (findings of older nights)
_LEAK_CACHE = re.compile(r"(?:^|; )([\w.-]+) grew (?:over the runs|every run)")


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
        """Stable across runs, workers and kernels: no handle, pid, device name or count in it.

        Divergences: class, op kind, the op's path pattern (for a readlink that differs only by
        " (deleted)", also the pattern of the link's target) and the op that removed or changed
        what the op looks at (``stale lookup /proc/<pid> after reap``); crash and hang: the
        console title; leak: the caches that grew."""
        d = self.divergence
        if d.cls in ("crash", "hang"):
            return f"{d.cls}: {_one_line(d.detail) or 'untitled'}"
        if caches := self.leaked_caches:
            return leak_signature(caches)
        if d.index is None or d.index >= len(self.program.ops):
            return f"{d.cls}: {_NUMBER.sub('N', _one_line(d.detail))[:120]}"
        op = self.program.ops[d.index]
        seen = self._observed()
        path = op_path(self.program, op) or seen[0]
        target = seen[0] != path and op.kind == "readlink" and f"-> {path_pattern(seen[0])}"
        removal = last_removal(self.program, d.index, seen, self.expected.results)
        words = (d.cls, op.kind, path_pattern(path), target, removal and f"after {removal}")
        return " ".join(word for word in words if word)

    @property
    def leaked_caches(self) -> list[str]:
        """For a leak, the slab caches that grew at every run (from fuzz/leaks.py describe())."""
        return _LEAK_CACHE.findall(self.divergence.detail) if self.divergence.cls == "leak" else []

    @property
    def bug_key(self) -> str:
        """What triage groups by: one bug shows through many ops and files of the object it
        left stale (a lookup, a readdir, a read of /proc/<pid>/comm, a readlink of a cwd in
        it...), after any of the ops that end that object, so the key keeps the class, the
        object (object_pattern) and, for stale answers, the kind of removal (REMOVAL_GROUPS);
        the signature keeps the op and the exact path.

        Stale and missing answers are two kinds of bug: a dentry that outlived the object a
        removal ended (a missed flush: `stale <object> after <removal>`), or a lookup that
        resolved a name to another object or to none (`wrong <object>`), which shows as stale
        or as missing depending on which object the wrong dentry belongs to (another network
        namespace's table hides the reader's own and shows its own names)."""
        d = self.divergence
        if d.cls not in ("stale", "missing", "visibility", "errno", "inconsistent") \
                or d.index is None or d.index >= len(self.program.ops):
            return self.signature
        seen = self._observed()
        if not seen[0]:
            return f"{d.cls} {self.program.ops[d.index].kind}"
        if d.cls not in ("stale", "missing"):
            return f"{d.cls} {object_pattern(seen[0])}"
        # Only the end of the object explains a stale answer (OBJECT_REMOVALS); a change of the
        # observer's view (unshare_net, umount, setuid) leaves the object and makes the name
        # resolve to another one.  For a missing answer a removal is incidental (the model says
        # the object exists: re-created, moved into the observer's namespace).
        removal = last_removal(self.program, d.index, seen, self.expected.results) if d.cls == "stale" else ""
        obj = object_pattern(seen[0], lifetime=True)
        if removal in OBJECT_REMOVALS:
            return f"stale {obj} after {REMOVAL_GROUPS.get(removal, removal)}"
        return f"wrong {obj}"

    def _observed(self) -> tuple[str, int | None]:
        d = self.divergence
        return observed(self.program, d.index, d.expected, d.actual, self.expected.results)


# Ops that end an object the same way, for bug keys: a pid dentry left behind by exit, reap
# or exec (de_thread) is one bug, as is a sysctl dentry left by any kind of unregistration.
REMOVAL_GROUPS = {"reap": "exit", "exec": "exit", "link_rename": "link_del", "link_set_netns": "link_del"}


def object_pattern(path: str, lifetime: bool = False) -> str:
    """The object a path belongs to, for bug keys: a task's directory (/proc/<pid>, its
    task/<tid> and fd entries included), its net directory, a sysctl table directory
    (/proc/sys/net/ipv4/conf/<dev>), or the first component under /proc.  For ``lifetime``
    keys (stale, wrong) /proc/<pid>/net is its task's (it goes with the task), and
    /proc/sys/net is one object: its dentries live and die by the same code whatever the table
    (proc_sys_lookup, proc_sys_revalidate, proc_sys_compare, proc_sys_invalidate_dcache), and
    the tables of a device or a namespace come and go together, so one bug there shows in any
    of them."""
    parts = path_pattern(path).split("/")
    if parts[:2] != ["", "proc"] or len(parts) < 3:
        return "<cwd>" if parts[0] else "/proc"
    if parts[2] == "sys":
        if lifetime and parts[3:4] == ["net"]:
            return "/proc/sys/net"
        table = next((i for i, part in enumerate(parts) if part in ("conf", "neigh")), None)
        return "/".join(parts[:table + 2] if table else parts[:5])
    if parts[2] == "<pid>":
        rest = parts[5:] if parts[3:4] == ["task"] and len(parts) > 4 else parts[3:]
        return "/proc/<pid>" + ("/net" if rest[:1] == ["net"] and not lifetime else "")
    return "/".join(parts[:3])


def _one_line(text: str) -> str:
    """Whitespace collapsed, anything unprintable (kernel output may hold it) as '?'."""
    return "".join(ch if ch.isprintable() else "?" for ch in " ".join(text.split()))


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
