"""The bug zoo: a kernel module injects a known /proc dentry bug and the oracle must see it.

Plain tests check the image plumbing; ``-m kernel`` tests build targets/zoo/zoo.ko against
Debian's headers (cached), boot their own QemuTarget (not the shared session one: an injected bug
stays for the life of that guest) and compare with the reference model."""

import json
import re
import runpy
import sys
from pathlib import Path

import pytest

from fuzz.record import store
from fuzz.record.finding import Finding
from fuzz.cli import main
from fuzz.compare.leaks import LeakOracle
from fuzz.compare.oracle import Divergence, compare
from reference.program import parse_text
from targets.initramfs import entries, newc_archive
from targets.kernels import load_profile
from targets.model_target import ModelTarget

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
f1 = open p1 {m1}/sys/net/ipv4/conf/dummy0/forwarding
link_del p1 dummy0
readlink p1 {m1}/{p1}/fd/{f1}
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
    """An open file's dentry stays hashed after its table is unregistered (no " (deleted)"),
    while lookups still drop the dead table's dentries and find the re-registered one."""
    model, injected = _injected(STALE_SYSCTL, "stale_sysctl")
    divergence = compare(STALE_SYSCTL, model, injected)
    path = "/sys/net/ipv4/conf/dummy0/forwarding"
    assert (divergence.cls, divergence.index) == ("stale", 4)
    assert divergence.expected.endswith(path + " (deleted)") and divergence.actual.endswith(path)
    assert list(injected.results[5:]) == list(model.results[5:]) == ["ok", "ok:dir"]


@pytest.mark.kernel
def test_stale_sysctl_leaves_the_pid_flush_alone():
    """proc_invalidate_siblings_dcache also serves proc_flush_pid (a tail call: the caller's
    name is release_task's): a dead task's cwd dentry must still be unhashed, ` (deleted)`."""
    from reference.program import parse
    seed = Path(__file__).resolve().parent.parent / "corpus" / "seeds" / "cwd-and-umount.prog"
    program = parse(seed.read_text(), source=str(seed))
    model, injected = _injected(program, "stale_sysctl")
    assert compare(program, model, injected) is None


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


BENCH_ZOO = Path(__file__).resolve().parent.parent / "bench" / "bench_zoo.py"

# A shell script of the guest image: busybox's rmmod (the agent loads modules, never unloads them).
RMMOD_ZOO = ("opt/rmmod-zoo", b"#!/bin/sh\nexec /bin/busybox rmmod zoo\n")


def zoo_bugs() -> list[str]:
    """The bug names of zoo.c's table, in table order (the module's own list)."""
    source = (Path(__file__).resolve().parent.parent / "targets" / "zoo" / "zoo.c").read_text()
    table = source[source.index("static const struct zoo_bug bugs[] = {"):]
    return re.findall(r'^\s*\{ "(\w+)",', table[:table.index("};")], re.M)


def test_zoo_bugs_lists_the_table():
    bugs = zoo_bugs()
    assert bugs[:7] == ["stale_pid", "stale_tid", "stale_sysctl", "sysctl_wrong_netns",
                        "hidepid_wrong_mount", "leak_pidns", "leak_dentry"]
    assert len(set(bugs)) == len(bugs)


@pytest.mark.kernel
def test_leak_dentry_is_caught_as_a_leak_and_unloading_drops_it():
    """Every lookup of /proc/<pid> on a program's proc mount pins the dentry (and with it the
    proc inode and the mount's superblock): the op results do not change, the dentry and
    proc_inode_cache counts grow at every run, and rmmod gives everything back."""
    from targets.qemu import QemuTarget
    model = ModelTarget(load_profile()).run(STALE_PID)
    oracle = LeakOracle()
    with QemuTarget(zoo=True, files=dict([RMMOD_ZOO])) as target:
        target.measure_leaks = True

        def run():
            trace = target.run(STALE_PID)
            assert trace.outcome == "ok", trace.title
            assert compare(STALE_PID, model, trace) is None
            return trace.extra["slab"]
        for _ in range(3):
            assert oracle.check(run(), run) is None
        before = oracle.baseline
        assert target.load_zoo("leak_dentry") == "ok"
        # Measured: the first run after loading grows dentry and proc_inode_cache by 2 (within
        # the tolerance: not yet suspect), every later run by 4 (/proc/<pid> and the pinned
        # superblock's root, self and thread-self).
        found = oracle.check(run(), run) or oracle.check(run(), run)
        assert found is not None and {"dentry", "proc_inode_cache"} <= set(found.caches), found
        assert "dentry grew over the runs" in found.describe()

        unload = target.run_file(RMMOD_ZOO[0], timeout=30)
        assert unload.status == "exit 0", unload
        after = run()
        assert after["dentry"] <= before["dentry"] and after["proc_inode_cache"] <= before["proc_inode_cache"]


@pytest.mark.kernel
@pytest.mark.parametrize("kernel", [None, "6.12-cloud"])
def test_every_bug_loads_and_unloads(kernel):
    """Each bug registers its probes by symbol name: a symbol the kernel lacks (inlined, renamed)
    fails the load with ENOENT. One guest per kernel: rmmod between bugs."""
    from targets.qemu import QemuTarget
    with QemuTarget(kernel, zoo=True, files=dict([RMMOD_ZOO])) as target:
        for bug in zoo_bugs():
            assert (bug, target.load_zoo(bug)) == (bug, "ok")
            unload = target.run_file(RMMOD_ZOO[0], timeout=30)
            assert (bug, unload.status) == (bug, "exit 0"), unload.output
            target.zoo_bug = None       # gone: not to be injected again after a restart


# ---- procfuzz bench zoo ----------------------------------------------------------------------

def test_bench_knows_the_class_of_every_bug_of_the_table():
    assert sorted(runpy.run_path(str(BENCH_ZOO))["EXPECTED_CLASSES"]) == sorted(zoo_bugs())


def test_first_finding_is_the_earliest_new_one_of_the_class(tmp_path):
    first_finding = runpy.run_path(str(BENCH_ZOO))["first_finding"]
    profile = load_profile()

    def record(program, cls, recorded, role=""):
        trace = ModelTarget(profile).run(program)
        divergence = Divergence(cls, None, "", "", "", f"{cls} of {program.id}", role=role)
        finding = Finding(program, trace, trace, divergence, "k")
        directory, _ = store.record(tmp_path, finding)
        meta = json.loads((directory / "meta.json").read_text())
        (directory / "meta.json").write_text(json.dumps({**meta, "recorded": recorded}))
        return directory, finding.signature
    later, _ = record(STALE_PID, "leak", 20)
    record(STALE_TID, "leak", 10, role="known")       # a known issue
    record(STALE_SYSCTL, "stale", 5)
    earliest, _ = record(SYSCTL_WRONG_NETNS, "leak", 15)
    assert first_finding(tmp_path, ("leak",)) == earliest
    assert first_finding(tmp_path, ("visibility", "missing")) is None
    assert first_finding(tmp_path, ("leak", "stale")).name == STALE_SYSCTL.id
    assert later != earliest


def test_bench_zoo_rejects_an_unknown_bug(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", sys.argv[:])
    with pytest.raises(SystemExit) as exited:
        main(["bench", "zoo", "--bugs", "stale_pid,no_such_bug"])
    assert exited.value.code == 2
    assert "unknown zoo bug(s) no_such_bug" in capsys.readouterr().err


@pytest.mark.kernel
def test_bench_zoo_finds_leak_dentry_with_and_without_seeds_and_the_control_is_clean(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", sys.argv[:])
    with pytest.raises(SystemExit) as exited:
        main(["bench", "zoo", "--bugs", "leak_dentry", "--budget-per-bug", "90s", "--control-budget", "20s",
              "--workers", "1", "--seed", "3", "--json", str(tmp_path / "zoo.json"), "--out", str(tmp_path / "out")])
    report = json.loads((tmp_path / "zoo.json").read_text())
    assert exited.value.code == 0, report
    assert [(r["bug"], r["seeded"], r["detected"]) for r in report["bugs"]] == \
        [("leak_dentry", True, True), ("leak_dentry", False, True)]
    generated = report["bugs"][1]
    assert generated["origin"] == "generated" and generated["programs"] >= 2     # the first is the baseline
    leak = store.load(Path(generated["finding"])).divergence
    assert leak.cls == "leak" and "dentry grew over the runs" in leak.detail and "proc_inode_cache grew" in leak.detail
    assert report["leak_every"] == 10 and report["control"]["findings"] == {}
    assert report["done"] is True


def test_bench_target_rejects_a_module_that_is_not_there(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(sys, "argv", sys.argv[:])
    with pytest.raises(SystemExit) as exited:
        main(["bench", "target", "--load-module", f"{tmp_path}/nope.ko:bug=stale_pid"])
    assert exited.value.code == 2
    assert "no such file" in capsys.readouterr().err
