"""Host-side smoke test of the guest agent, without a VM (run as root).

    python3 targets/agent/hosttest.py [path/to/agent]

Builds the agent (unless a binary is given), starts `agent serve -` in a private mount
namespace with a tmpfs on /mnt, and checks op semantics and the protocol against the host
kernel.  `python3 targets/agent/hosttest.py --run 'p2 = spawn p1'` runs one program and
prints its results.

The network checks need veth on the host; the dummy checks run only when the host kernel can
create a dummy device (a kernel without CONFIG_DUMMY answers EOPNOTSUPP, and they are skipped).
"""

from __future__ import annotations

import os
import random
import select
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, REPO)

from reference.program import ProgramError, parse_text  # noqa: E402
from reference.trace import fnv1a64  # noqa: E402


def build() -> str:
    out = os.path.join(tempfile.mkdtemp(prefix="procfuzz-agent-"), "agent")
    os.chmod(os.path.dirname(out), 0o755)   # the exec op may run as an unprivileged uid
    subprocess.run(["gcc", "-static", "-O2", "-Wall", "-Wextra", "-Werror", "-pthread",
                    "-o", out, os.path.join(HERE, "agent.c")], check=True)
    return out


class Agent:
    """`agent serve -` in a private mount namespace; with pid1, as pid 1 of its own pid
    namespace with its own /proc, as in the guest."""

    def __init__(self, binary: str, pid1: bool = False):
        unshare = ["unshare", "-m", "--propagation", "private"]
        if pid1:
            unshare += ["-p", "-f", "--mount-proc"]
        self.proc = subprocess.Popen(
            unshare + ["sh", "-c", f"mount -t tmpfs none /mnt && exec {binary} serve -"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.rfd, self.wfd = self.proc.stdout.fileno(), self.proc.stdin.fileno()
        kind, payload = self.frame()
        assert kind == "H" and payload.startswith(b"procfuzz-agent 1 "), (kind, payload)
        self.pid = self.proc.pid   # unshare execs sh, which execs the agent
        if pid1:                   # unshare -f waits for the agent, its only child
            self.pid = int(children(self.proc.pid)[0])

    def send(self, kind: str, payload: bytes = b"") -> None:
        self.send_raw(b"PFZ" + kind.encode() + struct.pack("<I", len(payload)) + payload)

    def send_raw(self, data: bytes) -> None:
        while data:
            data = data[os.write(self.wfd, data):]

    def read(self, n: int, timeout: float) -> bytes:
        data = b""
        deadline = time.monotonic() + timeout
        while len(data) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.rfd], [], [], left)[0]:
                raise TimeoutError(f"agent sent {len(data)} of {n} bytes")
            chunk = os.read(self.rfd, n - len(data))
            if not chunk:
                raise EOFError("agent closed its output")
            data += chunk
        return data

    def frame(self, timeout: float = 60) -> tuple[str, bytes]:
        head = self.read(8, timeout)
        assert head[:3] == b"PFZ", head
        return chr(head[3]), self.read(struct.unpack("<I", head[4:])[0], timeout)

    def run(self, text: str) -> list[str]:
        """Results of one program; raises on an E frame."""
        self.send("P", text.encode())
        kind, payload = self.frame()
        if kind != "R":
            raise RuntimeError(f"{kind}: {payload.decode(errors='replace')}")
        lines = payload.decode().split("\n")
        assert lines[0].startswith("T ") and lines[-1] == "", lines
        assert len(lines) - 2 == len([l for l in text.splitlines() if l.strip()]), lines
        return lines[1:-1]

    def error(self, text: str) -> str:
        self.send("P", text.encode())
        kind, payload = self.frame()
        assert kind == "E", (kind, payload)
        return payload.decode()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def prog(*lines: str) -> str:
    return "".join(line + "\n" for line in lines)


def expect(agent: Agent, text: str, expected: list[str]) -> None:
    got = agent.run(text)
    for i, (e, g) in enumerate(zip(expected, got)):
        ok = g.startswith(e[:-1]) if e.endswith("*") else g == e
        if not ok:
            raise AssertionError(f"op {i} ({text.splitlines()[i]}): expected {e!r}, got {g!r}\n"
                                 f"program:\n{text}all results: {got}")


# ---- checks --------------------------------------------------------------------------------

def check_numbering(a: Agent) -> None:
    expect(a, prog("p2 = spawn p1", "t1 = spawn_thread p1", "p3 = spawn p2", "t2 = spawn_thread p3",
                   "p4 = spawn t2", "p5 = spawn p1 newpid=1", "p6 = spawn p5", "t3 = spawn_thread p6",
                   "p7 = spawn p6 newpid=1", "p8 = spawn t3"),
           ["ok:2", "ok:3", "ok:4", "ok:5", "ok:6", "ok:7.1", "ok:8.2", "ok:9.3", "ok:10.4.1", "ok:11.5"])


def check_templates(a: Agent) -> None:
    expect(a, prog("p2 = spawn p1 newpid=1", "p3 = spawn p2", "t1 = spawn_thread p3",
                   "m1 = mount_proc p1", "m2 = mount_proc p3",
                   "readlink p1 {m1}/{p3}/task/{t1}/comm", "lookup p1 {m1}/{t1}/comm",
                   "readdir p1 {m2}/{p3}/task", "lookup p1 {m2}/{p1}", "readlink p3 {m2}/self",
                   "readlink p3 {m1}/self", "readdir p1 {m1}/{p3}/task"),
           ["ok:2.1", "ok:3.2", "ok:4.3", "ok", "ok", "EINVAL", "ok:reg", "ok:2,3", "ENOENT",
            "ok:2", "ok:3", "ok:3,4"])


def check_zombies(a: Agent) -> None:
    expect(a, prog("p2 = spawn p1", "m1 = mount_proc p1", "exit p2", "lookup p1 {m1}/{p2}",
                   "readlink p1 {m1}/{p2}/exe", "readdir p1 {m1}/{p2}/task", "reap p2 p2",
                   "reap p1 p2", "lookup p1 {m1}/{p2}", "reap p1 p2", "exit p2", "lookup p2 {m1}"),
           ["ok:2", "ok", "ok", "ok:dir", "ENOENT", "ok:2", "dead", "ok", "ENOENT", "ECHILD", "dead",
            "dead"])
    # a child of a living process: alive, then reaped by its parent
    expect(a, prog("p2 = spawn p1", "p3 = spawn p2", "reap p2 p3", "reap p1 p3", "exit p3",
                   "reap p2 p3"),
           ["ok:2", "ok:3", "ok:alive", "ECHILD", "ok", "ok"])


def check_threads(a: Agent) -> None:
    expect(a, prog("p2 = spawn p1", "t1 = spawn_thread p2", "t2 = spawn_thread t1",
                   "m1 = mount_proc p1", "readdir p1 {m1}/{p2}/task", "exit t1",
                   "readdir p1 {m1}/{p2}/task", "lookup t1 {m1}", "exit t1",
                   "readlink p1 {m1}/{p2}/task/{t2}/comm", "lookup t2 {m1}/{t2}",
                   "exit p2", "lookup t2 {m1}", "lookup p1 {m1}/{t2}", "readdir p1 {m1}/{p2}/task"),
           ["ok:2", "ok:3", "ok:4", "ok", "ok:2,3,4", "ok", "ok:2,4", "dead", "dead", "EINVAL",
            "ok:dir", "ok", "dead", "ENOENT", "ok:2"])


def check_setuid_threads(a: Agent) -> None:
    # glibc's setuid signals every thread it knows of: stale thread lists must not hang it
    expect(a, prog("t1 = spawn_thread p1", "t2 = spawn_thread p1", "p2 = spawn p1 newpid=1",
                   "t3 = spawn_thread p2", "t4 = spawn_thread p2", "setuid p2 1000",
                   "p3 = spawn t4", "t5 = spawn_thread p3", "exit t3", "setgid t5 1", "setuid p3 1"),
           ["ok:2", "ok:3", "ok:4.1", "ok:5.2", "ok:6.3", "ok", "ok:7.4", "ok:8.5", "ok", "EPERM",
            "EPERM"])


def check_exec(a: Agent) -> None:
    # exec from a non-leader thread: de_thread; the thread takes the leader's pid
    expect(a, prog("p2 = spawn p1", "t1 = spawn_thread p2", "t2 = spawn_thread p2",
                   "m1 = mount_proc p1", "f1 = open p2 {m1}/{p2}/comm", "exec t1",
                   "readdir p1 {m1}/{p2}/task", "lookup t1 {m1}", "lookup t2 {m1}",
                   "read p2 f1", "lookup p2 {m1}/{t1}", "readdir p1 {m1}/{p2}/fd",
                   "t3 = spawn_thread p2", "readdir p1 {m1}/{p2}/task", "exec p2",
                   "readdir p1 {m1}/{p2}/task", "p3 = spawn p2", "readdir p1 {m1}/{p3}/fd"),
           ["ok:2", "ok:3", "ok:4", "ok", "ok", "ok", "ok:2", "dead", "dead",
            "ok:6:" + fnv1a64(b"agent\n"), "ENOENT", "ok:0,1,101,2,3", "ok:5", "ok:2,5", "ok",
            "ok:2", "ok:6", "ok:0,1,101,2,3"])
    # exec failing after setuid: the binary stays runnable, so it works; mount fails
    expect(a, prog("p2 = spawn p1", "setgid p2 1000", "setuid p2 1000", "exec p2",
                   "m1 = mount_proc p2", "setuid p2 0", "p3 = spawn p2 newpid=1"),
           ["ok:2", "ok", "ok", "ok", "EPERM", "EPERM", "EPERM"])


def check_hidepid(a: Agent) -> None:
    # without setgid the tasks keep gid 0, and hidepid lets the group of gid= (default 0) see all
    expect(a, prog("p2 = spawn p1", "setgid p2 1000", "setuid p2 1000", "p3 = spawn p1",
                   "setgid p3 1001", "setuid p3 1001",
                   "m1 = mount_proc p1", "m2 = mount_proc p1 hidepid=noaccess",
                   "m3 = mount_proc p1 hidepid=invisible", "m4 = mount_proc p1 hidepid=ptraceable",
                   "m5 = mount_proc p1 subset=pid", "m6 = mount_proc p1 hidepid=invisible subset=pid",
                   "lookup p2 {m1}/{p3}/status", "lookup p2 {m2}/{p3}", "readdir p2 {m2}/{p3}",
                   "lookup p2 {m3}/{p3}", "lookup p2 {m4}/{p3}", "readdir p2 {m3}/{p1}/..",
                   "readdir p2 {m5}", "readdir p1 {m6}", "lookup p2 {m5}/sys", "readdir p3 {m6}"),
           ["ok:2", "ok", "ok", "ok:3", "ok", "ok", "ok", "ok", "ok", "ok", "ok", "ok",
            "ok:reg", "ok:dir", "EPERM", "ENOENT", "ENOENT", "ENOENT",
            "ok:1,2,3,self,thread-self", "ok:1,2,3,self,thread-self", "ENOENT", "ok:3,self,thread-self"])


def check_umount(a: Agent) -> None:
    expect(a, prog("m1 = mount_proc p1", "p2 = spawn p1", "chdir p2 {m1}/{p2}", "umount p1 m1",
                   "umount p1 m1 lazy=1", "lookup p2 status", "lookup p1 {m1}/self",
                   "getdents p2 cwd", "umount p1 m1", "m2 = mount_proc p1", "umount p1 m2"),
           ["ok", "ok:2", "ok", "EBUSY", "ok", "ok:reg", "ENOENT", "ok:*", "EINVAL", "ok", "ok"])


def check_dead_dirs(a: Agent) -> None:
    """Held fds and cwd on a /proc/<pid> directory whose task is gone."""
    got = a.run(prog("m1 = mount_proc p1", "p2 = spawn p1", "f1 = open p1 {m1}/{p2}",
                     "f2 = open p1 {m1}/{p2}/status", "chdir p1 {m1}/{p2}/task", "exit p2",
                     "getdents p1 f1", "read p1 f2", "getdents p1 cwd", "reap p1 p2",
                     "getdents p1 f1", "read p1 f2", "getdents p1 cwd", "lookup p1 .",
                     "readdir p1 .", "lookup p1 ..", "readlink p1 {m1}/self/cwd", "drop_caches",
                     "getdents p1 f1", "lookup p1 {m1}/{p2}"))
    print("  dead-dir behaviour:", got)


def check_bad_input(a: Agent) -> None:
    for text, what in [
        ("link_add p1 v0 kind=veth\n", "veth needs peer"), ("link_add p1 d0 peer=d1\n", "veth needs peer"),
        ("link_add p1 p2\n", "device name"), ("link_add p1 abcdefghijklmnop\n", "device name"),
        ("link_add p1 D0\n", "device name"), ("link_add p1 0a\n", "device name"),
        ("link_add p1 v0 kind=veth peer=v1 peer_in=p2\n", "before it is created"),
        ("link_add p1 v0 kind=veth peer=v1 peer_in=m1\n", "handle"),
        ("link_rename p1 d0\n", "positional"), ("setns_net p1 p7\n", "before it is created"),
        ("setns_net p1 m1\n", "handle"), ("link_set_netns p1 d0 f1\n", "handle"),
        ("f1 = open p1 x\nwrite p1 f1 12345678901\n", "sysctl value"),
        ("f1 = open p1 x\nwrite p1 f1 +1\n", "sysctl value"), ("write p1 f1 1\n", "before it is created"),
        ("link_add p1 d0 kind=bridge\n", "bad value"), ("unshare_net p1 p1\n", "positional"),
        ("p2 = frobnicate p1\n", "unknown op"), ("p2 = spawn p9\n", "before it is created"),
        ("p2 = spawn p1\np2 = spawn p1\n", "created twice"), ("exit p1\n", "cannot exit"),
        ("p65 = spawn p1\n", "exceeds the limit"), ("lookup p1 /proc\n", "absolute"),
        ("lookup p1 {p1}\n", "need a {mN}"), ("m1 = mount_proc p1 hidepid=2\n", "bad value"),
        ("spawn p1\n", "creates a handle"), ("p2 = lookup p1 x\n", "does not create"),
        ("setuid p1 007\n", "uid/gid"), ("lookup p1 a b\n", "positional"),
        ("p2 = spawn p1 newpid=1 newpid=2\n", "bad value"), ("p2 x = spawn p1\n", "unknown op"),
        ("lookup p1 {m1\n", "malformed"),
        ("lookup p1 a\x00b\n", "NUL"), ("x\n" * 300, "unknown op"),
        ("drop_caches\n" * 257, "more than 256"),
    ]:
        msg = a.error(text)
        assert what in msg, (text[:40], msg)
    # framing: garbage, unknown type, oversized length; the agent resynchronises
    a.send_raw(b"garbage!!")
    a.send("X", b"zz")
    a.send_raw(b"PFZP" + struct.pack("<I", (1 << 20) + 1))
    a.send("H")
    frames = []
    while True:
        kind, payload = a.frame(timeout=10)
        frames.append(kind)
        if kind == "H":
            break
    assert frames and all(k == "E" for k in frames[:-1]), frames
    a.send("C", b"nonsense")
    assert a.frame()[0] == "E"
    expect(a, prog("p2 = spawn p1"), ["ok:2"])
    # what program.py accepts beyond canonical text: repeated options (the last counts), the
    # blanks and line breaks of str.split()/splitlines(), long lines, a NUL in a comment
    for text, results in [("p2 = spawn p1 newpid=1 newpid=0\n", ["ok:2"]),
                          ("p2 = spawn p1\rp3 = spawn p2\x0bp4 = spawn p3\x1cp5 = spawn p4\n",
                           ["ok:2", "ok:3", "ok:4", "ok:5"]),
                          ("p2\x1f=\tspawn\u3000p1 # \x00\n", ["ok:2"]),
                          ("p2 = spawn p1" + " " * 600 + "# " + "x" * 600 + "\n", ["ok:2"]),
                          ("link_add p1 v0 peer=v1 kind=veth kind=dummy kind=veth peer_in=\n", ["ok"])]:
        assert a.run(text) == results, (text, a.run(text))


CONF = "{m1}/sys/net/ipv4/conf"


def check_net(a: Agent) -> None:
    """Network namespaces per thread, veth pairs across namespaces, netns fds for targets."""
    expect(a, prog("m1 = mount_proc p1", "p2 = spawn p1", "t1 = spawn_thread p1", "unshare_net p2",
                   "unshare_net t1", "link_add p1 v0 kind=veth peer=v1 peer_in=p2",
                   "link_add t1 v2 kind=veth peer=v3 peer_in=p2", f"readdir p1 {CONF}",
                   f"readdir p2 {CONF}", f"readdir t1 {CONF}", "p3 = spawn t1", f"readdir p3 {CONF}",
                   f"f1 = open p1 {CONF}/v0/forwarding rw=1", "read p1 f1", "write p1 f1 1",
                   f"f2 = open p1 {CONF}/v0", "link_del p2 v1", "read p1 f1", "getdents p1 f2",
                   f"readdir p1 {CONF}", "link_del p1 v0", "write p1 f1 1", "link_up p1 lo",
                   "link_set_netns p1 lo p2", "link_del p1 lo", "link_add p1 lo kind=veth peer=x",
                   "link_add p1 v4 kind=veth peer=v4", "link_rename p1 nosuch x", "link_up p1 nosuch",
                   "link_down p1 nosuch", "link_del p1 nosuch", "link_set_netns p1 nosuch p2",
                   "setns_net p1 t1", f"readdir p1 {CONF}", "setns_net t1 p2", f"readdir t1 {CONF}",
                   "link_set_netns t1 v3 p1", f"readdir p1 {CONF}", f"readdir t1 {CONF}",
                   "link_rename p1 v3 w3", "link_add p1 v5 kind=veth peer=v6", "link_rename p1 v5 w3",
                   "link_set_netns p1 w3 p1", "link_set_netns p1 v6 t1", f"readdir t1 {CONF}"),
           ["ok", "ok:2", "ok:3", "ok", "ok", "ok", "ok", "ok:all,default,lo,v0",
            "ok:all,default,lo,v1,v3", "ok:all,default,lo,v2", "ok:4", "ok:all,default,lo,v2",
            "ok", "ok:2:" + fnv1a64(b"0\n"), "ok", "ok", "ok", "ENOENT", "ENOENT",
            "ok:all,default,lo", "ENODEV", "ENOENT", "ok",
            "EINVAL", "EOPNOTSUPP", "EEXIST", "EEXIST", "ENODEV", "ENODEV",
            "ENODEV", "ENODEV", "ENODEV",
            "ok", "ok:all,default,lo,v2", "ok", "ok:all,default,lo,v3",
            "ok", "ok:all,default,lo,v2,v3", "ok:all,default,lo",
            "ok", "ok", "EEXIST", "ok", "ok", "ok:all,default,lo,v6"])
    # targets that are not (or no longer) alive; privileges; a dead actor does nothing
    expect(a, prog("p2 = spawn p1", "setuid p2 1000", "p3 = spawn p2 newpid=1", "setns_net p1 p3",
                   "link_add p1 v0 kind=veth peer=v1 peer_in=p3", "link_set_netns p1 lo p3",
                   "link_add p1 d0 peer_in=p3", "setns_net p2 p1", "unshare_net p2",
                   "link_add p2 v0 kind=veth peer=v1", "link_del p2 lo", "link_up p2 lo",
                   "t1 = spawn_thread p1", "exit t1", "setns_net p1 t1", "exit p2", "setns_net p1 p2",
                   "reap p1 p2", "setns_net p1 p2", "setns_net p2 p1", "setns_net p2 p3",
                   "unshare_net p2", "link_add p2 v0 kind=veth peer=v1"),
           ["ok:2", "ok", "EPERM", "ENOENT", "ENOENT", "ENOENT", "*", "EPERM", "EPERM",
            "EPERM", "EPERM", "EPERM", "ok:3", "ok", "ENOENT", "ok", "ENOENT", "ok",
            "ENOENT", "dead", "dead", "dead", "dead"])


def check_write(a: Agent) -> None:
    # proc_dointvec parses with base 0: 0064 is octal 52, and 08 is 0 followed by garbage
    expect(a, prog("m1 = mount_proc p1", "f1 = open p1 {m1}/sys/net/ipv4/ip_default_ttl rw=1",
                   "read p1 f1", "write p1 f1 7", "read p1 f1", "write p1 f1 0", "write p1 f1 256",
                   "write p1 f1 -1", "write p1 f1 9999999999", "write p1 f1 08", "write p1 f1 0064", "read p1 f1",
                   "f2 = open p1 {m1}/sys/net/ipv4/ip_default_ttl", "write p1 f2 1",
                   "f3 = open p1 {m1}/sys/net/ipv4/conf rw=1", "f4 = open p1 {m1}/sys/net/ipv4/conf",
                   "write p1 f4 1", "f5 = open p1 {m1}/sys/net/ipv4/conf/lo/mc_forwarding rw=1",
                   "p2 = spawn p1", "unshare_net p2", "read p2 f1", "write p2 f1 9", "read p1 f1"),
           ["ok", "ok", "ok:3:" + fnv1a64(b"64\n"), "ok", "ok:2:" + fnv1a64(b"7\n"), "EINVAL",
            "EINVAL", "EINVAL", "EINVAL", "EINVAL", "ok", "ok:3:" + fnv1a64(b"52\n"), "ok", "EBADF", "EISDIR", "ok",
            "EBADF", "EACCES", "ok:2", "ok", "ok:3:" + fnv1a64(b"52\n"), "ok", "ok:2:" + fnv1a64(b"9\n")])


def check_dummy(a: Agent) -> None:
    if a.run(prog("link_add p1 d0")) == ["EOPNOTSUPP"]:
        print("  the host kernel has no dummy device: skipped")
        return
    expect(a, prog("m1 = mount_proc p1", "link_add p1 d0", "link_add p1 d0", f"readdir p1 {CONF}",
                   "p2 = spawn p1", "unshare_net p2", "link_add p2 d0", "link_set_netns p2 d0 p1",
                   "link_rename p2 d0 d1", "link_set_netns p2 d1 p1", f"readdir p1 {CONF}",
                   f"readdir p2 {CONF}", "link_add p1 d2 peer_in=p2", "link_del p1 d2"),
           ["ok", "ok", "EEXIST", "ok:all,d0,default,lo", "ok:2", "ok", "ok", "EEXIST", "ok", "ok",
            "ok:all,d0,d1,default,lo", "ok:all,default,lo", "ok", "ok"])


def check_parse_agreement(binary: str, n: int = 3000) -> None:
    """`agent parse` accepts exactly what reference/program.py parse_text accepts."""
    rng = random.Random(7)
    seeds = ["p2 = spawn p1 newpid=1", "t1 = spawn_thread p2", "m1 = mount_proc p1 hidepid=invisible",
             "f1 = open p1 {m1}/sys/net/ipv4/conf/d0/forwarding rw=1", "write p1 f1 -12", "unshare_net t1",
             "setns_net p1 t1", "link_add p1 d0", "link_add p2 v0 kind=veth peer=v1 peer_in=p1",
             "link_add p1 d1 kind=dummy peer_in=t1", "link_del p1 d0", "link_rename p1 v1 w1",
             "link_set_netns p1 w1 p2", "link_up p1 lo", "link_down t1 lo", "read p1 f1",
             "getdents p1 cwd", "reap p1 p2", "setuid p1 1000", "umount p1 m1 lazy=1", "exit p2"]
    vocab = ["p1", "p2", "t1", "t9", "m1", "f1", "p65", "p0", "p999", "p1000", "d0", "lo", "a" * 15,
             "a" * 16, "kind=veth", "kind=dummy", "kind=", "peer=v9", "peer=", "peer=p1", "peer_in=p1",
             "peer_in=", "peer_in=t9", "peer_in=d0", "newpid=1", "newpid=2", "lazy=1", "x=1", "=", "=x",
             "1", "-1", "01", "-", "+1", "1234567890", "12345678901", "cwd", "{m1}", "{m1}/x", "A0", "rw=1",
             "rw=0", "rw=",
             "a_b", "Ab", "0a", "write", "link_add", "#", "hidepid=off"]
    chars = [" ", "\t", "\r", "\n", "\x0b", "\x0c", "\x1c", "\x1f", "\x85", "\xa0", "\u2000",
             "\u200b", "\u2028", "\u3000", "\x00", "#", "=", "{", "}", "\xe9", "\r\n"]
    counts = [0, 0]
    for _ in range(n):
        body = [rng.choice(seeds) for _ in range(rng.randint(1, 4))]
        for _ in range(rng.choice((0, 1, 1, 1, 2))):
            line = rng.randrange(len(body))
            words = body[line].split(" ")
            spot = rng.randrange(len(words))
            choice = rng.random()
            if choice < 0.4:
                words[spot] = rng.choice(vocab)
            elif choice < 0.6:
                words.insert(spot, rng.choice(vocab))
            elif choice < 0.8:
                cut = rng.randrange(len(words[spot]) + 1)
                words[spot] = words[spot][:cut] + rng.choice(chars) + words[spot][cut:]
            else:
                words.append(rng.choice([w for w in words if "=" in w] or ["kind=veth"]))
            body[line] = " ".join(words)
        text = "\n".join(["p2 = spawn p1", "t1 = spawn_thread p2", "m1 = mount_proc p1",
                          "f1 = open p1 {m1}/x"] + body) + "\n"
        try:
            parse_text(text)
            python = True
        except ProgramError:
            python = False
        out = subprocess.run([binary, "parse"], input=text.encode(), capture_output=True).stdout
        assert (out == b"ok\n") == python, (text, out)
        counts[python] += 1
    print(f"  {n} mutated programs agree ({counts[1]} accepted)")


def children(pid: int) -> list[str]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return f.read().split()


def controller_state(a: Agent) -> tuple[int, list[str]]:
    return len(os.listdir(f"/proc/{a.pid}/fd")), children(a.pid)


def check_many(a: Agent, n: int = 100) -> None:
    before = controller_state(a)
    text = prog("p2 = spawn p1", "t1 = spawn_thread p2", "p3 = spawn t1 newpid=1", "t2 = spawn_thread p3",
                "m1 = mount_proc p1", "f1 = open p2 {m1}/{p3}/status", "exit t2", "exit p3",
                "readdir p1 {m1}", "exec t1", "readdir p1 {m1}/{p2}/task")
    start = time.monotonic()
    for _ in range(n):
        expect(a, text, ["ok:2", "ok:3", "ok:4.1", "ok:5.2", "ok", "ok", "ok", "ok",
                         "ok:1,2,4,acpi*", "ok", "ok:2"])
    print(f"  {n} programs in {time.monotonic() - start:.2f} s")
    text = prog("p2 = spawn p1", "t1 = spawn_thread p2", "unshare_net t1", "setns_net p1 t1",
                "link_add p2 v0 kind=veth peer=v1 peer_in=t1", "link_set_netns t1 v1 p2",
                "setns_net p2 p2", "p3 = spawn p2 newpid=1", "exit p3", "setns_net p1 p3")
    for _ in range(n // 4):
        expect(a, text, ["ok:2", "ok:3", "ok", "ok", "ok", "ok", "ok", "ok:4.1", "ok", "ENOENT"])
    after = controller_state(a)
    assert before == after, (before, after)
    assert after[1] == [], after


def check_hang(binary: str) -> None:
    a = Agent(binary)
    a.send("C", b"hang")
    a.send("H")
    try:
        a.frame(timeout=2)
        raise AssertionError("agent answered after hang")
    except TimeoutError:
        pass
    finally:
        a.close()


CHECKS = [check_numbering, check_templates, check_zombies, check_threads, check_setuid_threads,
          check_exec, check_hidepid, check_umount, check_dead_dirs, check_bad_input, check_net,
          check_write, check_dummy, check_many]


def main(argv: list[str]) -> int:
    if argv[:1] == ["--run"]:
        a = Agent(build())
        try:
            for line in a.run(argv[1].replace(";", "\n") + "\n"):
                print(line)
        finally:
            a.close()
        return 0
    binary = argv[0] if argv else build()
    for pid1 in (False, True):
        print(f"agent as pid 1: {pid1}")
        a = Agent(binary, pid1)
        try:
            for check in CHECKS:
                print(check.__name__)
                check(a)
        finally:
            a.close()
    print("check_hang")
    check_hang(binary)
    print("check_parse_agreement")
    check_parse_agreement(binary)
    print("all passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
