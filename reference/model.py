"""Reference model: what a correct kernel shows in /proc for a program (Linux 6.1/6.12, fs/proc).

The model keeps the kernel objects that /proc exposes -- pid namespaces, struct pid,
tasks and thread groups, credentials, proc superblocks with their mount options -- and
answers each op from them directly.  It has no dentry cache: a correct kernel must answer
every lookup as if the cache were empty (pid_revalidate and proc_flush_pid exist to make
that so), which is exactly the property procfuzz tests.

Pure: no I/O, no clock.  Every op returns a result string (reference/trace.py grammar).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import sysctl
from .profile import KernelProfile
from .program import Op, substitute
from .sysctl import CtlRef, NetDevice, NetNamespace
from .trace import ALTERNATIVE_SEPARATOR, fnv1a64

INVISIBLE_NR = 999999          # what a template resolves to for a task outside the mount's pid ns
HELD_FD_BASE = 100             # held fd fN lives at fd number 100+N in the guest
# The agent's fixed fd layout (targets/agent/agent.c, header): 0-2 /dev/null, 3 the process
# channel, 100+N held fd fN, 200+N the channel of thread tN (close-on-exec; the thread closes it
# before it exits).  A readdir (or getdents of the cwd) opens the directory at the lowest free
# number, 4, in the reader's own files table.
CHANNEL_FD, THREAD_CHANNEL_BASE, READER_FD = 3, 200, 4
UNMODELLED = "*"               # any result: the model does not predict this (documented gap)
HIDEPID_LEVEL = {"off": 0, "noaccess": 1, "invisible": 2, "ptraceable": 4}
HIDEPID_NO_ACCESS, HIDEPID_INVISIBLE = 1, 2
# Per-pid files whose open and content the model knows for any reader (all 0444 without an
# extra ptrace check at open): other entries are looked up and listed, not opened.
OPENABLE_PID_FILES = frozenset({"status", "stat", "statm", "comm", "cmdline"})
# Per-pid files whose open pins the task's mm (proc_mem_open) and whose reads use that mm only.
MM_PINNED_AT_OPEN = frozenset({"auxv", "environ", "mem"})
# Per-pid files whose open pins the task's user namespace (proc_id_map_open,
# proc_setgroups_open) and whose reads show that namespace only, also after the task is gone.
# Programs never leave init_user_ns: its maps are the identity over every id
# (kernel/user_namespace.c uid_m_show: "%10u %10u %10u\n"), and setgroups is allowed.
INIT_USER_NS_FILES = {"uid_map": b"         0          0 4294967295\n",
                      "gid_map": b"         0          0 4294967295\n",
                      "projid_map": b"         0          0 4294967295\n",
                      "setgroups": b"allow\n"}
# Per-pid files whose open pins the task's mount namespace and root (mounts_open_common,
# fs/proc_namespace.c): every read lists that namespace's mounts, also after the task is gone.
MNT_NS_PINNED_AT_OPEN = frozenset({"mounts", "mountinfo", "mountstats"})
# ops after which a network namespace may have lost its last task
NETNS_LEAVING_KINDS = frozenset({"exit", "exec", "unshare_net", "setns_net"})
PATH_KINDS = frozenset({"lookup", "readdir", "readlink", "open", "chdir", "getdents"})
# Per-pid files opened as seq_files (fs/proc/base.c: ONE() entries through proc_single_open;
# comm, sched, timers... through single_open/seq_open; maps, smaps, mounts...): seq_open clears
# FMODE_PWRITE, so ksys_pwrite64 answers ESPIPE before vfs_write could check the open mode.
# The same lists in 6.1 and 6.12.
SEQ_FILES = frozenset({
    "arch_status", "cgroup", "cpu_resctrl_groups", "cpuset", "io", "ksm_merging_pages", "ksm_stat", "limits",
    "oom_score", "patch_state", "personality", "schedstat", "seccomp_cache", "stack", "stack_depth", "stat",
    "statm", "status", "syscall", "wchan",                                   # ONE()
    "autogroup", "children", "comm", "gid_map", "latency", "maps", "mountinfo", "mounts", "mountstats",
    "numa_maps", "projid_map", "sched", "setgroups", "smaps", "smaps_rollup", "timens_offsets", "timers",
    "timerslack_ns", "uid_map"})


class Errno(Exception):
    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


class Unmodelled(Exception):
    """The model does not predict this result (a declared gap, not a guess)."""


# ---- kernel objects ---------------------------------------------------------------------------

@dataclass(eq=False)
class PidNamespace:
    parent: "PidNamespace | None"
    level: int
    next_nr: int = 1
    child_reaper: "Process | None" = None

    def ancestors(self):
        ns = self
        while ns is not None:
            yield ns
            ns = ns.parent


@dataclass(eq=False)
class Pid:
    """struct pid: one number per namespace from the task's own up to the root."""
    numbers: dict            # PidNamespace -> nr
    task: "Task | None" = None   # pid_task(pid, PIDTYPE_PID); None once released

    def nr_in(self, ns: PidNamespace) -> int:
        return self.numbers.get(ns, 0)


@dataclass(eq=False)
class Task:
    pid: Pid
    process: "Process"
    comm: str
    netns: NetNamespace = None      # per thread: unshare/setns of CLONE_NEWNET act on one thread


@dataclass(eq=False)
class Process:
    """A thread group with its shared state (signal, mm, files, fs, creds as glibc keeps them)."""
    ns: PidNamespace
    parent: "Process | None"
    leader: Task = None
    threads: list = field(default_factory=list)     # live tasks, leader first
    state: str = "running"                          # running | zombie | released
    uid: int = 0
    gid: int = 0
    dumpable: bool = True
    fds: dict = field(default_factory=dict)         # fd handle -> Node
    cwd: "Node | None" = None                       # None: the sandbox's / (not a proc node)

    @property
    def caps(self) -> bool:
        # Root keeps a full capability set; setuid to non-zero clears it (cap_emulate_setxuid).
        return self.uid == 0

    @property
    def has_mm(self) -> bool:
        return self.state == "running"


@dataclass(eq=False)
class Mount:
    ns: PidNamespace
    hidepid: str
    subset: str
    state: str          # mounted | detached | unmounted | failed
    # pid names that may have a dentry in this mount's root (a lookup or a readdir made one;
    # drop_caches may or may not free it: the dentry LRU gives a recently used dentry a second
    # chance, DCACHE_REFERENCED), and whether an unmodelled walk may have made others
    looked_up: set = field(default_factory=set)
    lookups_unknown: bool = False

    @property
    def pidonly(self) -> bool:
        return self.subset == "pid"


@dataclass(frozen=True, eq=False)
class Node:
    """A dentry as userspace reaches it: what it is, in which mount, bound to which struct pid."""
    kind: str           # plain root static pid_dir pid_entry task_dir tid_dir fd_dir fd_link self thread_self unknown
    mount: Mount | None
    path: str           # d_path while hashed, e.g. /mnt/m1/3/status
    ftype: str = "dir"
    pid: Pid | None = None
    name: str = ""
    # hidepid=ptraceable and the reader may not ptrace the task: proc_pid_lookup refuses it, so
    # only a cached dentry reaches it: "pinned" (held below it: surely cached) or "maybe"
    hidden: str = ""
    ctl: CtlRef | None = None       # for /proc/sys nodes

    @property
    def task(self) -> Task | None:
        return self.pid.task if self.pid else None


# What an fd or cwd refers to after an op whose outcome the model does not predict: every
# later use of it is unmodelled too, instead of a guess.
UNKNOWN = Node("unknown", None, "?", "?")

# The sandbox's files outside /proc (kind "rootfs"): its / is the initramfs root that every actor
# starts in (the agent chdir("/")s; Process.cwd None stands for it) and that /proc/<pid>/root
# shows, /agent is what /proc/<pid>/exe shows (every actor is the agent, exec'd or forked), and
# /dev/null is every actor's stdio.  The names of / are the image's (targets/initramfs.py:
# entries(), with lib/ for the dummy and veth modules) plus /root from the kernel's built-in
# initramfs (usr/default_cpio_list); nothing below them is modelled.
ROOTFS_NAMES = ("agent", "bin", "dev", "init", "lib", "mnt", "proc", "root", "sys", "tmp")
ROOTFS = Node("rootfs", None, "/", "dir")
AGENT_EXE = Node("rootfs", None, "/agent", "reg")
DEV_NULL = Node("rootfs", None, "/dev/null", "other")
STDIO_FDS = (0, 1, 2)


# ---- the kernel --------------------------------------------------------------------------------

class Kernel:
    """Executes ops one by one; `apply(op)` returns the op's result string."""

    def __init__(self, profile: KernelProfile):
        self.profile = profile
        self.sandbox_ns = PidNamespace(parent=None, level=1)
        self.handles: dict[str, object] = {}      # pN -> Process, tN -> Task, mN -> Mount
        self.numbers: dict[str, dict] = {}         # pN/tN -> {ns: nr} as allocated
        self.dead_threads: set[str] = set()        # thread handles gone through exit or exec
        self.fd_dir_owner: dict = {}               # (mount, path) -> i_uid of that fd dir inode
        self.processes: list[Process] = []
        self.fd_rw: set[str] = set()               # fd handles opened O_RDWR
        self.sysctl_constants_known = True         # until a write the model does not follow
        self.unhashed: set[Node] = set()           # held /proc/<pid>/net dentries a later walk invalidated
        init = self._fork(None, self.sandbox_ns, comm="p1", netns=NetNamespace.create(profile))
        self.seen_netns = {init.leader.netns}   # else its end goes unnoticed if p1 leaves it first
        self.sandbox_ns.child_reaper = init
        self._bind("p1", init, init.leader)

    # -- bookkeeping --

    def _alloc_pid(self, ns: PidNamespace) -> Pid:
        # alloc_pid: one number in every namespace from the task's up to the root; a fresh
        # namespace allocates sequentially (idr_alloc_cyclic from 1), so numbers are exact.
        numbers = {}
        for level_ns in ns.ancestors():
            numbers[level_ns] = level_ns.next_nr
            level_ns.next_nr += 1
        return Pid(numbers)

    def _fork(self, parent: Process | None, ns: PidNamespace, comm: str, netns: NetNamespace) -> Process:
        process = Process(ns=ns, parent=parent)
        task = Task(self._alloc_pid(ns), process, comm, netns)
        task.pid.task = task
        process.leader = task
        process.threads = [task]
        if parent is not None:
            process.uid, process.gid, process.dumpable = parent.uid, parent.gid, parent.dumpable
            process.fds = dict(parent.fds)
            process.cwd = parent.cwd
        self.processes.append(process)
        return process

    def _bind(self, handle: str, obj, task: Task | None = None):
        self.handles[handle] = obj
        if task is not None:
            self.numbers[handle] = dict(task.pid.numbers)

    def actor_task(self, handle: str) -> Task | None:
        """The live task that performs an op for `handle`, or None when it is dead (or was
        never born: the op that should have created it had a dead actor)."""
        obj = self.handles.get(handle)
        if obj is None:
            return None
        if handle[0] == "p":
            return obj.leader if obj.state == "running" else None
        if handle in self.dead_threads or obj.process.state != "running" or obj not in obj.process.threads:
            return None
        return obj

    def is_zombie_child_of(self, child: str, parent: str) -> bool:
        """Has process ``child`` exited unreaped, with the live actor ``parent`` to reap it?"""
        process, reaper = self.handles.get(child), self.actor_task(parent)
        return getattr(process, "state", None) == "zombie" and reaper is not None and reaper.process is process.parent

    def nr_for_template(self, handle: str, ns: PidNamespace) -> int:
        if handle[0] == "f":
            return HELD_FD_BASE + int(handle[1:])
        return self.numbers.get(handle, {}).get(ns, INVISIBLE_NR)

    # -- apply --

    def apply(self, op: Op) -> str:
        if op.kind == "drop_caches":
            return "ok"
        actor = self.actor_task(op.actor)
        if actor is None:
            if op.kind == "mount_proc":     # the mount point stays a plain directory
                self._bind(op.ret, Mount(self.sandbox_ns, op.arg("hidepid"), op.arg("subset"), "failed"))
            return "dead"
        try:
            return getattr(self, "op_" + op.kind)(actor, op)
        except Errno as err:
            return err.name
        except Unmodelled:
            if op.kind in PATH_KINDS:
                # the kernel's walk went on where the model stopped: it may have looked up pids
                for mount in self.handles.values():
                    if isinstance(mount, Mount):
                        mount.lookups_unknown = True
            return UNMODELLED
        finally:
            if op.kind in NETNS_LEAVING_KINDS:
                self._end_empty_network_namespaces()

    def _end_empty_network_namespaces(self):
        """A network namespace whose last task left is torn down by cleanup_net, later."""
        live = {task.netns for process in self.processes if process.state == "running"
                for task in process.threads}
        for netns in {task.netns for process in self.processes for task in process.threads} | self.seen_netns:
            if netns not in live and not netns.dying:
                netns.die()
        self.seen_netns |= live

    # -- the pid dentries of a mount's root (only hidepid=ptraceable lets them show) --

    def _held_nodes(self):
        for process in self.processes:
            if process.state == "running":
                yield from process.fds.values()
                if process.cwd is not None:
                    yield process.cwd

    def _pinned_pid_names(self, mount: Mount) -> set:
        """Pid names of `mount`'s root with a held fd or cwd at or below them: their dentries
        are in use, so neither drop_caches nor memory pressure frees them."""
        prefix = "/mnt/" + next(h for h, obj in self.handles.items() if obj is mount) + "/"
        return {node.path[len(prefix):].split("/", 1)[0] for node in self._held_nodes()
                if node.mount is mount and node.path.startswith(prefix)}

    # -- process life --

    def op_spawn(self, actor: Task, op: Op) -> str:
        parent = actor.process
        if op.arg("newpid") and not parent.caps:
            raise Errno("EPERM")            # copy_namespaces: CLONE_NEWPID needs CAP_SYS_ADMIN
        ns = PidNamespace(parent=parent.ns, level=parent.ns.level + 1) if op.arg("newpid") else parent.ns
        child = self._fork(parent, ns, comm=op.ret, netns=actor.netns)
        if op.arg("newpid"):
            ns.child_reaper = child
        self._bind(op.ret, child, child.leader)
        return "ok:" + self._nspid(child.leader.pid)

    def op_spawn_thread(self, actor: Task, op: Op) -> str:
        process = actor.process
        task = Task(self._alloc_pid(process.ns), process, comm=op.ret, netns=actor.netns)
        task.pid.task = task
        process.threads.append(task)
        self._bind(op.ret, task, task)
        return "ok:" + self._nspid(task.pid)

    def _nspid(self, pid: Pid) -> str:
        levels = sorted(pid.numbers.items(), key=lambda item: item[0].level)
        return ".".join(str(nr) for _, nr in levels)

    def op_exit(self, actor: Task, op: Op) -> str:
        if op.actor[0] == "t":
            self._release_task(actor)
            self.dead_threads.add(op.actor)
        else:
            self._do_exit_group(actor.process)
        return "ok"

    def _release_task(self, task: Task):
        """release_task for a non-leader thread: unhash its pid (then proc_flush_pid)."""
        task.process.threads.remove(task)
        task.pid.task = None

    def _do_exit_group(self, process: Process):
        for task in list(process.threads):
            if task is not process.leader:
                self._release_task(task)
        process.threads = [process.leader]
        process.state = "zombie"
        process.fds = {}
        process.cwd = None               # exit_fs / exit_files
        if process.ns.child_reaper is process:
            self._zap_pid_ns_processes(process.ns)
        else:
            # forget_original_parent: children go to the child reaper of the dead parent's ns.
            for child in self.processes:
                if child.parent is process and child.state != "released":
                    child.parent = process.ns.child_reaper

    def _zap_pid_ns_processes(self, ns: PidNamespace):
        """Init of `ns` died: every other task of ns and its descendants is killed and reaped."""
        for other in self.processes:
            if other.state == "released" or other is ns.child_reaper:
                continue
            if ns in other.ns.ancestors():
                for task in list(other.threads):
                    task.pid.task = None
                other.threads = []
                other.state = "released"
                other.fds, other.cwd = {}, None

    def op_reap(self, actor: Task, op: Op) -> str:
        waiter = actor.process
        child = self.handles.get(op.arg("child"))
        nr = self.nr_for_template(op.arg("child"), waiter.ns)
        if nr == INVISIBLE_NR or child.parent is not waiter or child.state == "released":
            raise Errno("ECHILD")
        if child.state == "running":
            return "ok:alive"
        child.state = "released"
        child.leader.pid.task = None
        child.threads = []
        return "ok"

    def op_exec(self, actor: Task, op: Op) -> str:
        process = actor.process
        if actor is not process.leader:
            # de_thread: the exec'ing thread takes over the leader's struct pid (exchange_tids)
            # and the old leader is released with the thread's old pid.
            old_leader = process.leader
            actor.pid, old_leader.pid = old_leader.pid, actor.pid
            actor.pid.task, old_leader.pid.task = actor, old_leader
            process.leader = actor
        for task in list(process.threads):
            if task is not actor:
                self._release_task(task)
        for handle, obj in self.handles.items():
            if handle[0] == "t" and obj.process is process:
                self.dead_threads.add(handle)
        actor.comm = "agent"             # begin_new_exec: __set_task_comm(kbasename(filename))
        process.dumpable = True          # begin_new_exec: SUID_DUMP_USER when uid==euid, gid==egid
        return "ok"

    def _commit_creds(self, process: Process, attribute: str, value: int) -> str:
        """setuid/setgid as glibc applies them to all threads: root sets any id; others only
        their own.  A changed euid/egid makes the mm non-dumpable (commit_creds)."""
        if not process.caps and value != getattr(process, attribute):
            raise Errno("EPERM")
        if value != getattr(process, attribute):
            process.dumpable = False
        setattr(process, attribute, value)
        return "ok"

    def op_setuid(self, actor: Task, op: Op) -> str:
        return self._commit_creds(actor.process, "uid", op.arg("uid"))

    def op_setgid(self, actor: Task, op: Op) -> str:
        return self._commit_creds(actor.process, "gid", op.arg("gid"))

    # -- mounts --

    def op_mount_proc(self, actor: Task, op: Op) -> str:
        mount = Mount(actor.process.ns, op.arg("hidepid"), op.arg("subset"), "failed")
        self._bind(op.ret, mount)
        if not actor.process.caps:
            raise Errno("EPERM")
        mount.state = "mounted"
        return "ok"

    def op_umount(self, actor: Task, op: Op) -> str:
        mount = self.handles[op.arg("mount")]
        if not actor.process.caps:
            raise Errno("EPERM")
        if mount.state == "unknown":
            if op.arg("lazy"):
                mount.state = "detached"     # whatever it was, it is no longer mounted now
            raise Unmodelled()
        if mount.state != "mounted":
            raise Errno("EINVAL")
        if not op.arg("lazy") and self._mount_busy(mount):
            raise Errno("EBUSY")
        if not op.arg("lazy") and self._maybe_busy():
            mount.state = "unknown"
            raise Unmodelled()
        mount.state = "detached" if op.arg("lazy") else "unmounted"
        return "ok"

    def _maybe_busy(self) -> bool:
        return any(process.state == "running" and (UNKNOWN in process.fds.values() or process.cwd is UNKNOWN)
                   for process in self.processes)

    def _mount_busy(self, mount: Mount) -> bool:
        for process in self.processes:
            if process.state != "running":
                continue
            nodes = list(process.fds.values()) + ([process.cwd] if process.cwd else [])
            if any(node.mount is mount and node.kind != "plain" for node in nodes):
                return True
        return False

    # -- credentials and visibility (fs/proc/base.c, kernel/ptrace.c) --

    @staticmethod
    def ptrace_may_access(reader: Task, target: Task) -> bool:
        """__ptrace_may_access(PTRACE_MODE_READ_FSCREDS) plus cap_ptrace_access_check."""
        r, t = reader.process, target.process
        if r is t:
            return True
        if not (r.uid == t.uid and r.gid == t.gid):
            return r.caps
        # task_still_dumpable: the mm's dumpability, or for an exited task the
        # task->user_dumpable that exit_mm recorded (a 6.1.y stable backport).
        if not t.dumpable and not r.caps:
            return False
        return r.caps or not t.caps

    def has_pid_permissions(self, mount: Mount, reader: Task, target: Task, hide_pid_min: int) -> bool:
        if mount.hidepid == "ptraceable":
            return self.ptrace_may_access(reader, target)
        if HIDEPID_LEVEL[mount.hidepid] < hide_pid_min:
            return True
        if reader.process.gid == 0:      # in_group_p(fs_info->pid_gid), gid= defaults to 0
            return True
        return self.ptrace_may_access(reader, target)

    def proc_pid_permission(self, node: Node, reader: Task):
        task = node.task
        if node.hidden:
            # proc_pid_permission on a cached dentry; if the shrinker freed it, proc_pid_lookup
            raise Errno("EPERM" if node.hidden == "pinned" else "ENOENT | EPERM")
        if task is None:
            raise Errno("ESRCH")
        if not self.has_pid_permissions(node.mount, reader, task, HIDEPID_NO_ACCESS):
            raise Errno("ENOENT" if node.mount.hidepid == "invisible" else "EPERM")

    @staticmethod
    def task_dump_owner_uid(task: Task) -> int:
        # For modes other than 0555 dirs: non-dumpable or mm-less tasks are owned by root.
        process = task.process
        return process.uid if process.has_mm and process.dumpable else 0

    def proc_fd_permission(self, node: Node, reader: Task):
        """generic_permission on the 0500 fd directory, then the same-thread-group escape.

        The inode's owner is rewritten only when a lookup instantiates or revalidates the
        dentry (pid_revalidate -> pid_update_inode): a walk that starts at a cwd inside the fd
        directory checks the owner of the last lookup, not the task's current one."""
        task = node.task
        if reader.process.caps:
            return
        owner = self.fd_dir_owner.get((id(node.mount), node.path), 0)
        if owner == reader.process.uid or (task is not None and task.process is reader.process):
            return
        raise Errno("EACCES")

    def fdinfo_checked_at_walk(self) -> bool:
        """"proc: Move fdinfo PTRACE_MODE_READ check into the inode .permission operation"
        (upstream 6.2, Debian 6.1.180): before it, the fdinfo directory checked its task only
        at open (proc_open_fdinfo), so 6.1.176 walks through it and lstat()s it freely."""
        version = self.profile.version
        return version >= (6, 2) or (version == (6, 1) and self.profile.sublevel >= 180)

    def proc_fdinfo_permission(self, node: Node, reader: Task):
        """fs/proc/fd.c proc_fdinfo_permission (6.12; 6.1.176: proc_fdinfo_access_allowed from
        proc_open_fdinfo, the same checks at open only): get_proc_task() or -ESRCH, then
        ptrace_may_access(PTRACE_MODE_READ_FSCREDS) or -EACCES, then (.permission only)
        generic_permission on the directory's 0555 mode, which passes."""
        if node.task is None:
            raise Errno("ESRCH")
        if not self.ptrace_may_access(reader, node.task):
            raise Errno("EACCES")

    def may_exec(self, node: Node, reader: Task):
        """inode_permission(MAY_EXEC) on a directory walked through."""
        if node.ftype != "dir":
            raise Errno("ENOTDIR")
        if node.kind in ("pid_dir", "task_dir"):
            self.proc_pid_permission(node, reader)
        elif node.kind == "fd_dir":
            self.proc_fd_permission(node, reader)
        elif node.kind == "fdinfo_dir" and self.fdinfo_checked_at_walk():
            self.proc_fdinfo_permission(node, reader)
        elif node.kind == "sysctl":
            self.proc_sys_grab(node)        # proc_sys_permission
        elif node.kind == "pid_entry" and not reader.process.caps:
            raise Unmodelled()              # attr, ns (0511), map_files (0500), ...: modes not modelled

    def may_read_dir(self, node: Node, reader: Task):
        """inode_permission(MAY_READ) at open of a directory, then its f_op->open."""
        self.may_exec(node, reader)
        if node.kind == "fdinfo_dir" and not self.fdinfo_checked_at_walk():
            self.proc_fdinfo_permission(node, reader)       # proc_open_fdinfo

    # -- lookup --

    def lookup_child(self, parent: Node, name: str, reader: Task) -> Node:
        path = parent.path + "/" + name
        kind = parent.kind
        if kind == "plain":
            raise Errno("ENOENT")
        if kind == "root":
            return self.proc_root_lookup(parent, name, reader)
        if kind in ("pid_dir", "tid_dir"):
            task = parent.task
            if task is None:
                raise Errno("ENOENT")        # proc_pident_lookup: get_proc_task() failed
            table = self.profile.tgid if kind == "pid_dir" else self.profile.tid
            ftype = table.get(name)
            if ftype is None:
                raise Errno("ENOENT")
            if name == "task" and kind == "pid_dir":
                return Node("task_dir", parent.mount, path, "dir", parent.pid, name)
            if name == "fd":
                self.fd_dir_owner[(id(parent.mount), path)] = self.task_dump_owner_uid(task)
                return Node("fd_dir", parent.mount, path, "dir", parent.pid, name)
            if name == "fdinfo":
                return Node("fdinfo_dir", parent.mount, path, "dir", parent.pid, name)
            if name == "net" and self.profile.pid_net:
                return Node("pid_net", parent.mount, path, "dir", parent.pid, name)
            return Node("pid_entry", parent.mount, path, ftype, parent.pid, name)
        if kind == "task_dir":
            return self.proc_task_lookup(parent, name)
        if kind == "fd_dir":
            return self.proc_lookupfd(parent, name)
        if kind == "fdinfo_dir":
            return self.proc_lookupfd(parent, name, "fdinfo_file", "reg")
        if kind == "rootfs":
            if name in ROOTFS_NAMES:
                raise Unmodelled()           # the image's tree below / is not modelled
            raise Errno("ENOENT")
        if kind == "sysctl":
            return self.proc_sys_lookup(parent, name, reader)
        if kind == "pid_net":
            self.proc_net_d_revalidate(parent.mount, path)
            return self.proc_tgid_net_lookup(parent, name)
        if kind == "snmp6":
            self.proc_net_d_revalidate(parent.mount, path)
            return self.snmp6_lookup(parent, name)
        raise Unmodelled()

    def proc_net_d_revalidate(self, mount: Mount, path: str):
        """Entries below /proc/<pid>/net answer d_revalidate with 0 (fs/proc/generic.c
        proc_net_d_revalidate, set by pde_force_lookup): a walk that meets the cached dentry of
        one, which only a held fd or cwd keeps (always_delete_dentry), d_invalidate()s it
        (fs/namei.c lookup_fast) and looks the name up afresh; the held one is unhashed from then
        on, and d_path says " (deleted)"."""
        for node in self._held_nodes():
            if node.mount is mount and node.path == path:
                self.unhashed.add(node)

    # -- /proc/<pid>/net (fs/proc/proc_net.c) --

    @staticmethod
    def get_proc_task_net(node: Node) -> NetNamespace | None:
        """The network namespace of the task behind the directory; none once it exited."""
        task = node.task
        return task.netns if task is not None and task.process.state == "running" else None

    def proc_tgid_net_lookup(self, parent: Node, name: str) -> Node:
        netns = self.get_proc_task_net(parent)
        if netns is None or name not in self.profile.pid_net:
            raise Errno("ENOENT")
        ftype = self.profile.pid_net[name]
        if name == "dev_snmp6":
            # proc_lookup_de: the dentry is that namespace's own directory from now on
            return Node("snmp6", parent.mount, parent.path + "/" + name, ftype, ctl=CtlRef("other", netns))
        return Node("net_entry", parent.mount, parent.path + "/" + name, ftype)

    def snmp6_lookup(self, parent: Node, name: str) -> Node:
        """One file per device with an inet6_dev (snmp6_register_dev / snmp6_unregister_dev)."""
        if parent.mount.pidonly:
            # dev_snmp6 is a proc_dir_entry directory: proc_lookup answers ENOENT on subset=pid,
            # although /proc/<pid>/net itself (proc_tgid_net_lookup) does not check it
            raise Errno("ENOENT")
        netns = parent.ctl.netns
        if netns.dying:
            raise Unmodelled()
        device = netns.devices.get(name)
        if device is None:
            raise Errno("ENOENT")
        if device.uncertain:
            raise Unmodelled()
        return Node("net_entry", parent.mount, parent.path + "/" + name, "reg")

    # -- /proc/sys (fs/proc/proc_sysctl.c) --

    def proc_sys_grab(self, node: Node):
        """grab_header() on the node's ctl_table_header: ENOENT once it is unregistered.
        The directories above the tables of a dying namespace go with its last table."""
        if node.ctl.registration is None and node.ctl.netns is not None and node.ctl.netns.dying:
            raise Unmodelled()
        state = sysctl.grab(node.ctl.registration)
        if state == "ENOENT":
            raise Errno("ENOENT")
        if state == "maybe":
            raise Unmodelled()

    def proc_sys_lookup(self, parent: Node, name: str, reader: Task) -> Node:
        ref, tables = parent.ctl, self.profile.sysctl
        self.proc_sys_grab(parent)
        path = parent.path + "/" + name

        def child(ftype, new_ref):
            return Node("sysctl", parent.mount, path, ftype, ctl=new_ref)

        if ref.level == "sys":
            if name == "net" and "net" in tables.get("sys", {}):
                # sysctl_follow_link: "net" resolves in the *reader's* network namespace
                return child("dir", CtlRef("net", reader.netns))
            return self._sysctl_other(parent, name, tables.get("sys", {}))
        if ref.level == "net":
            if name in sysctl.PROTOCOLS and name in tables.get("net", {}):
                return child("dir", CtlRef("proto", ref.netns, name))
            return self._sysctl_other(parent, name, tables.get("net", {}))
        if ref.level == "proto":
            if name in sysctl.TABLE_DIRS and name in tables.get(ref.proto, {}):
                directory = ref.netns.dirs.get((ref.proto, name))
                if directory is None or directory.state == "dead":
                    raise Errno("ENOENT")
                return child("dir", CtlRef("tabledir", ref.netns, ref.proto, name, registration=directory))
            return self._sysctl_other(parent, name, tables.get(ref.proto, {}))
        if ref.level == "tabledir":
            netns = ref.netns
            fixed = netns.fixed.get((ref.proto, name)) if ref.tabledir == "conf" else None
            if fixed is not None:
                return child("dir", CtlRef("table", netns, ref.proto, ref.tabledir, name, fixed))
            device = netns.devices.get(name)
            if device is None:
                raise Errno("ENOENT")
            if device.uncertain:
                raise Unmodelled()
            registration = device.tables[(ref.proto, ref.tabledir)]
            return child("dir", CtlRef("table", netns, ref.proto, ref.tabledir, name, registration))
        if ref.level == "table":
            leaves = tables.get(sysctl.table_profile_key(ref), {})
            if name not in leaves:
                raise Errno("ENOENT")
            return child(leaves[name], CtlRef("leaf", ref.netns, ref.proto, ref.tabledir, ref.entry,
                                              ref.registration, name))
        raise Unmodelled()

    def _proto_listing(self, ref: CtlRef) -> dict:
        """net/ipv4 or net/ipv6: the profile's names, without a table directory that is gone."""
        listing = dict(self.profile.sysctl.get(ref.proto, {}))
        for table in sysctl.TABLE_DIRS:
            directory = ref.netns.dirs.get((ref.proto, table))
            if directory is not None and directory.state == "maybe":
                raise Unmodelled()
            if directory is None or directory.state == "dead":
                listing.pop(table, None)
        return listing

    def _sysctl_other(self, parent: Node, name: str, listing: dict) -> Node:
        """An entry outside the device tables: it exists as the profile says, no deeper."""
        if name not in listing:
            raise Errno("ENOENT")
        return Node("sysctl", parent.mount, parent.path + "/" + name, listing[name], ctl=CtlRef("other"))

    def proc_sys_readdir(self, node: Node) -> str:
        ref, tables = node.ctl, self.profile.sysctl
        self.proc_sys_grab(node)
        fixed = {"sys": lambda: tables.get("sys"), "net": lambda: tables.get("net"),
                 "proto": lambda: self._proto_listing(ref),
                 "table": lambda: tables.get(sysctl.table_profile_key(ref))}.get(ref.level)
        if fixed is not None and fixed() is not None:
            return "ok:" + ",".join(sorted(fixed()))
        if ref.level != "tabledir":
            raise Unmodelled()
        certain, maybe = [], []
        entries = [(entry, reg) for (proto, entry), reg in ref.netns.fixed.items()
                   if proto == ref.proto and ref.tabledir == "conf"]
        entries += [(name, device.tables[(ref.proto, ref.tabledir)])
                    for name, device in ref.netns.devices.items()]
        for name, registration in entries:
            state = sysctl.grab(registration)
            (certain if state is None else maybe if state == "maybe" else []).append(name)
        listing = sysctl.listing_alternatives(certain, maybe)
        if listing is None:
            raise Unmodelled()
        return listing

    def proc_root_lookup(self, root: Node, name: str, reader: Task) -> Node:
        nr = name_to_int(name)
        if nr is not None:
            task = self.find_task_by_pid_ns(nr, root.mount.ns)
            if task is not None:
                # hidepid=ptraceable: proc_pid_lookup refuses a task the reader may not ptrace
                # (ENOENT, and no dentry is made), but a dentry cached by an earlier lookup or
                # readdir (proc_fill_cache) passes pid_revalidate (which has no hidepid check) and
                # then proc_pid_permission refuses with EPERM.  The answer depends on the dcache:
                # a kernel inconsistency, see docs/model-gaps.md.
                hidden = ""
                mount = root.mount
                if mount.hidepid == "ptraceable" and not self.has_pid_permissions(mount, reader, task,
                                                                                  HIDEPID_NO_ACCESS):
                    if name in self._pinned_pid_names(mount):
                        hidden = "pinned"
                    elif name in mount.looked_up or mount.lookups_unknown:
                        hidden = "maybe"         # cached unless a shrinker freed it
                    else:
                        raise Errno("ENOENT")
                else:
                    mount.looked_up.add(name)
                return Node("pid_dir", root.mount, root.path + "/" + name, "dir", task.pid, name, hidden)
        if name == "self":
            return Node("self", root.mount, root.path + "/self", "lnk")
        if name == "thread-self":
            return Node("thread_self", root.mount, root.path + "/thread-self", "lnk")
        if root.mount.pidonly:
            raise Errno("ENOENT")        # proc_lookup: subset=pid hides every non-pid entry
        ftype = self.profile.root.get(name)
        if ftype is None:
            raise Errno("ENOENT")
        if name == "sys" and self.profile.sysctl:
            return Node("sysctl", root.mount, root.path + "/sys", "dir", ctl=CtlRef("sys"))
        return Node("static", root.mount, root.path + "/" + name, ftype, None, name)

    def proc_task_lookup(self, task_dir: Node, name: str) -> Node:
        leader = task_dir.task
        nr = name_to_int(name)
        if leader is None or nr is None:
            raise Errno("ENOENT")
        task = self.find_task_by_pid_ns(nr, task_dir.mount.ns)
        if task is None or task.process is not leader.process:
            raise Errno("ENOENT")
        return Node("tid_dir", task_dir.mount, task_dir.path + "/" + name, "dir", task.pid, name)

    def proc_lookupfd(self, fd_dir: Node, name: str, kind: str = "fd_link", ftype: str = "lnk") -> Node:
        """proc_lookupfd_common, for fd/ (links) and fdinfo/ (regular files) alike."""
        task = fd_dir.task
        nr = name_to_int(name)
        if task is None or nr is None or task.process.state != "running":
            raise Errno("ENOENT")
        held = {HELD_FD_BASE + int(h[1:]): node for h, node in task.process.fds.items()}
        if held.get(nr) is UNKNOWN:
            raise Unmodelled()
        if nr in held or nr in STDIO_FDS:
            return Node(kind, fd_dir.mount, fd_dir.path + "/" + name, ftype, fd_dir.pid, name)
        if HELD_FD_BASE < nr <= HELD_FD_BASE + 64:
            raise Errno("ENOENT")
        raise Unmodelled()               # the agent's own channel fds are not modelled

    def find_task_by_pid_ns(self, nr: int, ns: PidNamespace) -> Task | None:
        for process in self.processes:
            for task in process.threads:
                if task.pid.nr_in(ns) == nr:
                    return task
        return None

    def getattr(self, node: Node, reader: Task) -> str:
        if node.kind == "sysctl":
            self.proc_sys_grab(node)        # proc_sys_getattr
        if node.hidden:
            raise Errno("ENOENT")            # proc_pid_lookup, or pid_getattr on a cached dentry
        if node.kind in ("pid_dir", "tid_dir"):
            task = node.task               # pid_getattr: consistent with readdir under hidepid
            if task is not None and not self.has_pid_permissions(node.mount, reader, task, HIDEPID_INVISIBLE):
                raise Errno("ENOENT")
        return "ok:" + node.ftype

    # -- path walk --

    def resolve(self, reader: Task, path: str, follow_last: bool, depth: int = 0) -> Node:
        components, node = self._start(reader, path)
        for index, name in enumerate(components):
            last = index == len(components) - 1
            self.may_exec(node, reader)
            if name == ".":
                continue
            node = self.lookup_child(node, name, reader)
            if node.ftype == "lnk" and (follow_last or not last):
                node = self.follow_link(node, reader, depth)
        return node

    def _start(self, reader: Task, path: str):
        if path.startswith("{m"):
            handle, _, rest = path[1:].partition("}")
            mount = self.handles[handle]
            resolved = substitute(rest, lambda h: str(self.nr_for_template(h, mount.ns)))
            components = [c for c in resolved.split("/") if c]
            if mount.state == "unknown":
                raise Unmodelled()
            kind = "root" if mount.state == "mounted" else "plain"
            return components, Node(kind, mount, "/mnt/" + handle)
        cwd = self.cwd_of(reader.process)
        return [c for c in path.split("/") if c], cwd

    @staticmethod
    def cwd_of(process: Process) -> Node:
        """The cwd a relative path starts from: the last chdir's, inherited at spawn, else /."""
        if process.cwd is UNKNOWN:
            raise Unmodelled()
        return ROOTFS if process.cwd is None else process.cwd

    def follow_link(self, link: Node, reader: Task, depth: int) -> Node:
        if depth > 8:
            raise Errno("ELOOP")
        target = self.link_target(link, reader)
        root = Node("root", link.mount, link.path.rsplit("/", 1)[0])
        if link.kind in ("self", "thread_self", "static"):
            node = root
            for name in target.split("/"):
                self.may_exec(node, reader)
                node = self.lookup_child(node, name, reader)
                if node.ftype == "lnk":
                    node = self.follow_link(node, reader, depth + 1)
            return node
        if link.kind == "fd_link" or (link.kind == "pid_entry" and link.name in ("cwd", "root", "exe")):
            return self.proc_get_link(link, reader)
        raise Unmodelled()

    def proc_get_link(self, link: Node, reader: Task) -> Node:
        """fs/proc/base.c proc_pid_get_link -> call_proc_get_link: get_proc_task() or -ENOENT,
        ptrace_may_access(PTRACE_MODE_READ_FSCREDS) or -EACCES, then the link's proc_get_link:
        proc_cwd_link / proc_root_link (task->fs, gone after exit_fs: -ENOENT), proc_exe_link
        (get_task_exe_file: no mm after exit: -ENOENT), proc_fd_link (fget_task: -ENOENT for a
        closed fd or after exit_files).  nd_jump_link then continues at that path's own dentry."""
        task = link.task
        if task is None:
            raise Errno("ENOENT")
        if not self.ptrace_may_access(reader, task):
            raise Errno("EACCES")
        process = task.process
        if process.state != "running":
            raise Errno("ENOENT")
        if link.kind == "fd_link":
            nr = int(link.name)
            if nr in STDIO_FDS:
                return DEV_NULL
            if nr < HELD_FD_BASE:
                raise Unmodelled()
            held = process.fds.get(f"f{nr - HELD_FD_BASE}")
            if held is None:
                raise Errno("ENOENT")
            if held is UNKNOWN:
                raise Unmodelled()
            return held
        if link.name == "exe":
            return AGENT_EXE
        if link.name == "root":
            return ROOTFS
        return self.cwd_of(process)

    def link_target(self, link: Node, reader: Task) -> str:
        ns = link.mount.ns
        if link.kind == "self":
            tgid = reader.process.leader.pid.nr_in(ns)   # proc_self_get_link
            if not tgid:
                raise Errno("ENOENT")
            return str(tgid)
        if link.kind == "thread_self":
            tgid, tid = reader.process.leader.pid.nr_in(ns), reader.pid.nr_in(ns)
            if not tid:
                raise Errno("ENOENT")                     # proc_thread_self_get_link
            return f"{tgid}/task/{tid}"
        if link.kind == "static":
            if link.name not in self.profile.root_links:
                raise Unmodelled()
            return self.profile.root_links[link.name]
        if link.kind in ("pid_entry", "fd_link"):
            return self.proc_pid_readlink(link, reader)
        raise Unmodelled()

    def proc_pid_readlink(self, link: Node, reader: Task) -> str:
        task = link.task
        # proc_fd_access_allowed: a ptrace read check on the task behind the link
        if task is None or not self.ptrace_may_access(reader, task):
            raise Errno("EACCES")
        process = task.process
        if link.kind == "fd_link":
            nr = int(link.name)
            if nr in STDIO_FDS:
                return DEV_NULL.path
            if nr < HELD_FD_BASE:
                raise Unmodelled()
            held = process.fds.get(f"f{nr - HELD_FD_BASE}")
            if held is None:
                raise Errno("ENOENT")
            return self.d_path(held)
        if process.state != "running":
            raise Errno("ENOENT")          # no mm / fs once exited
        if link.name == "exe":
            return "/agent"
        if link.name == "root":
            return "/"
        if process.cwd is None:
            return "/"
        return self.d_path(process.cwd)

    def d_path(self, node: Node) -> str:
        if node.kind == "rootfs":
            return node.path
        if node is UNKNOWN or node.mount.state == "detached":
            raise Unmodelled()             # d_path of a lazily unmounted tree
        if node in self.unhashed:
            return node.path + " (deleted)"      # proc_net_d_revalidate: a later walk unhashed it
        if node.kind in ("pid_dir", "tid_dir") and node.task is None:
            # proc_flush_pid d_invalidate()d the base dentry: d_path reports it unlinked.
            return node.path + " (deleted)"
        if node.kind != "sysctl" and node.ctl is not None and node.ctl.netns is not None and node.ctl.netns.dying:
            # /proc/<pid>/net entries of a namespace cleanup_net removes, asynchronously
            return node.path + ALTERNATIVE_SEPARATOR + node.path + " (deleted)"
        if node.kind == "sysctl" and node.ctl.registration is None and node.ctl.netns is not None \
                and node.ctl.netns.dying:
            # /proc/sys/net and net/<proto> of a namespace resolve to its own set's directories
            # (sysctl_follow_link, xlate_dir); cleanup_net drops them with its last table
            # (drop_sysctl_table -> proc_sys_invalidate_dcache), asynchronously
            return node.path + ALTERNATIVE_SEPARATOR + node.path + " (deleted)"
        if node.kind == "sysctl" and node.ctl.registration is not None:
            # unregistering a table prunes the dentries of its inodes (proc_sys_prune_dcache)
            state = sysctl.grab(node.ctl.registration)
            if state == "maybe":
                raise Unmodelled()
            if state == "ENOENT":
                return node.path + " (deleted)"
        return node.path

    # -- directory listings --

    def list_dir(self, node: Node, reader: Task, opened: bool = False) -> str:
        """getdents64 on an open directory (no permission check at this point); `opened`: the
        reader opened it for this op (readdir, getdents of the cwd), so the fd is still open."""
        kind = node.kind
        if node.ftype != "dir":
            raise Errno("ENOTDIR")
        if kind == "plain":
            return "ok:"
        if kind == "rootfs":
            return "ok:" + ",".join(ROOTFS_NAMES)
        if kind == "sysctl":
            return self.proc_sys_readdir(node)
        if kind == "pid_net":
            if self.get_proc_task_net(node) is None:
                raise Errno("EINVAL")       # proc_tgid_net_readdir: no namespace to list
            return "ok:" + ",".join(sorted(self.profile.pid_net))
        if kind == "snmp6":
            if node.mount.pidonly:
                return "ok:"                # proc_readdir: subset=pid lists no proc_dir_entry
            netns = node.ctl.netns
            if netns.dying or any(d.uncertain for d in netns.devices.values()):
                raise Unmodelled()
            return "ok:" + ",".join(sorted(netns.devices))
        if kind == "root":
            return "ok:" + ",".join(sorted(self.proc_root_readdir(node, reader)))
        if kind in ("pid_dir", "tid_dir"):
            if node.task is None:
                raise Errno("ENOENT")       # proc_pident_readdir: get_proc_task() failed
            table = self.profile.tgid if kind == "pid_dir" else self.profile.tid
            return "ok:" + ",".join(sorted(table))
        if kind == "task_dir":
            if node.task is None:
                raise Errno("ENOENT")       # proc_task_readdir: proc_inode_is_dead()
            process = node.task.process
            return "ok:" + ",".join(sorted(str(t.pid.nr_in(node.mount.ns)) for t in process.threads
                                           if t.pid.nr_in(node.mount.ns)))
        if kind in ("fd_dir", "fdinfo_dir"):
            if node.task is None:
                raise Errno("ENOENT")       # proc_readfd_common: get_proc_task() failed
            if node.task.process.state != "running":
                return "ok:"                # no files_struct after exit_files
            return "ok:" + ",".join(sorted(self.fd_numbers(node.task.process, reader, opened)))
        raise Unmodelled()

    def fd_numbers(self, process: Process, reader: Task, opened: bool) -> list[str]:
        """proc_readfd_common: the open fds of a live process, in the agent's layout."""
        numbers = [0, 1, 2, CHANNEL_FD]
        for handle, node in process.fds.items():
            if node is UNKNOWN:
                raise Unmodelled()          # whether that open succeeded is unknown
            numbers.append(HELD_FD_BASE + int(handle[1:]))
        for handle, obj in self.handles.items():
            if (handle[0] == "t" and handle not in self.dead_threads and obj.process is process
                    and obj in process.threads and obj is not process.leader):
                numbers.append(THREAD_CHANNEL_BASE + int(handle[1:]))
        if opened and reader.process is process:
            numbers.append(READER_FD)
        return [str(n) for n in numbers]

    def proc_root_readdir(self, root: Node, reader: Task) -> list[str]:
        names = [] if root.mount.pidonly else list(self.profile.root)
        names += ["self", "thread-self"]
        for process in self.processes:
            leader = process.leader
            if process.state == "released" or leader is None:
                continue
            nr = leader.pid.nr_in(root.mount.ns)
            if nr and self.has_pid_permissions(root.mount, reader, leader, HIDEPID_INVISIBLE):
                names.append(str(nr))
                root.mount.looked_up.add(str(nr))     # proc_pid_readdir -> proc_fill_cache
        return names

    # -- observation ops --

    def op_lookup(self, actor: Task, op: Op) -> str:
        node = self.resolve(actor, op.arg("path"), follow_last=False)
        return self.getattr(node, actor)

    def op_readlink(self, actor: Task, op: Op) -> str:
        node = self.resolve(actor, op.arg("path"), follow_last=False)
        if node.hidden:
            # cached: readlinkat of a directory; freed: proc_pid_lookup
            raise Errno("EINVAL" if node.hidden == "pinned" else "ENOENT | EINVAL")
        if node.ftype != "lnk":
            raise Errno("EINVAL")
        # d_path may answer alternatives (a flush that may not have happened yet)
        return ALTERNATIVE_SEPARATOR.join("ok:" + target
                                          for target in self.link_target(node, actor).split(ALTERNATIVE_SEPARATOR))

    def _open(self, actor: Task, path: str, directory: bool, rw: bool = False) -> Node:
        node = self.resolve(actor, path, follow_last=True)
        if node.ftype == "dir":
            if rw:
                raise Errno("EISDIR")        # may_open: no write access to a directory
            self.may_read_dir(node, actor)
            return node
        if directory:
            raise Errno("ENOTDIR")
        if node.kind == "sysctl":
            self.proc_sys_grab(node)        # proc_sys_open
            mode = sysctl.LEAF_MODES.get(node.ctl.leaf) if node.ctl.level == "leaf" else None
            if mode is not None:
                self.sysctl_test_perm(mode, actor, rw)
                return node
            writable = node.ctl.level == "leaf" and node.ctl.leaf in sysctl.WRITABLE_LEAVES
            if actor.process.caps and (not rw or writable):
                return node
            raise Unmodelled()              # leaf modes are not in the profile
        if rw:
            raise Unmodelled()
        if node.kind == "pid_entry" and node.name in OPENABLE_PID_FILES:
            return node
        if node.kind == "pid_entry" and actor.process.caps and node.task is not None \
                and node.task.process.state == "running":
            # Root opens any per-pid file of a live task: CAP_DAC_OVERRIDE for the mode, and
            # the opens that check more (proc_mem_open -> mm_access for mem, environ, auxv,
            # maps, pagemap; mounts_open_common) pass for root and a task with an mm.
            return node
        if node.kind == "static" and actor.process.caps:
            return node
        if node.kind == "rootfs":
            return node                     # /agent 0755, /dev/null 0666: readable by anyone
        raise Unmodelled()

    @staticmethod
    def sysctl_test_perm(mode: int, actor: Task, rw: bool):
        """may_open -> proc_sys_permission -> sysctl_perm: net_ctl_permissions gives a holder of
        CAP_NET_ADMIN the owner bits everywhere, then test_perm picks the owner bits for euid 0,
        the group bits for egid 0 (no supplementary groups in the sandbox), else the others."""
        process = actor.process
        if process.caps:
            mode = (mode >> 6) & 7
        elif process.gid == 0:
            mode = (mode >> 3) & 7
        else:
            mode &= 7
        wanted = 4 | (2 if rw else 0)
        if wanted & ~mode:
            raise Errno("EACCES")

    def op_readdir(self, actor: Task, op: Op) -> str:
        node = self._open(actor, op.arg("path"), directory=True)
        return self.list_dir(node, actor, opened=True)

    def op_open(self, actor: Task, op: Op) -> str:
        if op.arg("rw"):
            self.fd_rw.add(op.ret)
        try:
            node = self._open(actor, op.arg("path"), directory=False, rw=bool(op.arg("rw")))
        except Unmodelled:
            actor.process.fds[op.ret] = UNKNOWN
            raise
        actor.process.fds[op.ret] = node
        return "ok"

    def op_close(self, actor: Task, op: Op) -> str:
        node = actor.process.fds.pop(op.arg("fd"), None)
        if node is None:
            raise Errno("EBADF")
        if node is UNKNOWN:
            raise Unmodelled()
        return "ok"

    def op_chdir(self, actor: Task, op: Op) -> str:
        try:
            node = self.resolve(actor, op.arg("path"), follow_last=True)
            if node.ftype != "dir":
                raise Errno("ENOTDIR")
            self.may_exec(node, actor)
        except Unmodelled:
            actor.process.cwd = UNKNOWN
            raise
        actor.process.cwd = node
        return "ok"

    def _held(self, actor: Task, fd: str) -> Node:
        node = actor.process.fds.get(fd)
        if node is None:
            raise Errno("EBADF")
        if node is UNKNOWN:
            raise Unmodelled()
        return node

    def op_read(self, actor: Task, op: Op) -> str:
        node = self._held(actor, op.arg("fd"))
        if node.ftype == "dir":
            raise Errno("EISDIR")
        if node.kind == "sysctl":
            state = sysctl.grab(node.ctl.registration)    # proc_sys_call_handler
            if state == "ENOENT":
                raise Errno("ENOENT")
            value = self.sysctl_value(node.ctl)
            answer = "ok:*" if value is None else read_result(value.encode())
            return answer + " | ENOENT" if state == "maybe" else answer
        if node is DEV_NULL:
            return read_result(b"")
        if node.kind != "pid_entry":
            raise Unmodelled()
        if node.name in INIT_USER_NS_FILES:
            return read_result(INIT_USER_NS_FILES[node.name])
        if node.name in MNT_NS_PINNED_AT_OPEN:
            return "ok:*"                   # the mount list itself is not modelled
        task = node.task
        if task is None and node.name in MM_PINNED_AT_OPEN:
            # auxv_read, environ_read, mem_rw read the mm that proc_mem_open pinned at open, not
            # the task: auxv's saved vector stays readable, the others read 0 bytes once the mm
            # has no users (which other threads sharing it decide): not modelled.
            raise Unmodelled()
        if task is None:
            raise Errno("ESRCH")            # proc_single_show / comm_show: get_proc_task() failed
        if node.name == "comm":
            return read_result((task.comm + "\n").encode())
        if node.name == "cmdline" and task.process.state != "running":
            return read_result(b"")         # get_cmdline: no mm after exit
        raise Unmodelled()                  # contents (memory, times) are not modelled

    @staticmethod
    def is_forwarding(ref: CtlRef) -> bool:
        return ref.level == "leaf" and ref.tabledir == "conf" and ref.leaf == "forwarding"

    def sysctl_value(self, ref: CtlRef) -> str | None:
        """What a read of a sysctl leaf returns ("%d\n", proc_dointvec), None when unknown."""
        if ref.level != "leaf":
            return None
        if not self.is_forwarding(ref):
            value = ref.netns.read_constant(ref) if self.sysctl_constants_known else None
            return None if value is None else value + "\n"
        value = ref.netns.read_forwarding(ref)
        return None if value is None else value + "\n"

    def _forget_sysctl_values(self):
        self.sysctl_constants_known = False
        for netns in {task.netns for process in self.processes for task in process.threads} | self.seen_netns:
            netns.forget_forwarding()

    def op_write(self, actor: Task, op: Op) -> str:
        try:
            return self._write(actor, op)
        except Unmodelled:
            node = actor.process.fds.get(op.arg("fd"))
            if node is UNKNOWN or (node is not None and node.kind == "sysctl" and not self.is_forwarding(node.ctl)):
                self._forget_sysctl_values()    # it may have written any of them (ip_forward, ...)
            raise

    def _write(self, actor: Task, op: Op) -> str:
        node = self._held(actor, op.arg("fd"))
        if node.kind == "pid_entry" and node.name in SEQ_FILES:
            raise Errno("ESPIPE")            # ksys_pwrite64: seq_open() cleared FMODE_PWRITE
        if node.kind == "static":
            raise Unmodelled()               # seq files answer ESPIPE (no FMODE_PWRITE), others EBADF
        if op.arg("fd") not in self.fd_rw:
            raise Errno("EBADF")             # vfs_write: not opened for writing
        if node.kind != "sysctl" or node.ctl.level != "leaf":
            raise Unmodelled()
        state = sysctl.grab(node.ctl.registration)        # proc_sys_call_handler
        if state == "ENOENT":
            raise Errno("ENOENT")
        # proc_sys_call_handler checks sysctl_perm at every write, whatever the open mode was: a
        # non-root writer without CAP_NET_ADMIN (net_ctl_permissions) gets the table's "other"
        # bits, which are read-only for the 0644 files written here.
        answer = "ok" if actor.process.caps else "EPERM"
        if answer == "ok" and not self.is_forwarding(node.ctl):
            raise Unmodelled()              # mtu, retrans_time, ...: each handler's own ranges
        if answer == "ok" and self.is_forwarding(node.ctl):
            # a write that may have failed (ENOENT) leaves the value unknown
            value = op.arg("value") if op.arg("value") in ("0", "1") and state is None else None
            node.ctl.netns.write_forwarding(node.ctl, value)
        if answer == "ok" and op.arg("value") not in ("0", "1"):
            raise Unmodelled()
        return f"{answer} | ENOENT" if state == "maybe" else answer

    # -- network namespaces and devices (net/core/rtnetlink.c, net/core/dev.c) --

    def _netns_of(self, handle: str) -> NetNamespace:
        """The controller opens /proc/<tid>/ns/net of a live task; ENOENT otherwise."""
        task = self.actor_task(handle)
        if task is None:
            raise Errno("ENOENT")
        return task.netns

    @staticmethod
    def _net_admin(actor: Task):
        if not actor.process.caps:
            raise Errno("EPERM")            # rtnetlink_rcv_msg / unshare / setns: CAP_NET_ADMIN, CAP_SYS_ADMIN

    @staticmethod
    def _device(netns: NetNamespace, name: str) -> NetDevice:
        device = netns.devices.get(name)
        if device is None:
            raise Errno("ENODEV")
        if device.uncertain:
            raise Unmodelled()
        return device

    @staticmethod
    def _name_taken(netns: NetNamespace, name: str) -> bool:
        device = netns.devices.get(name)
        if device is not None and device.uncertain:
            raise Unmodelled()
        return device is not None

    def op_unshare_net(self, actor: Task, op: Op) -> str:
        self._net_admin(actor)
        actor.netns = NetNamespace.create(self.profile)
        return "ok"

    def op_setns_net(self, actor: Task, op: Op) -> str:
        target = self._netns_of(op.arg("target"))
        self._net_admin(actor)
        actor.netns = target
        return "ok"

    def op_link_add(self, actor: Task, op: Op) -> str:
        peer_netns = self._netns_of(op.arg("peer_in")) if op.arg("peer_in") else actor.netns
        self._net_admin(actor)
        netns, name = actor.netns, op.arg("name")
        if self._name_taken(netns, name):
            raise Errno("EEXIST")            # rtnl_newlink with NLM_F_EXCL
        device = NetDevice(name, op.arg("kind"), netns)
        if op.arg("kind") == "veth":
            peer_name = op.arg("peer")
            # veth_newlink registers the peer first, then the device, undoing the peer on failure
            if self._name_taken(peer_netns, peer_name) or (peer_netns is netns and peer_name == name):
                raise Errno("EEXIST")
            peer = NetDevice(peer_name, "veth", peer_netns, peer=device)
            device.peer = peer
            peer_netns.devices[peer_name] = peer
            peer.register()
        netns.devices[name] = device
        device.register()
        return "ok"

    def _unregister_netdevice(self, device: NetDevice):
        del device.netns.devices[device.name]
        device.unregister()

    def op_link_del(self, actor: Task, op: Op) -> str:
        self._net_admin(actor)
        device = self._device(actor.netns, op.arg("name"))
        if device.kind == "loopback":
            raise Errno("EOPNOTSUPP")        # rtnl_dellink: no ops->dellink
        self._unregister_netdevice(device)
        if device.peer is not None:          # veth_dellink takes the peer along
            self._unregister_netdevice(device.peer)
        return "ok"

    def op_link_rename(self, actor: Task, op: Op) -> str:
        device = self._device(actor.netns, op.arg("name"))   # the agent's if_nametoindex
        self._net_admin(actor)
        new = op.arg("new")
        if device.up and self.profile.version < (6, 2):
            # dev_change_name refused to rename an up device until 6.2 ("net: core: allow live
            # renaming when an interface is up"); 6.12 renames it.
            raise Errno("EBUSY")
        if new == device.name:
            return "ok"
        if self._name_taken(device.netns, new):
            raise Errno("EEXIST")
        # NETDEV_CHANGENAME: devinet/addrconf/neigh unregister and register their tables again
        del device.netns.devices[device.name]
        device.unregister()
        device.name = new
        device.netns.devices[new] = device
        device.register(keep_conf=True)     # the same in_device and inet6_dev
        return "ok"

    def op_link_set_netns(self, actor: Task, op: Op) -> str:
        target = self._netns_of(op.arg("target"))
        device = self._device(actor.netns, op.arg("name"))
        self._net_admin(actor)
        if device.kind == "loopback":
            raise Errno("EINVAL")            # NETIF_F_NETNS_LOCAL
        if target is device.netns:
            return "ok"
        if self._name_taken(target, device.name):
            raise Errno("EEXIST")
        # __dev_change_net_namespace: close, unregister in the old namespace, register in the new
        self._unregister_netdevice(device)
        device.netns, device.up = target, False
        target.devices[device.name] = device
        device.register()
        return "ok"

    def _set_up(self, actor: Task, op: Op, up: bool) -> str:
        device = self._device(actor.netns, op.arg("name"))
        self._net_admin(actor)
        device.up = up
        return "ok"

    def op_link_up(self, actor: Task, op: Op) -> str:
        return self._set_up(actor, op, True)

    def op_link_down(self, actor: Task, op: Op) -> str:
        return self._set_up(actor, op, False)

    def op_getdents(self, actor: Task, op: Op) -> str:
        if op.arg("fd") == "cwd":
            cwd = self.cwd_of(actor.process)
            self.may_exec(cwd, actor)        # the walk of "." checks the cwd itself
            self.may_read_dir(cwd, actor)    # open(".") does not revalidate it
            return self.list_dir(cwd, actor, opened=True)
        return self.list_dir(self._held(actor, op.arg("fd")), actor)


def name_to_int(name: str) -> int | None:
    """fs/proc/util.c name_to_int: decimal, no leading zero, fits in an unsigned int."""
    if not name.isdigit() or not name.isascii() or (len(name) > 1 and name[0] == "0"):
        return None
    value = int(name)
    return value if value < 2**32 - 1 else None


def read_result(data: bytes) -> str:
    data = data[:4096]
    return f"ok:{len(data)}:{fnv1a64(data)}"
