"""Faults of the host are not kernel bugs (issue 15), target side, against the default kernel
(``-m kernel``): QEMU runs in its own session (a Ctrl-C spares it, the death of its holder
does not), a QEMU killed from outside gives a ``lost`` trace and a fresh guest, and boots that
fail are retried, then reported as BootFailed."""

import dataclasses
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from targets.qemu import BootFailed, QemuTarget
from targets.vm import Vm, VmError
from tests.test_qemu_target import SMALL_PROGRAM


@pytest.mark.kernel
def test_qemu_runs_in_its_own_session(qemu_target):
    # A terminal's Ctrl-C (SIGINT to the foreground group) or SIGHUP must not reach the guest.
    pid = qemu_target.qemu_pid
    assert os.getpgid(pid) != os.getpgid(0) and os.getsid(pid) != os.getsid(0)
    assert os.getpgid(pid) == os.getsid(pid) == pid


# A process that holds a target, ignores Ctrl-C as a campaign worker does (a Python handler, so
# QEMU does not inherit it), and runs SMALL_PROGRAM for every line on its stdin.
HOLDER = """
import signal, sys
from targets.qemu import QemuTarget
from tests.test_qemu_target import SMALL_PROGRAM
signal.signal(signal.SIGINT, lambda *_: print("interrupted", flush=True))
with QemuTarget() as target:
    print(target.qemu_pid, flush=True)
    for _ in sys.stdin:
        print(target.run(SMALL_PROGRAM).outcome, flush=True)
"""


def _line(child: subprocess.Popen, timeout: float = 300.0) -> str:
    assert select.select([child.stdout], [], [], timeout)[0], "the holder said nothing"
    return child.stdout.readline()


def _gone(pid: int, timeout: float) -> bool:
    """Exited (a zombie counts: who reaps an orphan is not ours to decide)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z":
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.kernel
def test_ctrl_c_spares_qemu_and_qemu_dies_with_its_holder():
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], cwd=Path(__file__).parent.parent,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    qemu = None
    try:
        qemu = int(_line(holder))
        os.killpg(holder.pid, signal.SIGINT)      # a terminal's Ctrl-C: the whole foreground group
        assert _line(holder) == "interrupted\n"
        holder.stdin.write("run\n")
        holder.stdin.flush()
        assert _line(holder) == "ok\n"
        holder.kill()                              # no stop(): only PR_SET_PDEATHSIG can end QEMU
        holder.wait()
        assert _gone(qemu, 10.0)
    finally:
        holder.kill()
        holder.wait()
        if qemu and not _gone(qemu, 0):
            os.kill(qemu, signal.SIGKILL)


@pytest.mark.kernel
def test_qemu_killed_from_outside_is_lost_not_a_crash(qemu_target):
    before = qemu_target.run(SMALL_PROGRAM)
    assert before.outcome == "ok", before.title
    restarts, host_faults, killed = qemu_target.restarts, qemu_target.host_faults, qemu_target.qemu_pid
    os.kill(killed, signal.SIGKILL)
    trace = qemu_target.run(SMALL_PROGRAM)
    assert (trace.outcome, trace.title) == ("lost", "QEMU exited (signal 9) with no kernel report")
    assert (qemu_target.host_faults, qemu_target.restarts) == (host_faults + 1, restarts + 1)
    assert qemu_target.qemu_pid not in (None, killed)
    after = qemu_target.run(SMALL_PROGRAM)
    assert (after.outcome, after.results) == ("ok", before.results)


class FailsOnce(Vm):
    """A Vm whose first boot of the test fails as a QEMU killed mid-boot would."""
    failed = False

    def start(self, timeout: float) -> str:
        if not FailsOnce.failed:
            FailsOnce.failed = True
            self.stop()
            raise VmError("QEMU exited (signal 9)")
        return super().start(timeout)


@pytest.mark.kernel
def test_a_failed_boot_is_retried(qemu_target, monkeypatch):
    monkeypatch.setattr("targets.qemu.Vm", FailsOnce)
    failures, restarts = qemu_target.boot_failures, qemu_target.restarts
    qemu_target.restart()
    assert (qemu_target.boot_failures, qemu_target.restarts) == (failures + 1, restarts + 1)
    assert qemu_target.run(SMALL_PROGRAM).outcome == "ok"


@pytest.mark.kernel
def test_boots_that_keep_failing_raise_boot_failed_with_qemus_reason(tmp_path):
    # A real QEMU on a kernel file that is not a kernel: it exits at once, every time.
    (tmp_path / "vmlinuz").write_bytes(b"not a kernel" * 100)
    target = QemuTarget(accel="tcg", boot_attempts=2)
    target.image = dataclasses.replace(target.image, directory=tmp_path)
    with pytest.raises(BootFailed) as failed:
        target.start()
    assert failed.value.reason == ("2 boots in a row failed, the last: QEMU exited (status 1): "
                                   "qemu: linux kernel too old to load a ram disk")
    assert "--- qemu ---" in failed.value.tail and target.boot_failures == 2 and target.vm is None
