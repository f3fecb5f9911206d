"""Program analysis for signatures and classes: what an op looks at (its path, a held fd's or a
cwd's path, a link's target) and the last op that ended or changed it."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from reference.program import Program, templates
from reference.trace import alternatives

# Ops that end the object a path names: a difference after one is about that object's end
# (stale or missing), even where hidepid or changed credentials are also involved.
OBJECT_REMOVALS = ("exit", "reap", "exec", "close", "link_del", "link_rename", "link_set_netns")
DELETED = " (deleted)"
# Ops that name a task whose network namespace the agent opens (/proc/<pid>/ns/net).
TASK_ARGUMENT = {"setns_net": "target", "link_set_netns": "target", "link_add": "peer_in"}


def observed(program: Program, index: int, expected: str = "", actual: str = "",
             results: Sequence[str] = ()) -> tuple[str, int | None]:
    """What op ``index`` looks at: (a path, the index of the op that bound it to an object or
    None).  The op's own path; for an op on a held fd the path the fd was opened with (bound at
    the open); for `getdents cwd` the actor's cwd (bound at its chdir); for an op naming a task
    whose netns it needs (TASK_ARGUMENT) and answering ENOENT or ESRCH, that task's
    /proc/<pid>/ns/net, which the agent opens in its own /proc.
    A readlink of a cwd or fd link whose answers (``expected``, ``actual``) differ only by
    " (deleted)" resolved the link alike and shows whether its target's dentry is still hashed
    (d_path, prepend_path): that op looks at the target.  ``results``: the model's results, so
    that a failed open or chdir binds nothing."""
    op = program.ops[index]
    if op.kind == "readlink" and expected != actual and \
            expected.replace(DELETED, "") == actual.replace(DELETED, ""):
        if target := link_target(program, index, results):
            return target
    task = dict(op.args).get(TASK_ARGUMENT.get(op.kind, ""))
    if task and {expected, actual} & {"ENOENT", "ESRCH"}:
        return "/proc/{" + task + "}/ns/net", None
    if path := op_path(program, op):
        fd = dict(op.args).get("fd")
        return path, next((i for i, o in enumerate(program.ops[:index])
                           if fd and o.kind == "open" and o.ret == fd), None)
    if dict(op.args).get("fd") == "cwd":
        return _cwd(program, index, op.actor, results) or ("", None)
    return "", None


def link_target(program: Program, index: int, results: Sequence[str] = ()) -> tuple[str, int] | None:
    """The (path, binding op) a `readlink {mN}/{pX}/cwd` or `.../fd/{fN}` link points at, if the
    program says (pX's last successful chdir; fN's open)."""
    path = program.ops[index].arg("path")
    if match := re.fullmatch(r"\{m\d+\}/\{([pt]\d+)\}(?:/task/\{[pt]\d+\})?/cwd", path):
        return _cwd(program, index, match.group(1), results)
    if match := re.fullmatch(r"\{m\d+\}/\{[pt]\d+\}(?:/task/\{[pt]\d+\})?/fd/\{(f\d+)\}", path):
        return next(((o.arg("path"), i) for i, o in enumerate(program.ops[:index])
                     if o.kind == "open" and o.ret == match.group(1)), None)
    return None


def _cwd(program: Program, index: int, task: str, results: Sequence[str]) -> tuple[str, int] | None:
    """The cwd of ``task`` at op ``index``: the last successful chdir of its process before it
    (threads share a cwd), else the one its parent had when it spawned it (fork copies it)."""
    process_of = processes_of(program, index)
    process = process_of.get(task, task)
    for position in range(index - 1, -1, -1):
        op = program.ops[position]
        if op.kind == "chdir" and process_of.get(op.actor, op.actor) == process and succeeded(results, position):
            return op.arg("path"), position
        if op.kind == "spawn" and op.ret == process:
            process = process_of.get(op.actor, op.actor)
    return None


def processes_of(program: Program, index: int) -> dict[str, str]:
    """Task handle -> the process (thread group) it belongs to, for the ops before ``index``."""
    process_of = {"p1": "p1"}
    for op in program.ops[:index]:
        if op.kind == "spawn":
            process_of[op.ret] = op.ret
        elif op.kind == "spawn_thread":
            process_of[op.ret] = process_of.get(op.actor, op.actor)
    return process_of


def succeeded(results: Sequence[str], index: int) -> bool:
    """Did the model say op ``index`` may succeed (unknown without results)?"""
    return index >= len(results) or any(a.startswith("ok") for a in alternatives(results[index]))


def op_path(program: Program, op) -> str:
    """The op's path, or for an op on a held fd the path that fd was opened with."""
    args = dict(op.args)
    if "path" in args:
        return args["path"]
    opened = [o for o in program.ops if o.kind == "open" and o.ret == args.get("fd")]
    return opened[0].arg("path") if opened else ""


# The "after <kind>" of a signature: the last op before the divergent one that ended, else the
# last that changed, the object the divergent op's path names.  Which ops count, and for what:
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


@dataclass(frozen=True)
class _View:
    """What an observing op looks at, as last_removal needs it."""
    path: str
    bound: int | None                      # the op that bound a held fd or cwd to its object
    observer: str                          # the observing process
    process_of: dict[str, str]             # task handle -> its process
    peers: dict[str, str]                  # veth ends
    ns_inits: dict[str, tuple[str, ...]]   # process -> inits of the pid namespaces it is in
    mount: str | None                      # the mount the path resolves in (None: the agent's own /proc)

    @property
    def refs(self) -> list[str]:
        return templates(self.path)

    @property
    def in_agent_proc(self) -> bool:       # setns_net's and link_set_netns' target
        return self.path.startswith("/proc/")

    @property
    def relative(self) -> bool:
        return not (self.path.startswith("{m") or self.in_agent_proc)

    @property
    def processes(self) -> set[str]:
        return {self.process_of.get(h, h) for h in self.refs if h[0] in "pt"}

    @property
    def lists_tasks(self) -> bool:
        return self.path.startswith("{m") and self.path == "{" + self.refs[0] + "}"

    @property
    def is_net(self) -> bool:
        # /proc/<pid>/net and /proc/sys/net show the netns; /proc/<pid>/ns/net is a link that a
        # change of netns repoints, removing nothing
        path = self.path
        return ("sys/net" in path or "/net/" in path or path.endswith("/net")) and "/ns/" not in path

    @property
    def devices(self) -> set[str]:
        return set(_DEVICE.findall(self.path))

    @property
    def lists_devices(self) -> bool:
        return re.search(r"/(conf|neigh)/?$", self.path) is not None


def _view(program: Program, index: int, path: str, bound: int | None) -> _View:
    process_of = processes_of(program, index)
    peers: dict[str, str] = {}
    cwd_mount: dict[str, str] = {}     # process -> the mount of its last chdir
    ns_inits: dict[str, tuple[str, ...]] = {"p1": ()}
    for earlier in program.ops[:index]:
        if earlier.kind == "spawn":
            parent = ns_inits.get(process_of.get(earlier.actor, earlier.actor), ())
            ns_inits[earlier.ret] = parent + ((earlier.ret,) if earlier.arg("newpid") else ())
        elif earlier.kind == "link_add" and earlier.arg("peer"):
            peers[earlier.arg("name")], peers[earlier.arg("peer")] = earlier.arg("peer"), earlier.arg("name")
        elif earlier.kind == "chdir" and earlier.arg("path").startswith("{m"):
            cwd_mount[process_of.get(earlier.actor, earlier.actor)] = templates(earlier.arg("path"))[0]
    actor = program.ops[index].actor
    observer = process_of.get(actor, actor)
    view = _View(path, bound, observer, process_of, peers, ns_inits, None)
    return replace(view, mount=cwd_mount.get(observer) if view.relative else
                   None if view.in_agent_proc else view.refs[0])


def _affects(earlier, view: _View) -> bool:
    """Did op ``earlier`` end or change what ``view`` looks at (see the table above)?"""
    kind, process = earlier.kind, view.process_of.get(earlier.actor, earlier.actor)
    if kind in ("exit", "exec"):
        # A pid namespace's init taking its namespace down (zap_pid_ns_processes) ends
        # every task in it.
        inside = any(process in view.ns_inits.get(named, ()) for named in view.processes)
        return process in view.processes or (kind == "exit" and (view.lists_tasks or inside))
    if kind == "reap":
        return earlier.arg("child") in view.processes or view.lists_tasks
    if kind in ("setuid", "setgid"):      # the agent's own /proc is read as root
        return not view.in_agent_proc and (
            process in view.processes or (process == view.observer and view.bound is None and bool(view.processes)))
    if kind == "close":
        return earlier.arg("fd") in view.refs
    if kind in ("link_del", "link_rename", "link_set_netns"):
        gone = {earlier.arg("name")}
        if kind == "link_rename":
            gone.add(earlier.arg("new"))
        elif kind == "link_del":
            gone.add(view.peers.get(earlier.arg("name"), ""))
        return view.is_net and (view.lists_devices or bool(gone & view.devices))
    if kind == "umount":
        return view.bound is None and view.mount is not None and earlier.arg("mount") == view.mount
    if kind == "chdir":
        return view.bound is None and view.relative and process == view.observer
    if kind in ("unshare_net", "setns_net"):
        return view.bound is None and view.is_net and (process == view.observer or process in view.processes)
    return False


def last_removal(program: Program, index: int, seen: tuple[str, int | None] | None = None,
                 results: Sequence[str] = ()) -> str:
    """The kind of the last op before op ``index`` that ended what that op looks at (``seen``:
    its ``observed`` path and binding op), else of the last that changed it, or "" if none did
    (see above).  An op the model says failed (``results``) removed nothing."""
    path, bound = seen if seen is not None else observed(program, index, results=results)
    if not path:
        return ""
    view = _view(program, index, path, bound)
    # An op that ended the object explains more than a later change around it (a setuid of the
    # observer after the task's exit), so it wins; else the last change.
    start = bound + 1 if bound is not None else 0
    changed = ""
    for position in range(index - 1, start - 1, -1):
        earlier = program.ops[position]
        if earlier.kind == "link_add" and {earlier.arg("name"), earlier.arg("peer")} & view.devices:
            break
        if _affects(earlier, view) and succeeded(results, position):
            if earlier.kind in OBJECT_REMOVALS:
                return earlier.kind
            changed = changed or earlier.kind
    return changed
