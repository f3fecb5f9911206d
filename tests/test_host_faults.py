"""Faults of the host are not kernel bugs (issue 15), target side, against the default kernel
(``-m kernel``): QEMU runs in its own session, and a QEMU killed from outside gives a ``lost``
trace and a fresh guest."""

import os
import signal

import pytest

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
