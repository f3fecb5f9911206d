"""The leak oracle: the slab line of the agent's reply, the decision logic (plain unit tests), its
place in the campaign loop, and (``-m kernel``) no leak on a stock kernel."""

from pathlib import Path

import pytest

from fuzz.compare import leaks
from fuzz.campaign.worker import WorkerConfig, run_worker
from fuzz.record.store import list_findings, load
from fuzz.compare.leaks import Leak, LeakOracle, grown, leaking, tolerance
from fuzz.compare.classes import KERNEL_CLASSES
from fuzz.record.programs import load_directory
from reference.trace import Trace
from targets.kernels import load_profile
from targets.model_target import ModelTarget
from reference.program import parse_text
from targets.protocol import MAX_SLAB_ENTRIES, ProtocolError, parse_slab

SEEDS = Path(__file__).resolve().parent.parent / "corpus" / "seeds"


# ---- the S line ----------------------------------------------------------------------------

def test_parse_slab():
    assert parse_slab("S") == {}
    assert parse_slab("S proc_inode_cache=12 pid_namespace=0 dentry=40123") == \
        {"proc_inode_cache": 12, "pid_namespace": 0, "dentry": 40123}
    many = "S " + " ".join(f"c{i}=1" for i in range(MAX_SLAB_ENTRIES))
    assert len(parse_slab(many)) == MAX_SLAB_ENTRIES


@pytest.mark.parametrize("bad", [
    "", "T 1 2", "s dentry=1", "S  dentry=1", "S dentry=1 ", "S dentry", "S dentry=", "S =1",
    "S dentry=-1", "S dentry=1x", "S dentry=0x10", "S Dentry=1", "S kmalloc-64=1", "S dentry=1 dentry=2",
    "S " + "a" * 41 + "=1", "S dentry=" + "9" * 19, "S dentry=１",
    "S " + " ".join(f"c{i}=1" for i in range(MAX_SLAB_ENTRIES + 1)),
])
def test_parse_slab_rejects(bad):
    with pytest.raises(ProtocolError):
        parse_slab(bad)


# ---- decision logic ------------------------------------------------------------------------

def test_growth_within_tolerance_is_noise():
    base = {"dentry": 1000, "pid_namespace": 3}
    assert grown(base, {"dentry": 1000 + tolerance("dentry"), "pid_namespace": 3 + tolerance("pid_namespace")}) == []
    assert grown(base, {"dentry": 1001 + tolerance("dentry"), "pid_namespace": 2}) == ["dentry"]
    assert grown(base, {"new_cache": 10**6}) == []          # no baseline for it: nothing to compare


def test_a_leak_grows_at_every_run():
    runs = [{"pid_namespace": 6, "dentry": 1200}, {"pid_namespace": 9, "dentry": 1199},
            {"pid_namespace": 12, "dentry": 1300}, {"pid_namespace": 15, "dentry": 1400}]
    assert leaking(runs) == {"pid_namespace": [6, 9, 12, 15]}
    assert leaking([runs[0], runs[1], {"pid_namespace": 9}]) == {}     # flat
    assert leaking([runs[0], runs[1], {}]) == {}                      # count missing
    teardown = [{"kernfs_node_cache": n} for n in (11414, 11478, 11580, 11580)]     # measured, 6.1
    assert leaking(teardown) == {}


def test_a_leak_is_every_cache_that_grew_every_run_beyond_its_tolerance_in_all():
    """One pid namespace a run never passes the tolerance between two runs, yet it leaks; a
    cache that creeps up by less than its tolerance over all runs does not."""
    runs = [{"pid_namespace": 4 + n, "dentry": 1004 + 4 * n, "proc_dir_entry": 501 + n} for n in range(4)]
    assert sorted(leaking(runs)) == ["dentry", "pid_namespace"]
    assert leaking(runs[:2]) == {}                          # two runs are no trend


def test_describe_names_cache_and_counts():
    leak = Leak.of({"pid_namespace": [3, 6, 9]})
    assert leak.describe() == "pid_namespace grew over the runs: 3, 6, 9"
    assert Leak.from_description(leak.describe()) == leak == Leak.from_json(leak.to_json())
    assert leak.signature == "leak pid_namespace" and Leak.of({}) is None


class FakeKernel:
    """Slab counts of a kernel where every run adds ``per_run`` to each cache plus a noise term."""

    def __init__(self, per_run: dict, noise=(0,)):
        self.counts = {"dentry": 5000, "pid_namespace": 2, "proc_inode_cache": 300}
        self.per_run, self.noise, self.runs = per_run, noise, 0

    def run_counts(self):
        wobble = self.noise[self.runs % len(self.noise)]
        self.runs += 1
        for cache, n in self.per_run.items():
            self.counts[cache] += n
        return {c: n + (wobble if c == "dentry" else 0) for c, n in self.counts.items()}


def test_oracle_confirms_a_steady_leak_and_reruns_it():
    kernel = FakeKernel({"pid_namespace": 5})
    oracle = LeakOracle()
    assert oracle.check(kernel.run_counts(), kernel.run_counts) is None      # first program: the baseline
    found = oracle.check(kernel.run_counts(), kernel.run_counts)
    assert found == Leak.of({"pid_namespace": [12, 17, 22, 27]})
    assert kernel.runs == 2 + leaks.RERUNS


def test_oracle_ignores_measured_noise():
    # dentry moving between consecutive runs by up to its tolerance
    top = tolerance("dentry")
    kernel = FakeKernel({}, noise=(0, top, top // 2, top, 0, 1, 0))
    oracle = LeakOracle()
    for _ in range(30):
        assert oracle.check(kernel.run_counts(), kernel.run_counts) is None
    assert kernel.runs == 30


def test_oracle_rejects_a_one_off_jump():
    kernel = FakeKernel({})
    oracle = LeakOracle()
    oracle.check(kernel.run_counts(), kernel.run_counts)
    kernel.counts["dentry"] += 500           # one program's worth, then flat
    assert oracle.check(kernel.run_counts(), kernel.run_counts) is None
    assert kernel.runs == 3          # suspect: one re-run grew nothing, so the others could not make a leak
    assert oracle.check(kernel.run_counts(), kernel.run_counts) is None
    assert kernel.runs == 4          # the new level is the baseline


def test_oracle_stops_re_running_once_no_cache_grew_at_every_run():
    reruns = iter([{"dentry": 120, "proc_dir_entry": 11}, {"dentry": 120, "proc_dir_entry": 12},
                   {"dentry": 121, "proc_dir_entry": 13}])
    ran = []
    oracle = LeakOracle()
    oracle.check({"dentry": 100, "proc_dir_entry": 10}, lambda: pytest.fail("the first program is the baseline"))
    # dentry grew past its tolerance: suspect.  The first re-run grew both caches, the others only
    # proc_dir_entry, within its tolerance over the runs: every re-run is made, no leak.
    assert oracle.check({"dentry": 110, "proc_dir_entry": 10}, lambda: ran.append(1) or next(reruns)) is None
    assert len(ran) == leaks.RERUNS
    flat = iter([{"dentry": 110, "pid": 10}])
    ran.clear()
    oracle.check({"dentry": 100, "pid": 10}, lambda: pytest.fail("no growth: not suspect"))
    assert oracle.check({"dentry": 110, "pid": 10}, lambda: ran.append(1) or next(flat)) is None
    assert len(ran) == 1                     # nothing grew at the first re-run: no more re-runs


def test_oracle_without_counts_or_with_a_failed_rerun():
    oracle = LeakOracle()
    assert oracle.check(None, lambda: pytest.fail("no re-run without counts")) is None
    assert oracle.check({}, lambda: pytest.fail("no re-run without counts")) is None
    oracle.check({"pid_namespace": 1}, lambda: None)
    assert oracle.check({"pid_namespace": 50}, lambda: None) is None
    assert oracle.baseline is None


# ---- in the campaign loop ------------------------------------------------------------------

class LeakyTarget:
    """The model's results plus slab counts in which pid_namespace grows by 4 per program run;
    with ``drift``, by 4 per run of anything, the empty program too (a loaded host, a slow
    asynchronous teardown): not a leak of the program."""
    label, measure_leaks, host_faults = "fake=1", False, 0

    def __init__(self, profile, drift: bool = False):
        self.model = ModelTarget(profile)
        self.pid_namespaces = 0
        self.restarts = 0
        self.drift = drift

    def run(self, program):
        expected = self.model.run(program)
        if len(program) or self.drift:
            self.pid_namespaces += 4
        results = tuple(r.split(" | ")[0].rstrip("*") for r in expected.results)
        return Trace(results, kernel="fake=1", extra={"slab": {"pid_namespace": self.pid_namespaces, "dentry": 7}})

    def cpu_seconds(self):
        return 0.0

    def restart(self):
        self.restarts += 1

    def close(self):
        pass


def test_campaign_records_a_leak(tmp_path):
    profile = load_profile()
    target = LeakyTarget(profile)
    config = WorkerConfig(0, 1, profile, "fake=1", tmp_path / "out", tmp_path / "corpus", float("inf"),
                          max_programs=2, seed_dirs=(SEEDS,))
    stats = run_worker(config, target, lambda s: None, lambda: False)
    assert "leak" in KERNEL_CLASSES
    leaked = [load(d) for d in list_findings(tmp_path / "out") if load(d).divergence.cls == "leak"]
    assert stats.findings["leak"] == 1 and len(leaked) == 1 and stats.unconfirmed == 0
    assert leaked[0].divergence.detail.startswith("pid_namespace grew over the runs: 8, 12, 16, 20")
    assert leaked[0].reruns == (leaks.CONFIRM_ROUNDS, leaks.CONFIRM_ROUNDS) and leaked[0].leak_confirmed
    assert target.restarts == 1                      # confirmed in a fresh VM


def test_counts_that_drift_with_every_run_are_never_a_confirmed_leak(tmp_path):
    """The suspect and its re-runs grow as a leak would, but so does the empty program."""
    profile = load_profile()
    target = LeakyTarget(profile, drift=True)
    config = WorkerConfig(0, 1, profile, "fake=1", tmp_path / "out", tmp_path / "corpus", float("inf"),
                          max_programs=2, seed_dirs=(SEEDS,))
    stats = run_worker(config, target, lambda s: None, lambda: False)
    leaked = [load(d) for d in list_findings(tmp_path / "out")]
    assert stats.findings == {} and stats.unconfirmed == 1
    assert [(f.divergence.cls, f.reruns, f.leak_confirmed) for f in leaked] == [("leak", (0, leaks.CONFIRM_ROUNDS), False)]


def test_confirmation_needs_a_quorum_of_rounds_and_net_growth_beyond_the_control():
    leak = Leak.of({"dentry": [1, 2, 3, 4]})
    counts = {"dentry": 100}

    def bump(by):
        def run():
            counts["dentry"] += by
            return dict(counts)
        return run
    assert leaks.confirm_leak(leak, bump(1), bump(0)) == leaks.CONFIRM_ROUNDS          # one per program run
    assert leaks.confirm_leak(leak, bump(1), bump(1)) == 0                             # the control too
    steps = iter([2, 2, 2, 0, 2, 2, 2, 2])                      # one dip under load: still a leak
    assert leaks.confirm_leak(leak, lambda: bump(next(steps))(), bump(0)) == leaks.CONFIRM_ROUNDS
    steps = iter([1, 1, 0, 0, 1, 1, 0, 1])                      # below the quorum
    assert leaks.confirm_leak(leak, lambda: bump(next(steps))(), bump(0)) == 5
    # A slow teardown: up across the program, down across the control, nothing gained
    assert leaks.confirm_leak(leak, bump(1), bump(-1)) == leaks.CONFIRM_ROUNDS - 1
    assert leaks.confirm_leak(leak, bump(1), lambda: None) == 0                        # a failed run


def test_a_teardown_still_pending_at_the_end_of_the_confirmation_window_is_no_leak():
    """Each program's namespaces are freed during the next control, but the window's last
    control reads before the worker ran: only the settling controls see the objects go."""
    leak = Leak.of({"sock_inode_cache": [39, 50, 57, 61]})
    counts = {"sock_inode_cache": 20}
    control_steps = iter([0] + [-44] * (leaks.CONFIRM_ROUNDS - 1) + [0, -44, 0])

    def run(by):
        counts["sock_inode_cache"] += by
        return dict(counts)
    shown = leaks.confirm_leak(leak, lambda: run(44), lambda: run(next(control_steps)))
    assert shown == leaks.CONFIRM_ROUNDS - 1 and next(control_steps, None) is None
    # the same window with a real leak of 3 sockets a run stays a leak after settling
    counts, control_steps = {"sock_inode_cache": 20}, iter([0] + [-41] * (leaks.CONFIRM_ROUNDS - 1) + [0, -41, 0])
    assert leaks.confirm_leak(leak, lambda: run(44), lambda: run(next(control_steps))) == leaks.CONFIRM_ROUNDS


# ---- a stock kernel ------------------------------------------------------------------------

@pytest.mark.kernel
def test_stock_kernel_does_not_leak(qemu_target, monkeypatch):
    programs = [program for _, program in load_directory(SEEDS)[0]]
    oracle = LeakOracle()
    monkeypatch.setattr(qemu_target, "measure_leaks", True)
    seen = 0
    for _ in range(2):
        for program in programs:
            trace = qemu_target.run(program)
            assert trace.outcome == "ok", trace.title
            slab = trace.extra["slab"]
            assert {"proc_inode_cache", "dentry", "pid", "pid_namespace", "net_namespace", "task_struct"} <= set(slab)
            found = oracle.check(slab, lambda: qemu_target.run(program).extra.get("slab"))
            assert found is None, f"{program.id}: {found.describe()}"
            seen += 1
    assert seen == 2 * len(programs)


# Three nested pid namespaces, each with its own proc mount read once: with the zoo's leak_pidns
# every readdir pins its namespace (and so the sandbox's, their parent).
LEAK_PIDNS = parse_text("""\
p2 = spawn p1 newpid=1
m1 = mount_proc p2
readdir p2 {m1}
p3 = spawn p1 newpid=1
m2 = mount_proc p3
readdir p3 {m2}
p4 = spawn p1 newpid=1
m3 = mount_proc p4
readdir p4 {m3}
""")


@pytest.mark.kernel
def test_zoo_leak_is_caught():
    from targets.qemu import QemuTarget
    oracle = LeakOracle()
    with QemuTarget(zoo=True) as target:
        target.measure_leaks = True

        def run():
            trace = target.run(LEAK_PIDNS)
            assert trace.outcome == "ok", trace.title
            return trace.extra["slab"]
        for _ in range(3):
            assert oracle.check(run(), run) is None
        assert target.load_zoo("leak_pidns") == "ok"
        found = oracle.check(run(), run)
    assert found.caches == ("pid_namespace",)
    series = found.series[0][1]
    assert len(series) == 1 + leaks.RERUNS
    assert all(b - a == 4 for a, b in zip(series, series[1:])), series
