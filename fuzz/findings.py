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

from reference.program import Program, ProgramError, parse, templates
from reference.trace import Trace

from .oracle import Divergence

_NUMBER = re.compile(r"(?<![A-Za-z])\d+")
_LEAK_CACHE = re.compile(r"(?:^|; )([\w.-]+) grew every run")   # fuzz/leaks.py describe()


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

        Divergences: class, op kind, the op's path pattern and the op that removed or changed
        what the path names (``stale lookup /proc/<pid> after reap``); crash and hang: the
        console title; leak: the caches that grew."""
        d = self.divergence
        if d.cls in ("crash", "hang"):
            return f"{d.cls}: {_one_line(d.detail) or 'untitled'}"
        if d.cls == "leak" and (caches := _LEAK_CACHE.findall(d.detail)):
            return "leak " + ", ".join(caches)
        if d.index is None or d.index >= len(self.program.ops):
            return f"{d.cls}: {_NUMBER.sub('N', _one_line(d.detail))[:120]}"
        op = self.program.ops[d.index]
        removal = last_removal(self.program, d.index)
        words = (d.cls, op.kind, path_pattern(_op_path(self.program, op)), removal and f"after {removal}")
        return " ".join(word for word in words if word)


def _one_line(text: str) -> str:
    """Whitespace collapsed, anything unprintable (kernel output may hold it) as '?'."""
    return "".join(ch if ch.isprintable() else "?" for ch in " ".join(text.split()))


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


# The "after <kind>" of a signature: the last op before the divergent one that ended or
# changed the object the divergent op's path names.  Which ops count, and for what:
#   exit, reap, exec       the task named in the path (exec's de_thread swaps tids); exit and
#                          reap also for the proc root, which lists every task
#   setuid, setgid         by the task named in the path (owner and content of its entries); by
#                          the observer, for a lookup of a task path (hidepid checks its creds)
#   close                  /proc/<pid>/fd/<fd> of that fd
#   link_del, link_rename, link_set_netns   the device named in the path (deleting a veth end
#                          deletes its peer), or any device for a listing of conf/ or neigh/
#   umount, chdir, unshare_net, setns_net   the mount, cwd or netns a lookup resolves in (a
#                          dentry cached in the old one is the classic stale bug)
# An op on a held fd works on what its open found: only ops after that open count, and of
# those not the four above.  A device created again (link_add) is a new object: removals of
# the old one before it do not count.
# Left out, so that incidental ops do not split one bug into several signatures: creations
# (spawn, open, mount_proc, link_add: nothing stale comes of them), link_up/link_down and write
# (every dentry stays), drop_caches (a cache flush, not a lifetime event; fuzzed programs
# sprinkle it anywhere), and namespace teardown by the exit of a netns's last task (not
# modelled here: such a signature has no "after").
_DEVICE = re.compile(r"/(?:conf|neigh)/(?!all\b|default\b)([a-z][a-z0-9]*)")


def last_removal(program: Program, index: int) -> str:
    """The kind of the last op before op ``index`` that ended or changed what that op's path
    names, or "" if none did (see above)."""
    op = program.ops[index]
    path = _op_path(program, op)
    if not path:
        return ""
    fd = dict(op.args).get("fd")
    opened = next((i for i, o in enumerate(program.ops[:index]) if o.kind == "open" and o.ret == fd), None)
    process_of = {"p1": "p1"}          # task handle -> the process (thread group) it belongs to
    peers: dict[str, str] = {}         # veth ends
    cwd_mount: dict[str, str] = {}     # process -> the mount of its last chdir
    for earlier in program.ops[:index]:
        if earlier.kind == "spawn":
            process_of[earlier.ret] = earlier.ret
        elif earlier.kind == "spawn_thread":
            process_of[earlier.ret] = process_of.get(earlier.actor, earlier.actor)
        elif earlier.kind == "link_add" and earlier.arg("peer"):
            peers[earlier.arg("name")], peers[earlier.arg("peer")] = earlier.arg("peer"), earlier.arg("name")
        elif earlier.kind == "chdir" and earlier.arg("path").startswith("{m"):
            cwd_mount[process_of.get(earlier.actor, earlier.actor)] = templates(earlier.arg("path"))[0]
    refs = templates(path)
    relative = not path.startswith("{m")
    observer = process_of.get(op.actor, op.actor)
    processes = {process_of.get(h, h) for h in refs if h[0] in "pt"}
    mount = cwd_mount.get(observer) if relative else refs[0]
    lists_tasks = not relative and path == "{" + refs[0] + "}"
    is_net = "sys/net" in path or "/net/" in path or path.endswith("/net")
    devices = set(_DEVICE.findall(path))
    lists_devices = re.search(r"/(conf|neigh)/?$", path) is not None

    def relevant(earlier) -> bool:
        kind, process = earlier.kind, process_of.get(earlier.actor, earlier.actor)
        if kind in ("exit", "exec"):
            return process in processes or (kind == "exit" and lists_tasks)
        if kind == "reap":
            return earlier.arg("child") in processes or lists_tasks
        if kind in ("setuid", "setgid"):
            return process in processes or (process == observer and opened is None and bool(processes))
        if kind == "close":
            return earlier.arg("fd") in refs
        if kind in ("link_del", "link_rename", "link_set_netns"):
            gone = {earlier.arg("name")}
            if kind == "link_rename":
                gone.add(earlier.arg("new"))
            elif kind == "link_del":
                gone.add(peers.get(earlier.arg("name"), ""))
            return is_net and (lists_devices or bool(gone & devices))
        if kind == "umount":
            return opened is None and earlier.arg("mount") == mount
        if kind == "chdir":
            return opened is None and relative and process == observer
        if kind in ("unshare_net", "setns_net"):
            return opened is None and is_net and (process == observer or process in processes)
        return False

    for earlier in reversed(program.ops[(opened + 1 if opened is not None else 0):index]):
        if earlier.kind == "link_add" and {earlier.arg("name"), earlier.arg("peer")} & devices:
            return ""
        if relevant(earlier):
            return earlier.kind
    return ""


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
