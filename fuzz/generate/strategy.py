"""Program generation: a generator that simulates the model while it chooses.

Generation only *makes choices* (choices.py): under Hypothesis (`programs`) they are drawn from
its byte stream, so shrinking, replay and atheris-driven decoding (`fuzz_one_input`) work on
the generator; a campaign takes them from its random stream (`build_program`).  The strategy is
biased toward what breaks dentry caches: observe a name, remove or change the object behind
it, observe again from the same or another actor, mount or credential; hold fds and cwds
across removals; remove many objects at once (init death, exec from a thread).
"""

from __future__ import annotations

import re

from hypothesis import strategies as st

from reference.model import UNKNOWN, Kernel
from reference.profile import KernelProfile
from reference.program import (HIDEPID_VALUES, MAX_HANDLES_PER_KIND, Op, Program,
                               make_op, validate)

from .choices import Choices, DrawnChoices

# Per-pid entries worth aiming at: the ones with modelled children or contents.
FAVOURITE_TGID = ("status", "comm", "cmdline", "task", "fd", "cwd", "exe", "stat")
FAVOURITE_TID = ("status", "comm", "fd", "stat")
# A small pool of device names, so that programs reuse, rename and move the same names across
# namespaces (two namespaces with a device of the same name are the interesting case).
DEVICES = ("d0", "d1", "v0", "v1", "lo")
SYSCTL_TABLES = ("ipv4/conf", "ipv4/neigh", "ipv6/conf", "ipv6/neigh")


class _Draft:
    """The program under construction, with the model run alongside it."""

    def __init__(self, profile: KernelProfile):
        self.kernel = Kernel(profile)
        self.profile = profile
        self.ops: list[Op] = []
        self.count = {"p": 1, "t": 0, "m": 0, "f": 0}

    def new_handle(self, kind: str) -> str | None:
        if self.count[kind] >= MAX_HANDLES_PER_KIND:
            return None
        self.count[kind] += 1
        return f"{kind}{self.count[kind]}"

    def handles(self, kinds: str) -> list[str]:
        return [h for h in self.kernel.handles if h[0] in kinds] + \
               [f"f{i}" for i in range(1, self.count["f"] + 1) if "f" in kinds]

    def live_actors(self) -> list[str]:
        return [h for h in self.handles("pt") if self.kernel.actor_task(h) is not None]

    def add(self, op_kind: str, ret: str | None = None, /, **args):
        op = make_op(op_kind, ret, **args)
        self.ops.append(op)
        self.kernel.apply(op)
        return op


def _actor(choose, draft: _Draft) -> str:
    live = draft.live_actors()
    # Mostly live actors; sometimes a dead one, whose `dead` result must match too.
    if live and choose.integer(0, 9) < 9:
        return choose.pick(live)
    return choose.pick(draft.handles("pt"))


def _has_cwd(draft: _Draft, actor: str | None) -> bool:
    task = draft.kernel.actor_task(actor) if actor else None
    return task is not None and task.process.cwd not in (None, UNKNOWN)


def _path(choose, draft: _Draft, actor: str | None = None) -> str:
    """A path template; relative only for an actor whose cwd the model knows."""
    mounts = draft.handles("m")
    relative = ("." , "status", "task", "comm", "fd")
    if not mounts:
        return choose.pick(relative) if _has_cwd(draft, actor) else "."
    mount = "{" + choose.pick(mounts) + "}"
    tasks = draft.handles("pt")
    task = choose.pick(tasks)
    # task/<tid> of another thread group is always ENOENT: mostly aim at the task's own group,
    # whose entries exist, go away with a thread's exit and so can go stale.
    group = _thread_group(draft, task)
    thread = "{" + choose.pick(group if group and choose.integer(0, 3) else tasks) + "}"
    task = "{" + task + "}"
    shape = choose.integer(0, 14)
    if shape >= 12:
        return _sysctl_path(choose, mount, shape)
    if shape == 0:
        return mount
    if shape == 1:
        return f"{mount}/{choose.pick(('self', 'thread-self', 'self/status', 'thread-self/comm'))}"
    if shape == 2 and draft.profile.root:
        return f"{mount}/{choose.pick(sorted(draft.profile.root))}"
    if shape in (3, 4):
        return f"{mount}/{task}"
    if shape == 5:
        return f"{mount}/{task}/{choose.pick(FAVOURITE_TGID)}"
    if shape == 6:
        return f"{mount}/{task}/{choose.pick(sorted(draft.profile.tgid))}"
    if shape == 7:
        return f"{mount}/{task}/{choose.pick(('task', 'net', 'net/dev', 'net/snmp6'))}"
    if shape == 8:
        return f"{mount}/{task}/task/{thread}"
    if shape == 9:
        return f"{mount}/{task}/task/{thread}/{choose.pick(FAVOURITE_TID)}"
    fds = draft.handles("f")
    if shape == 10 and fds:
        return f"{mount}/{task}/fd/{{{choose.pick(fds)}}}"
    if _has_cwd(draft, actor):
        return choose.pick(relative)
    return f"{mount}/{task}"


def _thread_group(draft: _Draft, handle: str) -> list[str]:
    """The process and thread handles of the thread group that ``handle`` belongs to."""
    def process_of(h):
        obj = draft.kernel.handles.get(h)
        return obj if h[0] == "p" else getattr(obj, "process", None)
    process = process_of(handle)
    return [h for h in draft.handles("pt") if process is not None and process_of(h) is process]


def _sysctl_path(choose, mount: str, shape: int) -> str:
    table = choose.pick(SYSCTL_TABLES)
    if shape == 12:
        return f"{mount}/sys/net/{table}"
    device = choose.pick(DEVICES + ("all", "default"))
    if shape == 13:
        return f"{mount}/sys/net/{table}/{device}"
    return f"{mount}/sys/net/{table}/{device}/{choose.pick(('forwarding', 'mtu', 'retrans_time'))}"


def _observe(choose, draft: _Draft, path: str | None = None, actor: str | None = None):
    actor = actor or _actor(choose, draft)
    kind = choose.pick(("lookup", "lookup", "readdir", "readdir", "readlink", "read",
                                 "getdents", "open"))
    fds = draft.handles("f")
    # getdents lists a held fd, or the cwd of an actor that has one (else there is nothing to list)
    listable = fds + (["cwd"] if _has_cwd(draft, actor) else [])
    if kind == "read" and fds:
        draft.add("read", actor=actor, fd=choose.pick(fds))
    elif kind == "getdents" and listable:
        draft.add("getdents", actor=actor, fd=choose.pick(listable))
    elif kind == "open":
        path = path or _path(choose, draft, actor)   # drawn first: it must not name the new handle
        handle = draft.new_handle("f")
        if handle:
            draft.add("open", handle, actor=actor, path=path)
    else:
        draft.add(kind if kind in ("lookup", "readdir", "readlink") else "lookup", actor=actor,
                  path=path or _path(choose, draft, actor))


def _change_state(choose, draft: _Draft):
    actor = _actor(choose, draft)
    choice = choose.pick(("spawn", "spawn", "spawn_thread", "spawn_thread", "exit", "exit",
                                   "reap", "exec", "setuid", "mount_proc", "umount", "close",
                                   "chdir", "chdir", "drop_caches", "net", "net", "net", "net"))
    if choice == "net":
        _change_net(choose, draft, actor)
        return
    if choice in ("spawn", "spawn_thread", "mount_proc"):
        handle = draft.new_handle({"spawn": "p", "spawn_thread": "t", "mount_proc": "m"}[choice])
        if handle is None:
            return
        if choice == "spawn":
            draft.add("spawn", handle, actor=actor, newpid=choose.pick((0, 0, 0, 1)))
        elif choice == "spawn_thread":
            draft.add("spawn_thread", handle, actor=actor)
        else:
            draft.add("mount_proc", handle, actor=actor,
                      hidepid=choose.pick(HIDEPID_VALUES + ("off", "off")),
                      subset=choose.pick(("none", "none", "pid")))
    elif choice == "exit":
        victims = [h for h in draft.live_actors() if h != "p1"]
        if victims:
            draft.add("exit", actor=choose.pick(victims))
    elif choice == "reap":
        # A random (actor, child) pair is nearly always ECHILD; releasing a zombie's pid is what
        # /proc must flush, so mostly let a parent reap one of its zombies when there is one.
        zombies = _parents_of_zombies(draft)
        if zombies and choose.integer(0, 3):
            parent, child = choose.pick(zombies)
            draft.add("reap", actor=parent, child=child)
        else:
            draft.add("reap", actor=actor, child=choose.pick(draft.handles("p")))
    elif choice == "exec":
        draft.add("exec", actor=actor)
    elif choice == "setuid":
        ident = choose.pick((1000, 1000, 2000, 0))
        draft.add("setgid", actor=actor, gid=ident)
        draft.add("setuid", actor=actor, uid=ident)
    elif choice == "umount" and draft.handles("m"):
        draft.add("umount", actor=actor, mount=choose.pick(draft.handles("m")),
                  lazy=choose.pick((0, 1)))
    elif choice == "close" and draft.handles("f"):
        draft.add("close", actor=actor, fd=choose.pick(draft.handles("f")))
    elif choice == "chdir":
        draft.add("chdir", actor=actor, path=_path(choose, draft, actor))
    elif choice == "drop_caches":
        draft.add("drop_caches")


def _parents_of_zombies(draft: _Draft) -> list[tuple[str, str]]:
    """(live actor of the parent, zombie child) handle pairs."""
    return [(parent, child) for child in draft.handles("p") for parent in draft.live_actors()
            if draft.kernel.is_zombie_child_of(child, parent)]


def _change_net(choose, draft: _Draft, actor: str):
    tasks = draft.handles("pt")
    name = choose.pick(DEVICES)
    kind = choose.pick(("link_add", "link_add", "veth", "link_del", "link_rename",
                                 "link_set_netns", "link_up", "link_down", "unshare_net", "setns_net",
                                 "write"))
    if kind == "link_add":
        draft.add("link_add", actor=actor, name=name)
    elif kind == "veth":
        draft.add("link_add", actor=actor, name=name, kind="veth",
                  peer=choose.pick(DEVICES[:-1]),
                  peer_in=choose.pick(("",) + tuple(tasks)))
    elif kind in ("link_del", "link_up", "link_down"):
        draft.add(kind, actor=actor, name=name)
    elif kind == "link_rename":
        draft.add(kind, actor=actor, name=name, new=choose.pick(DEVICES[:-1]))
    elif kind == "link_set_netns":
        draft.add(kind, actor=actor, name=name, target=choose.pick(tasks))
    elif kind == "unshare_net":
        draft.add(kind, actor=actor)
    elif kind == "setns_net":
        draft.add(kind, actor=actor, target=choose.pick(tasks))
    elif draft.handles("m"):
        mount = "{" + choose.pick(draft.handles("m")) + "}"
        table = choose.pick(("ipv4/conf", "ipv6/conf"))
        handle = draft.new_handle("f")
        if handle:
            draft.add("open", handle, actor=actor, rw=1,
                      path=f"{mount}/sys/net/{table}/{choose.pick(DEVICES + ('all', 'default'))}/forwarding")
            draft.add("write", actor=actor, fd=handle, value=choose.pick(("0", "1")))


def _change_named_object(choose, draft: _Draft, path: str, observer: str):
    """The object the path names changes the way such an object can: a device is deleted (half
    the time re-created), renamed or moved to another task's namespace; a namespace view is
    left by the observer (unshare_net, setns_net); a held fd is closed; a task exits (and is
    reaped), execs or changes credentials; a thread exits or its group execs from another
    thread; a mount is unmounted.  That is the change whose flush the episode's second
    observation checks; random mutations rarely hit the one object the path is about."""
    if not draft.live_actors():
        return
    if match := re.match(r"\{m\d+\}/sys/net/ipv[46]/(?:conf|neigh)/(\w+)", path):
        _change_device(choose, draft, match.group(1), observer)
    elif path.startswith("{m") and "/sys/net" in path or re.match(r"\{m\d+\}/\{[pt]\d+\}/net\b", path):
        named = re.findall(r"\{([pt]\d+)\}", path)
        actor = named[0] if named and named[0] in draft.live_actors() else _actor(choose, draft)
        if choose.coin():
            draft.add("unshare_net", actor=actor)
        else:
            draft.add("setns_net", actor=actor, target=choose.pick(draft.handles("pt")))
    elif match := re.match(r"\{m\d+\}/\{[pt]\d+\}/fd/\{(f\d+)\}", path):
        draft.add("close", actor=_actor(choose, draft), fd=match.group(1))
    elif named := re.findall(r"\{([pt]\d+)\}", path):
        _change_task(choose, draft, named[-1])
    elif mount := re.fullmatch(r"\{(m\d+)\}(?:/.*)?", path):
        draft.add("umount", actor=_actor(choose, draft), mount=mount.group(1), lazy=choose.pick((0, 1)))


def _change_device(choose, draft: _Draft, device: str, observer: str):
    if device in ("all", "default", "lo") or observer not in draft.live_actors():
        return
    how = choose.pick(("link_del", "link_del", "link_rename", "link_set_netns"))
    if how == "link_del":
        draft.add("link_del", actor=observer, name=device)
        if choose.coin():
            draft.add("link_add", actor=observer, name=device)
    elif how == "link_rename":
        draft.add("link_rename", actor=observer, name=device, new=choose.pick(DEVICES[:-1]))
    else:
        draft.add("link_set_netns", actor=observer, name=device, target=choose.pick(draft.handles("pt")))


def _change_task(choose, draft: _Draft, victim: str):
    if victim == "p1" or victim not in draft.live_actors():
        return
    how = choose.pick(("exit", "exit", "exec", "setuid"))
    if how == "exec":
        # From another thread of the group, exec ends the others (de_thread).
        group = [h for h in _thread_group(draft, victim) if h in draft.live_actors()]
        draft.add("exec", actor=choose.pick(group or [victim]))
    elif how == "setuid":
        kind = choose.pick(("setuid", "setgid"))
        draft.add(kind, actor=victim, **{"uid" if kind == "setuid" else "gid": choose.pick((1000, 2000))})
    else:
        draft.add("exit", actor=victim)
        parents = [parent for parent, child in _parents_of_zombies(draft) if child == victim]
        if parents and choose.coin():
            draft.add("reap", actor=parents[0], child=victim)


def _device_path(choose, draft: _Draft, actor: str) -> str:
    """A fresh device of the actor's namespace and the sysctl directory it registered: devices
    are otherwise created at random and rarely observed, so their removals rarely checked."""
    name = choose.pick(DEVICES[:-1])
    draft.add("link_add", actor=actor, name=name)
    mount = "{" + choose.pick(draft.handles("m")) + "}"
    return f"{mount}/sys/net/{choose.pick(SYSCTL_TABLES)}/{name}"


def _episode(choose, draft: _Draft):
    """Observe a name, change the world (a quarter of the time including the removal of the task
    or device the name is about), observe the same name again (maybe as someone else).  A
    quarter of the time the name is held instead (an open fd or the cwd) and looked at through
    the holder's link, whose target d_path marks " (deleted)" once the dentry is invalidated:
    a dentry in use that outlives its object shows only there."""
    first = _actor(choose, draft)
    path = _device_path(choose, draft, first) if choose.integer(0, 3) == 0 else _path(choose, draft, first)
    mount = re.match(r"\{m\d+\}", path)
    link = None
    if mount and choose.integer(0, 3) == 0:
        handle = draft.new_handle("f") if choose.coin() else None
        if handle:
            draft.add("open", handle, actor=first, path=path)
            link = f"{mount.group()}/{{{first}}}/fd/{{{handle}}}"
        else:
            draft.add("chdir", actor=first, path=path)
            link = f"{mount.group()}/{{{first}}}/cwd"
    else:
        draft.add(choose.pick(("lookup", "readdir")), actor=first, path=path)
    for _ in range(choose.integer(1, 3)):
        _change_state(choose, draft)
    if choose.integer(0, 1) == 0:
        _change_named_object(choose, draft, path, first)
    again = choose.pick((first, _actor(choose, draft)))
    if link:
        draft.add("readlink", actor=again, path=link)
    else:
        draft.add(choose.pick(("lookup", "readdir")), actor=again, path=path)


def build_program(choose: Choices, profile: KernelProfile, max_ops: int = 40) -> Program:
    draft = _Draft(profile)
    # Every program mounts proc first: without a mount no path of it could be modelled.
    draft.add("mount_proc", draft.new_handle("m"), actor="p1",
              hidepid=choose.pick(HIDEPID_VALUES + ("off",) * 4))
    while len(draft.ops) < max_ops and choose.integer(0, 15) > 0:
        step = choose.integer(0, 9)
        if step < 4:
            _change_state(choose, draft)
        elif step < 7:
            _observe(choose, draft)
        else:
            _episode(choose, draft)
    return validate(draft.ops[:max_ops])


@st.composite
def programs(draw, profile: KernelProfile, max_ops: int = 40) -> Program:
    """The generator as a Hypothesis strategy: what tests, shrinking and atheris use."""
    return build_program(DrawnChoices(draw), profile, max_ops)
