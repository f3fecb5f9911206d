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


def test_zoo_module_is_in_the_image_but_not_loaded_by_init():
    items = {e.path: e for e in entries(b"agent", b"busybox", {"dummy": b"d"}, zoo=b"\x7fELFzoo")}
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
    from targets.qemu import QemuTarget
    model = ModelTarget(load_profile()).run(STALE_SYSCTL)
    with QemuTarget(zoo=True) as target:
        assert compare(STALE_SYSCTL, model, target.run(STALE_SYSCTL)) is None
        assert target.load_zoo("stale_sysctl") == "ok"
        divergence = compare(STALE_SYSCTL, model, target.run(STALE_SYSCTL))
    assert divergence is not None
    assert (divergence.cls, divergence.index, divergence.expected, divergence.actual) == \
        ("missing", 5, "ok:dir", "ENOENT")


@pytest.mark.kernel
def test_injected_bug_survives_a_restart(zoo_target):
    if zoo_target.zoo_bug is None:
        assert zoo_target.load_zoo("stale_pid") == "ok"
    zoo_target.restart()
    assert zoo_target.run(STALE_PID).results[-1] == "ok:dir"
