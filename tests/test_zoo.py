"""The bug zoo: a kernel module injects a known /proc dentry bug and the oracle must see it.

Plain tests check the image plumbing; ``-m kernel`` tests build targets/zoo/zoo.ko against
Debian's headers (cached), boot their own QemuTarget (not the shared session one: an injected bug
stays for the life of that guest) and compare with the reference model."""

import pytest

from fuzz.oracle import compare
from reference.program import parse_text
from targets.initramfs import entries, newc_archive
from targets.kernels import load_profile
from targets.model import ModelTarget

STALE_PID = parse_text("""\
m1 = mount_proc p1
p2 = spawn p1 newpid=0
lookup p1 {m1}/{p2}
exit p2
reap p1 p2
lookup p1 {m1}/{p2}
""")

STALE_SYSCTL = parse_text("""\
m1 = mount_proc p1
link_add p1 dummy0 kind=dummy
lookup p1 {m1}/sys/net/ipv4/conf/dummy0
link_del p1 dummy0
link_add p1 dummy0 kind=dummy
lookup p1 {m1}/sys/net/ipv4/conf/dummy0
""")

STALE_TID = parse_text("""\
m1 = mount_proc p1
p2 = spawn p1
t1 = spawn_thread p2
lookup p1 {m1}/{p2}/task/{t1}
exit t1
lookup p1 {m1}/{p2}/task/{t1}
""")

SYSCTL_WRONG_NETNS = parse_text("""\
m1 = mount_proc p1
p2 = spawn p1
unshare_net p2
link_add p2 d0
lookup p2 {m1}/sys/net/ipv4/conf/d0
lookup p1 {m1}/sys/net/ipv4/conf/d0
""")

HIDEPID_WRONG_MOUNT = parse_text("""\
m1 = mount_proc p1 hidepid=invisible
p2 = spawn p1
setgid p2 1000
setuid p2 1000
readdir p2 {m1}
""")


def _injected(program, bug):
    """(model trace, trace of the program on a fresh default-kernel guest with the bug loaded);
    the same guest agrees with the model before the bug is loaded."""
    from targets.qemu import QemuTarget
    model = ModelTarget(load_profile()).run(program)
    with QemuTarget(zoo=True) as target:
        assert compare(program, model, target.run(program)) is None
        assert target.load_zoo(bug) == "ok"
        return model, target.run(program)


def _first_divergence(program, bug):
    """(class, op index, expected, actual) of the first divergence the injected bug causes."""
    model, injected = _injected(program, bug)
    assert injected.outcome == "ok", injected.title
    divergence = compare(program, model, injected)
    assert divergence is not None
    return divergence.cls, divergence.index, divergence.expected, divergence.actual


def test_zoo_module_is_in_the_image_but_not_loaded_by_init():
    items = {e.path: e for e in entries(b"agent", b"busybox", {"dummy": b"d"},
                                               files={"lib/modules/zoo.ko": b"\x7fELFzoo"})}
    assert items["lib/modules/zoo.ko"].data == b"\x7fELFzoo"
    assert b"zoo" not in items["init"].data
    without = entries(b"agent", b"busybox", {"dummy": b"d"})
    assert "lib/modules/zoo.ko" not in {e.path for e in without}
    assert newc_archive(without) != newc_archive(list(items.values()))


@pytest.fixture(scope="module")
def zoo_target():
    from targets.qemu import QemuTarget
    with QemuTarget(zoo=True) as target:
        yield target


@pytest.mark.kernel
def test_stale_pid_is_caught_as_stale(zoo_target):
    model = ModelTarget(load_profile()).run(STALE_PID)
    assert model.results[-1] == "ENOENT"
    stock = zoo_target.run(STALE_PID)
    assert stock.results == model.results and compare(STALE_PID, model, stock) is None

    assert zoo_target.load_zoo("stale_pid") == "ok"
    assert zoo_target.load_zoo("stale_pid") == "EEXIST"      # one bug per guest
    injected = zoo_target.run(STALE_PID)
    assert injected.outcome == "ok", injected.title
    assert injected.results[-1] == "ok:dir"
    divergence = compare(STALE_PID, model, injected)
    assert divergence is not None
    assert (divergence.cls, divergence.index, divergence.expected, divergence.actual) == \
        ("stale", 5, "ENOENT", "ok:dir")


@pytest.mark.kernel
def test_stale_sysctl_is_caught():
    """A stale dentry of an unregistered sysctl table hides the re-registered one."""
    assert _first_divergence(STALE_SYSCTL, "stale_sysctl") == ("missing", 5, "ok:dir", "ENOENT")


@pytest.mark.kernel
def test_injected_bug_survives_a_restart(zoo_target):
    if zoo_target.zoo_bug is None:
        assert zoo_target.load_zoo("stale_pid") == "ok"
    zoo_target.restart()
    assert zoo_target.run(STALE_PID).results[-1] == "ok:dir"


@pytest.mark.kernel
def test_stale_tid_is_caught():
    """A /proc/<pid>/task/<tid> dentry stays valid after the thread exits.  (The agent waits for
    the exit on the task list, not on a lookup, so the bug cannot stall it.)"""
    assert _first_divergence(STALE_TID, "stale_tid") == ("stale", 5, "ENOENT", "ok:dir")


@pytest.mark.kernel
def test_sysctl_wrong_netns_is_caught_as_stale():
    """p1 resolves conf/d0 through p2's cached dentry of p2's network namespace."""
    assert _first_divergence(SYSCTL_WRONG_NETNS, "sysctl_wrong_netns") == ("stale", 5, "ENOENT", "ok:dir")


@pytest.mark.kernel
def test_hidepid_wrong_mount_is_caught_as_visibility():
    """uid 1000 lists root's pid 1 on a hidepid=invisible mount."""
    cls, index, expected, actual = _first_divergence(HIDEPID_WRONG_MOUNT, "hidepid_wrong_mount")
    assert (cls, index) == ("visibility", 4)
    assert "1" not in expected[3:].split(",") and "1" in actual[3:].split(",")
