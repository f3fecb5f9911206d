"""The end-of-program state check: the ops that look again at everything a program touched.

A divergence shows only when some op looks at the right name after the right change; a stale
dentry that no later op looks up goes unseen.  So after a program's last op the check asks
again, in this order (a bounded, deterministic function of the program alone):

1. every path the program used (lookup, readdir, readlink, open, chdir) looked up again by the
   actor that used it, and once by root (p1 while it keeps uid 0) in the root mount (the first
   proc mount of the sandbox's own pid namespace that the program never unmounts);
2. every listing and link again: each readdir, readlink, getdents of a held fd or the cwd;
3. every held fd read or listed again as the program did (else: a directory is listed, a
   per-pid file or sysctl leaf read), and its /proc/<pid>/fd/<n> link read;
4. every process with a chdir in its history: its cwd listed and its cwd link read;
5. per live proc mount, a walk of the sandbox's own task directories: the root listed, each
   /proc/<pid> looked up and listed with its task/, fd/ and net/ (one level), each thread's
   /proc/<pid>/task/<tid> and /proc/<tid> looked up;
6. per network namespace the program made or joined (by the actor of the unshare or setns, and
   p1): /proc/sys/net/{ipv4,ipv6}/{conf,neigh} listed, each device name of the program looked
   up there (a listing comes from the tables, only a lookup meets a stale dentry).

Every check op is an observing op: the model predicts it from its final state like any other,
and the agent runs it before its teardown.  The check is capped at CAP ops (and at the program
size limit).  ``split_state_check`` finds where a program's check starts by deriving it again,
so a program file needs no marker: a checked program is its base followed by its check.
"""

from __future__ import annotations

import re

from .program import MAX_OPS, OBSERVING_KINDS, Op, Program, make_op

CAP = 200
# Per-pid entries and sysctl tables that are directories, for the held fds the program never
# read nor listed: a directory is listed, a file read only where a read has no side effect.
_DIR_NAMES = frozenset({"task", "fd", "fdinfo", "net", "ns", "attr", "map_files", "sys", "conf", "neigh",
                        "ipv4", "ipv6", "self", "thread-self"})
_SAFE_READ = re.compile(r"/(status|stat|statm|comm|cmdline)$|/sys/net/ipv[46]/(conf|neigh)/[a-z0-9]+/[a-z_]+$")
_TABLES = ("ipv4/conf", "ipv4/neigh", "ipv6/conf", "ipv6/neigh")


def state_check(program: Program, cap: int = CAP) -> tuple[Op, ...]:
    """The check's ops for ``program`` (see the module docstring), at most ``cap`` of them."""
    facts = _Facts(program)
    wanted: dict[Op, None] = {}
    for op in (*_paths_again(facts), *_listings_again(facts), *_held_fds(facts), *_cwds(facts),
               *_task_walk(facts), *_sysctl_walk(facts)):
        wanted.setdefault(op)
    return tuple(wanted)[:max(0, min(cap, MAX_OPS - len(program)))]


def with_state_check(program: Program, cap: int = CAP) -> Program:
    """``program`` (without any check it already ends with) followed by its check."""
    base = Program(program.ops[:split_state_check(program, cap)])
    return Program(base.ops + state_check(base, cap))


def split_state_check(program: Program, cap: int = CAP) -> int:
    """The index of the first op of ``program``'s state check (len(program) if it has none):
    the smallest k whose ops[k:] are the check of ops[:k].  Check ops only observe, so only the
    program's trailing observing ops can be its check."""
    ops = program.ops
    first = len(ops)
    while first and ops[first - 1].kind in OBSERVING_KINDS:
        first -= 1
    for k in range(first, len(ops)):
        if state_check(Program(ops[:k]), cap) == ops[k:]:
            return k
    return len(ops)



class _Facts:
    """What the check needs to know about a program, by reading its ops (no model)."""

    def __init__(self, program: Program):
        ops = program.ops
        self.ops = ops
        self.process_of = {"p1": "p1"}
        self.in_child_pidns: set[str] = set()        # processes in a pid namespace below the sandbox's
        self.threads: dict[str, list[str]] = {"p1": []}
        self.dead: set[str] = set()                  # task handles surely ended by an exit
        self.mounts: list[str] = []                  # live mounts, in creation order
        self.root_mounts: list[str] = []             # ... of the sandbox's own pid namespace
        self.netns_actors = ["p1"]
        self.devices: list[str] = []
        self.root_is_p1 = True
        unmounted = {op.arg("mount") for op in ops if op.kind == "umount"}
        for op in ops:
            self._note(op, unmounted)

    def _note(self, op: Op, unmounted: set[str]) -> None:
        process = self.process_of.get(op.actor, op.actor)
        if op.kind == "spawn":
            self.process_of[op.ret] = op.ret
            self.threads[op.ret] = []
            if op.arg("newpid") or process in self.in_child_pidns:
                self.in_child_pidns.add(op.ret)
        elif op.kind == "spawn_thread":
            self.process_of[op.ret] = process
            self.threads.setdefault(process, []).append(op.ret)
        elif op.kind == "exit":
            self.dead |= {op.actor} | (set(self.threads.get(op.actor, [])) if op.actor[0] == "p" else set())
        elif op.kind == "exec":           # de_thread ends the other threads
            self.dead |= set(self.threads.get(process, [])) - {op.actor}
        elif op.kind in ("setuid", "setgid") and process == "p1":
            self.root_is_p1 = False
        elif op.kind == "mount_proc" and op.ret not in unmounted:
            self.mounts.append(op.ret)
            if process not in self.in_child_pidns:
                self.root_mounts.append(op.ret)
        elif op.kind in ("unshare_net", "setns_net") and op.actor not in self.netns_actors:
            self.netns_actors.append(op.actor)
        for name in ("name", "new", "peer"):
            device = dict(op.args).get(name)
            if op.kind.startswith("link_") and device and device not in self.devices:
                self.devices.append(device)

    def alive(self, handle: str) -> bool:
        return handle not in self.dead

    @property
    def root_mount(self) -> str | None:
        return self.root_mounts[0] if self.root_mounts else None

    @property
    def any_mount(self) -> str | None:
        return self.root_mount or (self.mounts[0] if self.mounts else None)

    def held_fds(self) -> list[tuple[Op, str]]:
        """(the open, the process holding it) of every fd no close of its process ended."""
        held = []
        for index, op in enumerate(self.ops):
            if op.kind != "open":
                continue
            owner = self.process_of.get(op.actor, op.actor)
            closed = any(o.kind == "close" and o.arg("fd") == op.ret and self.process_of.get(o.actor, o.actor) == owner
                         for o in self.ops[index + 1:])
            if not closed:
                held.append((op, owner))
        return held


def _on_mount(path: str, mount: str) -> str:
    return "{" + mount + "}" + path[path.index("}") + 1:]


def _paths_again(facts: _Facts):
    uses = [(op.actor, op.arg("path")) for op in facts.ops if "path" in dict(op.args)]
    for actor, path in uses:
        if facts.alive(actor):
            yield make_op("lookup", actor=actor, path=path)
    root = facts.root_mount
    if facts.root_is_p1 and root:
        for _, path in uses:
            if path.startswith("{m"):
                yield make_op("lookup", actor="p1", path=_on_mount(path, root))


def _listings_again(facts: _Facts):
    for op in facts.ops:
        if op.kind in ("readdir", "getdents", "readlink") and facts.alive(op.actor):
            yield op


def _held_fds(facts: _Facts):
    mount = facts.any_mount
    for opened, owner in facts.held_fds():
        fd, path = opened.ret, opened.arg("path")
        actor = opened.actor if facts.alive(opened.actor) else owner
        if not facts.alive(actor):
            continue
        used = [op.kind for op in facts.ops if op.kind in ("read", "getdents") and dict(op.args).get("fd") == fd]
        for kind in dict.fromkeys(used) or _first_look(path):
            yield make_op(kind, actor=actor, fd=fd)
        if mount:
            yield make_op("readlink", actor=actor, path=f"{{{mount}}}/{{{owner}}}/fd/{{{fd}}}")


def _first_look(path: str) -> tuple[str, ...]:
    last = path.rstrip("/").rsplit("/", 1)[-1]
    if last in _DIR_NAMES or re.fullmatch(r"\{[mpt]\d+\}", last) or last == "." or \
            re.search(r"/(conf|neigh)/[a-z0-9]+$", path):
        return ("getdents",)
    return ("read",) if _SAFE_READ.search(path) else ()


def _cwds(facts: _Facts):
    mount = facts.any_mount
    moved = {facts.process_of.get(op.actor, op.actor) for op in facts.ops if op.kind == "chdir"}
    # a child spawned after its parent's chdir inherits that cwd
    for op in facts.ops:
        if op.kind == "spawn" and facts.process_of.get(op.actor, op.actor) in moved:
            moved.add(op.ret)
    for process in sorted(moved, key=_handle_order):
        if facts.alive(process):
            yield make_op("getdents", actor=process, fd="cwd")
            if mount:
                yield make_op("readlink", actor=process, path=f"{{{mount}}}/{{{process}}}/cwd")


def _task_walk(facts: _Facts):
    observer = "p1"
    for mount in facts.mounts:
        root = "{" + mount + "}"
        yield make_op("readdir", actor=observer, path=root)
        for process in sorted(facts.threads, key=_handle_order):
            task_dir = f"{root}/{{{process}}}"
            yield make_op("lookup", actor=observer, path=task_dir)
            for sub in ("", "/task", "/fd", "/net"):
                yield make_op("readdir", actor=observer, path=task_dir + sub)
            for thread in facts.threads[process]:
                yield make_op("lookup", actor=observer, path=f"{task_dir}/task/{{{thread}}}")
                yield make_op("lookup", actor=observer, path=f"{root}/{{{thread}}}")


def _sysctl_walk(facts: _Facts):
    mount = facts.any_mount
    if not mount:
        return
    for actor in facts.netns_actors:
        if not facts.alive(actor):
            continue
        for table in _TABLES:
            directory = f"{{{mount}}}/sys/net/{table}"
            yield make_op("readdir", actor=actor, path=directory)
            for device in facts.devices:
                yield make_op("lookup", actor=actor, path=f"{directory}/{device}")


def _handle_order(handle: str) -> int:
    return int(handle[1:])
