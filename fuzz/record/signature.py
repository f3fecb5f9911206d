"""Signatures and bug keys: what makes two findings the same bug.

A finding's signature carries no pid, handle, device name or count, so it is the same on every
worker, night and kernel: class, op kind, the op's path pattern (for a readlink that differs
only by " (deleted)", also the pattern of the link's target) and the op that removed or changed
what the op looks at (``stale lookup /proc/<pid> after reap``); crash and hang: the console
title; leak: the caches that grew.  A bug key groups the signatures of one bug (the object it
left stale, whatever op and file showed it).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from reference.program import Program

from fuzz.compare.classes import FindingClass as C
from fuzz.compare.observe import OBJECT_REMOVALS, last_removal, observed, op_path
from fuzz.compare.oracle import Divergence

_NUMBER = re.compile(r"(?<![A-Za-z])\d+")


def signature(program: Program, results: Sequence[str], divergence: Divergence) -> str:
    """The signature of ``divergence`` of ``program`` (``results``: the model's results)."""
    d = divergence
    if d.cls in (C.CRASH, C.HANG):
        return f"{d.cls}: {one_line(d.detail) or 'untitled'}"
    if d.leak is not None:
        return d.leak.signature
    if d.index is None or d.index >= len(program.ops):
        return f"{d.cls}: {_NUMBER.sub('N', one_line(d.detail))[:120]}"
    op = program.ops[d.index]
    seen = observed(program, d.index, d.expected, d.actual, results)
    path = op_path(program, op) or seen[0]
    target = seen[0] != path and op.kind == "readlink" and f"-> {path_pattern(seen[0])}"
    removal = last_removal(program, d.index, seen, results)
    words = (d.cls, op.kind, path_pattern(path), target, removal and f"after {removal}")
    return " ".join(word for word in words if word)


def bug_key(program: Program, results: Sequence[str], divergence: Divergence) -> str:
    """What triage groups by: one bug shows through many ops and files of the object it left
    stale (a lookup, a readdir, a read of /proc/<pid>/comm, a readlink of a cwd in it...),
    after any of the ops that end that object, so the key keeps the class, the object
    (object_pattern) and, for stale answers, the kind of removal (REMOVAL_GROUPS); the
    signature keeps the op and the exact path.

    Stale and missing answers are two kinds of bug: a dentry that outlived the object a removal
    ended (a missed flush: `stale <object> after <removal>`), or a lookup that resolved a name
    to another object or to none (`wrong <object>`), which shows as stale or as missing
    depending on which object the wrong dentry belongs to (another network namespace's table
    hides the reader's own and shows its own names)."""
    d = divergence
    if d.cls not in (C.STALE, C.MISSING, C.PERMISSION, C.VISIBILITY, C.ERRNO, C.INCONSISTENT) \
            or d.index is None or d.index >= len(program.ops):
        return signature(program, results, d)
    seen = observed(program, d.index, d.expected, d.actual, results)
    if not seen[0]:
        return f"{d.cls} {program.ops[d.index].kind}"
    if d.cls not in (C.STALE, C.MISSING):
        return f"{d.cls} {object_pattern(seen[0])}"
    # Only the end of the object explains a stale answer (OBJECT_REMOVALS); a change of the
    # observer's view (unshare_net, umount, setuid) leaves the object and makes the name
    # resolve to another one.  For a missing answer a removal is incidental (the model says
    # the object exists: re-created, moved into the observer's namespace).
    removal = last_removal(program, d.index, seen, results) if d.cls == C.STALE else ""
    obj = object_pattern(seen[0], lifetime=True)
    if removal in OBJECT_REMOVALS:
        return f"stale {obj} after {REMOVAL_GROUPS.get(removal, removal)}"
    return f"wrong {obj}"


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


def one_line(text: str) -> str:
    """Whitespace collapsed, anything unprintable (kernel output may hold it) as '?'."""
    return "".join(ch if ch.isprintable() else "?" for ch in " ".join(text.split()))


def path_pattern(path: str) -> str:
    """Pids, tids, fds, mount points and device names abstracted away."""
    pattern = re.sub(r"\{[pt]\d+\}", "<pid>", path)
    pattern = re.sub(r"\{m\d+\}", "/proc", pattern)
    pattern = re.sub(r"\{f\d+\}", "<fd>", pattern)
    return re.sub(r"/(conf|neigh)/(?!all\b|default\b)[a-z][a-z0-9]*", r"/\1/<dev>", pattern)
