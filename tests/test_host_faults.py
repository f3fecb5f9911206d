"""Faults of the host are not kernel bugs (issue 15), target side, against the default kernel
(``-m kernel``): QEMU runs in its own session, a QEMU killed from outside gives a ``lost``
trace and a fresh guest, and boots that fail are retried, then reported as BootFailed."""

import dataclasses
import os
import signal

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
