"""Host-side smoke test of the guest agent, without a VM (run as root).

    python3 targets/agent/hosttest.py [path/to/agent]

Builds the agent (unless a binary is given), starts `agent serve -` in a private mount
namespace with a tmpfs on /mnt, and checks op semantics and the protocol against the host
kernel.  `python3 targets/agent/hosttest.py --run 'p2 = spawn p1'` runs one program and
prints its results.
"""

from __future__ import annotations

import os
import select
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, REPO)

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
        ("p2 = frobnicate p1\n", "unknown op"), ("p2 = spawn p9\n", "before it is created"),
        ("p2 = spawn p1\np2 = spawn p1\n", "created twice"), ("exit p1\n", "cannot exit"),
        ("p65 = spawn p1\n", "exceeds the limit"), ("lookup p1 /proc\n", "absolute"),
        ("lookup p1 {p1}\n", "need a {mN}"), ("m1 = mount_proc p1 hidepid=2\n", "bad value"),
        ("spawn p1\n", "creates a handle"), ("p2 = lookup p1 x\n", "does not create"),
        ("setuid p1 007\n", "uid/gid"), ("lookup p1 a b\n", "positional"),
        ("p2 = spawn p1 newpid=1 newpid=0\n", "twice"), ("p2 x = spawn p1\n", "unknown op"),
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
          check_exec, check_hidepid, check_umount, check_dead_dirs, check_bad_input, check_many]


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
    print("all passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
