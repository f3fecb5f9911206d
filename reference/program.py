"""The procfuzz program language: Program and Op, defined once for every part of the tool.

A program is an ordered list of operations over symbolic handles:
``p<N>`` processes, ``t<N>`` threads, ``m<N>`` proc mounts, ``f<N>`` held file descriptors.
``p1`` exists before the first op: it is the sandbox's init (pid 1 of a fresh pid namespace).

Two serialisations, both canonical and exactly round-tripping:

* JSON: ``{"version": 1, "ops": [{"op": ..., "ret": ..., "args": {...}}]}``, keys sorted,
  no whitespace; its SHA-256 is the program's id.
* text, one op a line, positional arguments then ``key=value`` options::

      p2 = spawn p1 newpid=1
      m1 = mount_proc p2 hidepid=invisible
      lookup p1 {m1}/{p2}/status

Paths are templates: ``{mN}`` (only as the first component) is the mount point of proc
mount mN, ``{pN}``/``{tN}`` are the pid/tid of that task *as seen from mN's pid namespace*,
``{fN}`` is the number of held fd fN.  A path without ``{mN}`` is relative to the actor's
cwd and may not contain task handles.  Each target resolves templates on its own.

This module is pure: parsing takes text, never a file.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterable

FORMAT_VERSION = 1
MAX_OPS = 256
MAX_HANDLES_PER_KIND = 64
MAX_PATH = 200
MAX_TEXT_BYTES = 64 * 1024

HANDLE_KINDS = {"p": "process", "t": "thread", "m": "mount", "f": "fd"}
HIDEPID_VALUES = ("off", "noaccess", "invisible", "ptraceable")
SUBSET_VALUES = ("none", "pid")

_HANDLE_RE = re.compile(r"^([ptmf])([1-9][0-9]{0,2})$")
_TEMPLATE_RE = re.compile(r"\{([ptmf][1-9][0-9]{0,2})\}")
_PATH_CHARS_RE = re.compile(r"^[A-Za-z0-9_.\-/{}+:]+$")


class ProgramError(ValueError):
    """Bad input: names the source, the op index (0-based, None for the whole program) and the problem."""

    def __init__(self, problem: str, *, source: str = "<program>", index: int | None = None):
        self.problem = problem
        self.source = source
        self.index = index
        where = source if index is None else f"{source}: op {index}"
        super().__init__(f"{where}: {problem}")


# ---- argument types -------------------------------------------------------------------------

# Each argument type is a (name, checker) pair; checkers return the normalised value or raise
# ValueError with a message for the user.

def _handle_of(kinds: str):
    def check(value):
        if not isinstance(value, str) or not _HANDLE_RE.match(value) or value[0] not in kinds:
            wanted = " or ".join(HANDLE_KINDS[k] for k in kinds)
            raise ValueError(f"expected a {wanted} handle ({'/'.join(k + 'N' for k in kinds)}), got {value!r}")
        if int(value[1:]) > MAX_HANDLES_PER_KIND:
            raise ValueError(f"handle {value} exceeds the limit of {MAX_HANDLES_PER_KIND} per kind")
        return value
    return check


def _flag(value):
    if value in (0, 1, "0", "1") and not isinstance(value, bool):
        return int(value)
    if isinstance(value, bool):
        return int(value)
    raise ValueError(f"expected 0 or 1, got {value!r}")


def _choice(choices):
    def check(value):
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return value
    return check


def _id_number(value):
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a uid/gid number, got {value!r}") from None
    if isinstance(value, bool) or str(number) != str(value).strip() or not 0 <= number <= 65534:
        raise ValueError(f"expected a uid/gid in 0..65534, got {value!r}")
    return number


def _path(value):
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a path, got {value!r}")
    if len(value) > MAX_PATH:
        raise ValueError(f"path longer than {MAX_PATH} characters")
    if not _PATH_CHARS_RE.match(value):
        raise ValueError(f"path {value!r} has characters outside [A-Za-z0-9_.-/{{}}+:]")
    stripped = _TEMPLATE_RE.sub("", value)
    if "{" in stripped or "}" in stripped:
        raise ValueError(f"path {value!r} has a malformed {{handle}} template")
    refs = _TEMPLATE_RE.findall(value)
    mounts = [r for r in refs if r[0] == "m"]
    if mounts and not value.startswith("{" + mounts[0] + "}") or len(mounts) > 1:
        raise ValueError(f"path {value!r}: a mount handle may only be the first component")
    if not mounts and any(r[0] in "pt" for r in refs):
        raise ValueError(f"path {value!r}: pid/tid templates need a {{mN}} prefix to pick a pid namespace")
    if value.startswith("/"):
        raise ValueError(f"path {value!r}: absolute paths are not allowed; start with {{mN}}")
    return value


_DEVICE_RE = re.compile(r"^[a-z][a-z0-9]{0,14}$")
_SYSCTL_VALUE_RE = re.compile(r"^-?[0-9]{1,10}$")
LINK_KINDS = ("dummy", "veth")


def _device(value):
    if not isinstance(value, str) or not _DEVICE_RE.match(value) or _HANDLE_RE.match(value):
        raise ValueError(f"expected a device name [a-z][a-z0-9]{{0,14}} that is not a handle, got {value!r}")
    return value


def _optional_device(value):
    return "" if value in ("", None) else _device(value)


def _optional_task(value):
    return "" if value in ("", None) else _handle_of("pt")(value)


def _sysctl_value(value):
    text = str(value)
    if isinstance(value, bool) or not _SYSCTL_VALUE_RE.match(text):
        raise ValueError(f"expected an integer sysctl value, got {value!r}")
    return text


def _fd_or_cwd(value):
    if value == "cwd":
        return value
    return _handle_of("f")(value)


ACTOR = ("actor", _handle_of("pt"))
PROCESS = _handle_of("p")
ANY_TASK = _handle_of("pt")
MOUNT = _handle_of("m")
FD = _handle_of("f")


@dataclass(frozen=True)
class OpSpec:
    kind: str
    ret: str | None                      # kind letter of the handle the op creates, or None
    positional: tuple[tuple[str, object], ...]
    options: tuple[tuple[str, object, object], ...] = ()   # (name, checker, default)
    doc: str = ""


OP_SPECS: dict[str, OpSpec] = {s.kind: s for s in (
    OpSpec("spawn", "p", (("actor", ANY_TASK),), (("newpid", _flag, 0),),
           "fork a child process of actor, in a new pid namespace if newpid=1"),
    OpSpec("spawn_thread", "t", (("actor", ANY_TASK),), (),
           "create a thread in actor's thread group"),
    OpSpec("exit", None, (("actor", ANY_TASK),), (),
           "a thread handle exits that thread; a process handle exits the whole group"),
    OpSpec("reap", None, (("actor", ANY_TASK), ("child", PROCESS)), (),
           "waitpid(child, WNOHANG) by actor: ok, ok:alive or an errno"),
    OpSpec("exec", None, (("actor", ANY_TASK),), (),
           "execve of the agent from actor's thread (de_thread when it is not the leader)"),
    OpSpec("setuid", None, (("actor", ANY_TASK), ("uid", _id_number)), (),
           "setuid for the whole process"),
    OpSpec("setgid", None, (("actor", ANY_TASK), ("gid", _id_number)), (),
           "setgid for the whole process"),
    OpSpec("mount_proc", "m", (("actor", ANY_TASK),),
           (("hidepid", _choice(HIDEPID_VALUES), "off"), ("subset", _choice(SUBSET_VALUES), "none")),
           "mount a new proc instance of actor's pid namespace"),
    OpSpec("umount", None, (("actor", ANY_TASK), ("mount", MOUNT)), (("lazy", _flag, 0),),
           "umount2(mount point, lazy ? MNT_DETACH : 0)"),
    OpSpec("open", "f", (("actor", ANY_TASK), ("path", _path)), (("rw", _flag, 0),),
           "open(path, rw ? O_RDWR : O_RDONLY) and hold the fd"),
    OpSpec("close", None, (("actor", ANY_TASK), ("fd", FD)), (), "close a held fd"),
    OpSpec("chdir", None, (("actor", ANY_TASK), ("path", _path)), (), "chdir(path)"),
    OpSpec("drop_caches", None, (), (), "echo 2 > /proc/sys/vm/drop_caches (dentries and inodes)"),
    OpSpec("lookup", None, (("actor", ANY_TASK), ("path", _path)), (),
           "lstat(path): ok:dir|reg|lnk or an errno"),
    OpSpec("readdir", None, (("actor", ANY_TASK), ("path", _path)), (),
           "open+getdents64 of path: ok:<sorted names> or an errno"),
    OpSpec("readlink", None, (("actor", ANY_TASK), ("path", _path)), (), "readlink(path)"),
    OpSpec("read", None, (("actor", ANY_TASK), ("fd", FD)), (),
           "pread(fd, 4096, 0): ok:<length>:<sha256 prefix> or an errno"),
    OpSpec("getdents", None, (("actor", ANY_TASK), ("fd", _fd_or_cwd)), (),
           "getdents64 from offset 0 on a held fd, or on the cwd"),
    OpSpec("write", None, (("actor", ANY_TASK), ("fd", FD), ("value", _sysctl_value)), (),
           "pwrite(fd, value + newline, 0) on a held fd"),
    # network namespaces and devices (the sysctl side)
    OpSpec("unshare_net", None, (("actor", ANY_TASK),), (),
           "unshare(CLONE_NEWNET) by actor's thread"),
    OpSpec("setns_net", None, (("actor", ANY_TASK), ("target", ANY_TASK)), (),
           "actor's thread joins target's network namespace"),
    OpSpec("link_add", None, (("actor", ANY_TASK), ("name", _device)),
           (("kind", _choice(LINK_KINDS), "dummy"), ("peer", _optional_device, ""),
            ("peer_in", _optional_task, "")),
           "RTM_NEWLINK in actor's netns; a veth's peer may go to peer_in's netns"),
    OpSpec("link_del", None, (("actor", ANY_TASK), ("name", _device)), (), "RTM_DELLINK"),
    OpSpec("link_rename", None, (("actor", ANY_TASK), ("name", _device), ("new", _device)), (),
           "RTM_NEWLINK with IFLA_IFNAME"),
    OpSpec("link_set_netns", None, (("actor", ANY_TASK), ("name", _device), ("target", ANY_TASK)), (),
           "move a device to target's network namespace (IFLA_NET_NS_FD)"),
    OpSpec("link_up", None, (("actor", ANY_TASK), ("name", _device)), (), "set IFF_UP"),
    OpSpec("link_down", None, (("actor", ANY_TASK), ("name", _device)), (), "clear IFF_UP"),
)}

MUTATING_KINDS = frozenset({"spawn", "spawn_thread", "exit", "reap", "exec", "setuid", "setgid",
                            "mount_proc", "umount", "open", "close", "chdir", "drop_caches", "write",
                            "unshare_net", "setns_net", "link_add", "link_del", "link_rename",
                            "link_set_netns", "link_up", "link_down"})
OBSERVING_KINDS = frozenset(OP_SPECS) - MUTATING_KINDS


@dataclass(frozen=True)
class Op:
    kind: str
    args: tuple[tuple[str, object], ...] = ()
    ret: str | None = None

    @cached_property
    def _by_name(self) -> dict:
        return dict(self.args)

    def arg(self, name: str):
        return self._by_name[name]

    @property
    def actor(self) -> str | None:
        return self._by_name.get("actor")

    def handles_used(self) -> list[str]:
        used = []
        for _, value in self.args:
            if isinstance(value, str):
                if _HANDLE_RE.match(value):
                    used.append(value)
                used.extend(_TEMPLATE_RE.findall(value))
        return used

    def to_json(self) -> dict:
        out: dict = {"op": self.kind, "args": dict(self.args)}
        if self.ret:
            out["ret"] = self.ret
        return out

    def to_text(self) -> str:
        spec = OP_SPECS[self.kind]
        values = dict(self.args)
        words = [str(values[name]) for name, _ in spec.positional]
        words += [f"{name}={values[name]}" for name, _, default in spec.options
                  if values[name] != default]
        line = " ".join([self.kind] + words)
        return f"{self.ret} = {line}" if self.ret else line


@dataclass(frozen=True)
class Program:
    ops: tuple[Op, ...] = field(default_factory=tuple)

    def __len__(self) -> int:
        return len(self.ops)

    def to_json(self) -> str:
        doc = {"version": FORMAT_VERSION, "ops": [op.to_json() for op in self.ops]}
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))

    def to_text(self) -> str:
        return "".join(op.to_text() + "\n" for op in self.ops)

    @cached_property             # programs are immutable; ids are asked for often (corpus, triage)
    def id(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]


# ---- construction and validation ------------------------------------------------------------

def make_op(kind: str, ret: str | None = None, /, **args) -> Op:
    """Build one op with its arguments normalised; raises ValueError on bad arguments."""
    spec = OP_SPECS.get(kind)
    if spec is None:
        raise ValueError(f"unknown op {kind!r} (known: {', '.join(sorted(OP_SPECS))})")
    normalised = []
    for name, check in spec.positional:
        if name not in args:
            raise ValueError(f"{kind}: missing argument {name!r}")
        try:
            normalised.append((name, check(args.pop(name))))
        except ValueError as err:
            raise ValueError(f"{kind} {name}: {err}") from None
    for name, check, default in spec.options:
        value = args.pop(name, default)
        try:
            normalised.append((name, check(value)))
        except ValueError as err:
            raise ValueError(f"{kind} {name}: {err}") from None
    if args:
        raise ValueError(f"{kind}: unknown argument(s) {', '.join(sorted(args))}")
    if spec.ret is None and ret is not None:
        raise ValueError(f"{kind} does not create a handle; remove '{ret} ='")
    if spec.ret is not None:
        if ret is None:
            raise ValueError(f"{kind} creates a {HANDLE_KINDS[spec.ret]}; write '{spec.ret}N = {kind} ...'")
        _handle_of(spec.ret)(ret)
    return Op(kind, tuple(normalised), ret)


def validate(ops: Iterable[Op], source: str = "<program>") -> Program:
    """Structural checks: size, handles defined before use and defined once."""
    ops = tuple(ops)
    if len(ops) > MAX_OPS:
        raise ProgramError(f"program has {len(ops)} ops; the limit is {MAX_OPS}", source=source)
    defined = {"p1"}
    for index, op in enumerate(ops):
        for handle in op.handles_used():
            if handle not in defined:
                raise ProgramError(f"handle {handle} is used before it is created", source=source, index=index)
        if op.kind == "link_add" and (op.arg("kind") == "veth") != bool(op.arg("peer")):
            raise ProgramError("a veth needs peer=NAME, and only a veth has a peer", source=source, index=index)
        if op.kind == "link_add" and op.arg("peer_in") and op.arg("kind") != "veth":
            raise ProgramError("peer_in= is for a veth's peer", source=source, index=index)
        if op.kind == "exit" and op.actor == "p1":
            raise ProgramError("p1 is the sandbox init and cannot exit (spawn newpid=1 to test init death)",
                               source=source, index=index)
        if op.ret:
            if op.ret in defined:
                raise ProgramError(f"handle {op.ret} is created twice", source=source, index=index)
            defined.add(op.ret)
    return Program(ops)


def parse_text(text: str, source: str = "<program>") -> Program:
    if len(text.encode(errors="replace")) > MAX_TEXT_BYTES:
        raise ProgramError(f"program text exceeds {MAX_TEXT_BYTES} bytes", source=source)
    ops = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        index = len(ops)
        try:
            ops.append(_parse_line(line))
        except ValueError as err:
            raise ProgramError(f"line {lineno}: {err}", source=source, index=index) from None
        if len(ops) > MAX_OPS:
            raise ProgramError(f"program has more than {MAX_OPS} ops (the limit)", source=source)
    return validate(ops, source)


def _parse_line(line: str) -> Op:
    ret = None
    if "=" in line.split()[0] or (len(line.split()) > 1 and line.split()[1] == "="):
        left, _, line = line.partition("=")
        ret = left.strip()
    words = line.split()
    if not words:
        raise ValueError("missing op name")
    kind, rest = words[0], words[1:]
    spec = OP_SPECS.get(kind)
    if spec is None:
        raise ValueError(f"unknown op {kind!r} (known: {', '.join(sorted(OP_SPECS))})")
    positional = [w for w in rest if "=" not in w]
    options = dict(w.split("=", 1) for w in rest if "=" in w)
    if len(positional) != len(spec.positional):
        names = " ".join(name for name, _ in spec.positional)
        raise ValueError(f"{kind} takes {len(spec.positional)} positional argument(s) ({names}), got {len(positional)}")
    args = dict(zip((name for name, _ in spec.positional), positional))
    for name in options:
        if name in args:
            raise ValueError(f"{kind}: {name} given twice")
    return make_op(kind, ret, **args, **options)


def parse_json(text: str, source: str = "<program>") -> Program:
    if len(text.encode(errors="replace")) > MAX_TEXT_BYTES * 4:
        raise ProgramError("program JSON is too large", source=source)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise ProgramError(f"invalid JSON: {err}", source=source) from None
    if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION or not isinstance(doc.get("ops"), list):
        raise ProgramError(f"expected an object with version {FORMAT_VERSION} and a list 'ops'", source=source)
    if len(doc["ops"]) > MAX_OPS:
        raise ProgramError(f"program has {len(doc['ops'])} ops; the limit is {MAX_OPS}", source=source)
    ops = []
    for index, entry in enumerate(doc["ops"]):
        try:
            if not isinstance(entry, dict) or not isinstance(entry.get("args", {}), dict):
                raise ValueError("each op must be an object with 'op' and an 'args' object")
            unknown = set(entry) - {"op", "args", "ret"}
            if unknown:
                raise ValueError(f"unknown key(s) {', '.join(sorted(unknown))}")
            ops.append(make_op(entry.get("op"), entry.get("ret"), **entry.get("args", {})))
        except (ValueError, TypeError) as err:
            raise ProgramError(str(err), source=source, index=index) from None
    return validate(ops, source)


def parse(text: str, source: str = "<program>") -> Program:
    """Either serialisation, chosen by the first non-blank character."""
    return parse_json(text, source) if text.lstrip().startswith("{") else parse_text(text, source)


def templates(path: str) -> list[str]:
    return _TEMPLATE_RE.findall(path)


def substitute(path: str, resolve) -> str:
    """Replace each {handle} by resolve(handle); resolve returns a string."""
    return _TEMPLATE_RE.sub(lambda m: resolve(m.group(1)), path)
