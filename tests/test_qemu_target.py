"""The QEMU target: frame decoding and crash titles (plain unit tests), then a real guest
(``-m kernel``: boots the default pinned kernel under QEMU, once per session)."""

import socket
import struct

import pytest

from reference.program import parse_text
from targets.console import find_report
from targets.protocol import MAX_PAYLOAD, Channel, Decoder, ProtocolError, encode, parse_hello, parse_results
from targets.qemu import QemuTarget


def guest_frame(kind: bytes, payload: bytes) -> bytes:
    return b"PFZ" + kind + struct.pack("<I", len(payload)) + payload


# ---- frames from an untrusted guest ---------------------------------------------------------

def test_decoder_reassembles_frames_split_anywhere():
    stream = guest_frame(b"H", b"procfuzz-agent 1 6.1.0") + guest_frame(b"R", b"T 1 2\nok\n")
    for cut in range(len(stream) + 1):
        decoder = Decoder()
        frames = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:])
        assert [(f.kind, f.payload) for f in frames] == [("H", b"procfuzz-agent 1 6.1.0"), ("R", b"T 1 2\nok\n")]


@pytest.mark.parametrize("garbage, problem", [
    (b"Booting the kernel...\r\n", "magic"),
    (b"PFZX\0\0\0\0", "unknown frame type"),
    (b"PFZP\0\0\0\0", "unknown frame type"),          # a host type coming back is not valid either
    (b"PFZR" + struct.pack("<I", MAX_PAYLOAD + 1), "exceeds"),
    (b"PFZR\xff\xff\xff\xff", "exceeds"),
])
def test_decoder_rejects_garbage_before_buffering_it(garbage, problem):
    with pytest.raises(ProtocolError, match=problem):
        Decoder().feed(guest_frame(b"H", b"procfuzz-agent 1 x") + garbage)


def test_largest_frame_is_accepted():
    frames = Decoder().feed(guest_frame(b"E", b"x" * MAX_PAYLOAD))
    assert len(frames[0].payload) == MAX_PAYLOAD


def test_encode_checks_its_side():
    assert encode("P", b"readdir p1 {m1}\n") == b"PFZP\x10\0\0\0readdir p1 {m1}\n"
    with pytest.raises(ValueError):
        encode("R", b"")
    with pytest.raises(ValueError):
        encode("P", b"x" * (MAX_PAYLOAD + 1))


def test_parse_results():
    assert parse_results(b"T 120 900\nS dentry=5 pid=7\nok\nok:dir\nENOENT\n", 3) == \
        (120, 900, ("ok", "ok:dir", "ENOENT"), {"dentry": 5, "pid": 7})
    assert parse_results(b"T 0 5\nS\n", 0) == (0, 5, (), {})
    for bad in (b"T 1 2\nS\nok\n", b"T x 2\nS\nok\nok\n", b"ok\nok\n", b"T 1 2\nS\nok\n\n",
                b"T 1 2\nS\nok\x00\nok\n", b"T 1 2\nS\nok\xff\nok\n", b"", b"T 1 2\nok\nok\n",
                b"T 1 2\nok\nok\nok\n"):
        with pytest.raises(ProtocolError):
            parse_results(bad, 2)


def test_parse_hello():
    assert parse_hello(b"procfuzz-agent 1 6.1.0-50-cloud-amd64") == "6.1.0-50-cloud-amd64"
    for bad in (b"procfuzz-agent 2 6.1.0", b"hello", b"procfuzz-agent 1 a b", b"procfuzz-agent 1 \xff"):
        with pytest.raises(ProtocolError):
            parse_hello(bad)


# ---- console reports ------------------------------------------------------------------------

BOOT_NOISE = """\
[    0.040000] tsc: Unable to calibrate against PIT\r
[    0.827654] mtrr: your CPUs had inconsistent fixed MTRR settings\r
[    2.417719] Unstable clock detected, switching default tracing clock to "global"\r
"""

PAGE_FAULT = BOOT_NOISE + """\
[   12.001000] BUG: unable to handle page fault for address: ffffffffffffffe8\r
[   12.001100] #PF: supervisor read access in kernel mode\r
[   12.001200] Oops: 0000 [#1] PREEMPT SMP NOPTI\r
[   12.001300] CPU: 1 PID: 77 Comm: p2 Not tainted 6.1.0-50-cloud-amd64 #1  Debian 6.1.176-1\r
[   12.001400] RIP: 0010:proc_sys_compare+0x1e/0x80\r
[   12.001500] Kernel panic - not syncing: Fatal exception\r
"""


@pytest.mark.parametrize("console, title", [
    (PAGE_FAULT, "BUG: unable to handle page fault in proc_sys_compare"),
    (BOOT_NOISE + "[ 5.1] Kernel panic - not syncing: sysrq triggered crash\r\n",
     "Kernel panic - not syncing: sysrq triggered crash"),
    ("[ 3.0] ------------[ cut here ]------------\n"
     "[ 3.0] WARNING: CPU: 0 PID: 9 at fs/proc/base.c:1234 proc_pid_lookup+0x4a/0x90\n"
     "[ 3.0] RIP: 0010:proc_pid_lookup+0x4a/0x90\n", "WARNING in proc_pid_lookup"),
    ("[ 9.0] watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [p2:80]\n[ 9.0] RIP: 0010:d_walk+0x10/0x20\n",
     "BUG: soft lockup in d_walk"),
    ("[ 9.0] BUG: kernel NULL pointer dereference, address: 0000000000000008\n"
     "[ 9.0] RIP: 0010:pid_revalidate+0x5/0x60\n", "BUG: kernel NULL pointer dereference in pid_revalidate"),
    ("[ 9.0] kernel BUG at fs/proc/inode.c:42!\n", "kernel BUG at fs/proc/inode.c:42"),
    ("[130.0] INFO: task agent:1 blocked for more than 120 seconds.\n", "INFO: task hung: agent"),
])
def test_report_titles(console, title):
    report = find_report(console)
    assert report.title == title
    assert report.excerpt and not any(line.startswith("[") for line in report.excerpt.splitlines())


def test_boot_noise_is_no_report():
    assert find_report(BOOT_NOISE) is None


def test_report_excerpt_is_clean_text():
    report = find_report(PAGE_FAULT + "\x1b[0m\x00junk\n")
    assert "\r" not in report.excerpt and "\x1b" not in report.excerpt and "\x00" not in report.excerpt
    assert report.excerpt.startswith("tsc:")


# ---- failure classification, with a scripted guest instead of QEMU ---------------------------

class ScriptedVm:
    """Stands in for targets.vm.Vm: the test plays the guest on the other end of a socketpair."""

    def __init__(self, tmp_path, console=""):
        host, self.guest = socket.socketpair()
        self.channel = Channel(host)
        self.console_path = tmp_path / "console.log"
        self.console_path.write_text(console)
        self.proc = type("Proc", (), {"poll": lambda self: None})()
        self.exit_code = None          # what QEMU's wait returns: None while it runs
        self.stopped = False

    def console_size(self):
        return self.console_path.stat().st_size

    def read_console(self, offset):
        return self.console_path.read_text()[offset:]

    def wait_exit(self, timeout):
        return self.exit_code

    def qemu_log(self):
        return "qemu-system-x86_64: terminating on signal 15 from pid 1"

    def stop(self):
        self.stopped = True

    def cpu_seconds(self):
        return 0.0


class ScriptedTarget(QemuTarget):
    def __init__(self, tmp_path):
        self.tmp_path, self.vm, self.restarts, self.host_faults = tmp_path, None, 0, 0
        self.watchdog_base, self.watchdog_per_op = 0.5, 0.0
        self.image = type("Image", (), {"label": "test=1"})()
        self.zoo_bug, self._zoo_at_boot, self.modules = None, None, ()
        self._cpu_of_stopped = 0.0

    def start(self):
        self.vm = ScriptedVm(self.tmp_path)
        self._console_seen = 0


def scripted(tmp_path, reply: bytes, console_during: str = ""):
    """A target whose first guest answers the first request with ``reply`` (raw bytes) and
    writes ``console_during`` to its console meanwhile."""
    target = ScriptedTarget(tmp_path)
    target.start()
    first = target.vm
    send = first.channel.send

    def guest_reacts(kind, payload):
        with open(first.console_path, "a") as f:
            f.write(console_during)
        send(kind, payload)
        first.guest.sendall(reply)
    first.channel.send = guest_reacts
    return target, first


def test_garbage_from_the_guest_is_an_error_and_a_restart(tmp_path):
    target, first = scripted(tmp_path, b"\x00\xffnot a frame at all")
    trace = target.run(parse_text("m1 = mount_proc p1\n"))
    assert trace.outcome == "error" and "magic" in trace.title
    assert first.stopped and target.restarts == 1 and target.vm is not first


def test_wrong_result_count_is_an_error(tmp_path):
    target, _ = scripted(tmp_path, guest_frame(b"R", b"T 1 2\nS\nok\nok\n"))
    trace = target.run(parse_text("m1 = mount_proc p1\n"))
    assert trace.outcome == "error" and "2 result lines for 1 ops" in trace.title


def test_slab_counts_reach_the_trace(tmp_path):
    target, _ = scripted(tmp_path, guest_frame(b"R", b"T 1 2\nS dentry=10 pid_namespace=2\nok\n"))
    trace = target.run(parse_text("m1 = mount_proc p1\n"))
    assert trace.outcome == "ok" and trace.extra["slab"] == {"dentry": 10, "pid_namespace": 2}


def test_malformed_slab_line_is_a_protocol_error(tmp_path):
    target, first = scripted(tmp_path, guest_frame(b"R", b"T 1 2\nS dentry=x\nok\n"))
    trace = target.run(parse_text("m1 = mount_proc p1\n"))
    assert trace.outcome == "error" and "protocol error: bad slab entry" in trace.title
    assert target.restarts == 1


def test_agent_error_frame_keeps_the_vm(tmp_path):
    target, first = scripted(tmp_path, guest_frame(b"E", b"program: line 1: bad"))
    trace = target.run(parse_text("m1 = mount_proc p1\n"))
    assert (trace.outcome, trace.title) == ("error", "agent error: program: line 1: bad")
    assert target.vm is first and target.restarts == 0


def test_report_after_a_good_reply_is_a_crash_with_results(tmp_path):
    warning = ("[ 3.0] WARNING: CPU: 0 PID: 9 at fs/proc/base.c:1 proc_pid_lookup+0x4a/0x90\n"
               "[ 3.0] RIP: 0010:proc_pid_lookup+0x4a/0x90\n")
    target, _ = scripted(tmp_path, guest_frame(b"R", b"T 7 9\nS pid=3\nok\n"), console_during=warning)
    trace = target.run(parse_text("m1 = mount_proc p1\n"))
    assert (trace.outcome, trace.title, trace.results, trace.guest_us) == (
        "crash", "WARNING in proc_pid_lookup", ("ok",), 7)
    assert "fs/proc/base.c" in trace.extra["console"] and target.restarts == 1


def test_guest_going_away_is_a_crash_titled_from_the_console(tmp_path):
    target, first = scripted(tmp_path, b"", console_during=PAGE_FAULT)
    first.guest.close()
    trace = target.run(parse_text("m1 = mount_proc p1\n"))
    assert (trace.outcome, trace.title) == ("crash", "BUG: unable to handle page fault in proc_sys_compare")
    assert target.restarts == 1


def test_guest_going_away_without_a_report_is_lost_not_a_crash(tmp_path):
    target, first = scripted(tmp_path, b"", console_during="[ 3.0] random: crng init done\n")
    first.exit_code = -9
    first.guest.close()
    trace = target.run(parse_text("m1 = mount_proc p1\n"))
    assert (trace.outcome, trace.title) == ("lost", "QEMU exited (signal 9) with no kernel report")
    assert "crng init done" in trace.extra["console"] and "terminating on signal" in trace.extra["qemu_log"]
    assert (target.host_faults, target.restarts) == (1, 1)


def test_a_report_printed_between_requests_explains_the_guest_going_away(tmp_path):
    # A panic after the last reply (a delayed RCU callback, say) is a kernel bug, not a host fault.
    target, first = scripted(tmp_path, b"")
    first.console_path.write_text(PAGE_FAULT)
    first.exit_code = 0
    first.guest.close()
    trace = target.run(parse_text("m1 = mount_proc p1\n"))
    assert (trace.outcome, trace.title) == ("crash", "BUG: unable to handle page fault in proc_sys_compare")
    assert target.host_faults == 0


def test_silence_then_qemu_gone_without_a_report_is_lost(tmp_path):
    target, first = scripted(tmp_path, b"")
    first.exit_code = 1
    trace = target.run(parse_text("m1 = mount_proc p1\n"))
    assert (trace.outcome, trace.title) == ("lost", "QEMU exited (status 1) with no kernel report")
    assert target.host_faults == 1


def test_silence_is_a_hang(tmp_path):
    target, _ = scripted(tmp_path, b"")
    trace = target.run(parse_text("m1 = mount_proc p1\n"))
    assert trace.outcome == "hang" and trace.title == "no reply from the agent before the watchdog"
    assert target.restarts == 1


# ---- a real guest ---------------------------------------------------------------------------

SMALL_PROGRAM = parse_text("""\
m1 = mount_proc p1
lookup p1 {m1}/self
readdir p1 {m1}/{p1}/task
lookup p1 {m1}/999999
""")


@pytest.mark.kernel
def test_boot_and_ping(qemu_target):
    assert qemu_target.vm.release == qemu_target.image.release
    assert qemu_target.ping() < 1.0


@pytest.mark.kernel
def test_small_program(qemu_target):
    trace = qemu_target.run(SMALL_PROGRAM)
    assert trace.outcome == "ok", trace.title
    assert trace.results == ("ok", "ok:lnk", "ok:1", "ENOENT")
    assert trace.kernel == qemu_target.label and trace.guest_us > 0


@pytest.mark.kernel
def test_agent_error_frame_is_an_error_without_restart(qemu_target):
    restarts = qemu_target.restarts
    # Bypasses Program on purpose: only the agent can reject a program text.
    trace, _ = qemu_target._exchange("P", b"no_such_op p1\n", 1)
    assert trace.outcome == "error" and trace.title.startswith("agent error:")
    assert qemu_target.restarts == restarts
    assert qemu_target.run(SMALL_PROGRAM).outcome == "ok"


@pytest.mark.kernel
def test_panic_is_a_crash_then_the_vm_restarts(qemu_target):
    restarts, host_faults = qemu_target.restarts, qemu_target.host_faults
    trace = qemu_target.control("panic")
    assert (trace.outcome, trace.title) == ("crash", "Kernel panic - not syncing: sysrq triggered crash")
    assert "sysrq_handle_crash" in trace.extra["console"]
    assert (qemu_target.restarts, qemu_target.host_faults) == (restarts + 1, host_faults)
    assert qemu_target.run(SMALL_PROGRAM).results == ("ok", "ok:lnk", "ok:1", "ENOENT")


@pytest.mark.kernel
def test_silent_agent_is_a_hang_then_the_vm_restarts(qemu_target):
    restarts, host_faults = qemu_target.restarts, qemu_target.host_faults
    trace = qemu_target.control("hang")
    assert trace.outcome == "hang" and trace.title.startswith("no reply")
    assert (qemu_target.restarts, qemu_target.host_faults) == (restarts + 1, host_faults)
    assert qemu_target.run(SMALL_PROGRAM).outcome == "ok"


# ---- files and modules carried into the guest (C reproducers, --load-module) --------------------

HELLO_C = r"""
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
    (void)argc;
    if (argv[0][5] == 's') { sleep(100); return 0; }      /* /opt/sleep */
    printf("hello from %s, uid %d\n", argv[0], (int)getuid());
    return 3;
}
"""


@pytest.fixture(scope="module")
def static_hello(tmp_path_factory) -> bytes:
    import subprocess
    directory = tmp_path_factory.mktemp("hello")
    (directory / "hello.c").write_text(HELLO_C)
    subprocess.run(["gcc", "-static", "-O2", "-o", str(directory / "hello"), str(directory / "hello.c")], check=True)
    return (directory / "hello").read_bytes()


@pytest.mark.kernel
def test_run_file_reports_status_and_output_and_a_module_is_loaded_at_every_boot(static_hello):
    from targets.qemu import ModuleSpec
    from targets.zoo.build import build_zoo
    from tests.test_zoo import STALE_PID
    zoo_ko = build_zoo(None)
    spec = ModuleSpec.parse(f"{zoo_ko}:bug=stale_pid")
    with QemuTarget(modules=[spec], files={"opt/hello": static_hello, "opt/sleep": static_hello}) as target:
        run = target.run_file("/opt/hello", timeout=20)
        assert (run.status, run.output) == ("exit 3", "hello from /opt/hello, uid 0\n")
        assert target.run_file("opt/sleep", timeout=1).status == "timeout"
        # The module is the zoo's, loaded as a user's module: its bug shows, before and after a restart.
        assert target.run(STALE_PID).results[-1] == "ok:dir"
        target.restart()
        assert target.run(STALE_PID).results[-1] == "ok:dir"


@pytest.mark.kernel
def test_a_module_that_does_not_load_is_a_clear_error(tmp_path):
    from targets.qemu import ModuleLoadError, ModuleSpec
    bogus = tmp_path / "bogus.ko"
    bogus.write_bytes(b"not an ELF module")
    with pytest.raises(ModuleLoadError, match=r"bogus\.ko.*ENOEXEC"):
        QemuTarget(modules=[ModuleSpec.parse(str(bogus))]).start()


@pytest.mark.parametrize("text, problem", [
    ("/nonexistent/x.ko", "no such file"),
    ("README.md", "not a .ko"),
])
def test_module_spec_rejects_bad_arguments(text, problem):
    from targets.qemu import ModuleSpec
    with pytest.raises(ValueError, match=problem):
        ModuleSpec.parse(text)


def test_a_sandbox_that_outlives_sigkill_is_a_hang_and_a_restart(tmp_path):
    target, first = scripted(tmp_path, guest_frame(b"E", b"teardown: sandbox init 125 did not die within 10 s"))
    trace = target.run(parse_text("m1 = mount_proc p1\n"))
    assert (trace.outcome, trace.title) == ("hang", "a sandbox task did not die after SIGKILL")
    assert first.stopped and target.restarts == 1 and target.vm is not first
