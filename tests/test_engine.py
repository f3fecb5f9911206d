"""The differential engine without a VM: oracle classes, findings storage, generation,
mutation, and a campaign against a planted model mistake."""

import os
import random
import signal
import time

import pytest
from hypothesis import HealthCheck, given, settings

from fuzz.record import store
from fuzz.record.finding import Finding
from fuzz.campaign.startup import StartCorpus
from fuzz.campaign.worker import WorkerConfig, run_worker
from fuzz.generate.source import ProgramSource
from fuzz.generate.mutate import mutate
from fuzz.generate.strategy import programs
from fuzz.compare.oracle import compare, find_inconsistency
from fuzz.record.programs import load_directory
from reference.model import Errno, Kernel
from reference.program import parse_text, validate
from reference.state_check import with_state_check
from reference.trace import Trace
from targets.model_target import ModelTarget
from test_model import PROFILE

ZOMBIE = parse_text("m1 = mount_proc p1\np2 = spawn p1\nexit p2\nreap p1 p2\nlookup p1 {m1}/{p2}\n"
                    "readdir p1 {m1}\n")


class ForgetfulKernel(Kernel):
    """A planted bug: reaping does not release the task, so /proc keeps showing it (stale)."""

    def op_reap(self, actor, op):
        child = self.handles[op.arg("child")]
        if child.parent is not actor.process:
            raise Errno("ECHILD")
        return "ok"


class BuggyTarget(ModelTarget):
    name = "buggy"
    restarts = host_faults = 0

    def run(self, program):
        kernel = ForgetfulKernel(self.profile)
        return Trace(tuple(kernel.apply(op) for op in program.ops), kernel="buggy-kernel")


def test_identical_traces_do_not_diverge():
    trace = ModelTarget(PROFILE).run(ZOMBIE)
    assert compare(ZOMBIE, trace, trace) is None


def test_stale_entry_is_classified_stale():
    expected = ModelTarget(PROFILE).run(ZOMBIE)
    actual = BuggyTarget(PROFILE).run(ZOMBIE)
    divergence = compare(ZOMBIE, expected, actual)
    assert (divergence.cls, divergence.index, divergence.expected, divergence.actual) == \
        ("stale", 4, "ENOENT", "ok:dir")


@pytest.mark.parametrize("want, got, cls", [
    ("ok:dir", "ENOENT", "missing"),
    ("EPERM", "ENOENT", "errno"),
    ("ok:1,2", "ok:1,2,3", "stale"),
    ("ok:1,2,3", "ok:1,2", "missing"),
])
def test_classes(want, got, cls):
    program = parse_text("m1 = mount_proc p1\nreaddir p1 {m1}\n")
    divergence = compare(program, Trace(("ok", want)), Trace(("ok", got)))
    assert divergence.cls == cls


def test_visibility_when_credentials_are_involved():
    program = parse_text("m1 = mount_proc p1 hidepid=invisible\nlookup p1 {m1}\n")
    assert compare(program, Trace(("ok", "ENOENT")), Trace(("ok", "ok:dir"))).cls == "visibility"


@pytest.mark.parametrize("text, want, got, cls", [
    # A task directory that resolves to a dead task: the name should be gone, hidepid or not.
    ("m1 = mount_proc p1 hidepid=invisible\np2 = spawn p1\nreaddir p1 {m1}/{p2}\n", "ENOENT", "ESRCH", "stale"),
    ("m1 = mount_proc p1\np2 = spawn p1\nreaddir p1 {m1}/{p2}\n", "ESRCH", "ENOENT", "missing"),
    # The task's end, not the observer's credentials, is what the difference is about.
    ("m1 = mount_proc p1 hidepid=invisible\np2 = spawn p1\nexit p2\nlookup p1 {m1}/{p2}\n", "ENOENT", "ok:dir",
     "stale"),
    # /proc/sys shows by network namespace: a nested pid namespace does not make it visibility.
    ("m1 = mount_proc p1\np2 = spawn p1 newpid=1\nlookup p2 {m1}/sys/net/ipv4/conf/lo\n", "ok:dir", "ENOENT",
     "missing"),
])
def test_classes_of_removed_objects_and_sysctl(text, want, got, cls):
    program = parse_text(text)
    before = ("ok",) * (len(program) - 1)
    assert compare(program, Trace(before + (want,)), Trace(before + (got,))).cls == cls


def test_crash_hang_model_bug_and_harness_error():
    program = parse_text("m1 = mount_proc p1\nlookup p1 {m1}\n")
    ok = Trace(("ok", "ok:dir"))
    assert compare(program, ok, Trace(("ok",), outcome="crash", title="BUG: x")).cls == "crash"
    assert compare(program, ok, Trace((), outcome="hang", title="silent")).cls == "hang"
    assert compare(program, Trace((), outcome="error", title="model"), ok).cls == "model-bug"
    assert compare(program, ok, Trace(("ok",))).cls == "harness-error"


def test_wildcard_and_alternatives_match():
    program = parse_text("m1 = mount_proc p1\nlookup p1 {m1}\n")
    assert compare(program, Trace(("ok", "*")), Trace(("ok", "EIO"))) is None
    assert compare(program, Trace(("ok", "ENOENT | ok:dir")), Trace(("ok", "ok:dir"))) is None


def test_inconsistency_inside_one_kernel_trace():
    program = parse_text("m1 = mount_proc p1\np2 = spawn p1\nreaddir p1 {m1}/{p2}/task\n"
                         "lookup p1 {m1}/{p2}/task/{p2}\n")
    consistent = Trace(("ok", "ok:2", "ok:2", "ok:dir"))
    assert find_inconsistency(program, consistent) is None
    broken = Trace(("ok", "ok:2", "ok:2", "ENOENT"))
    assert find_inconsistency(program, broken).cls == "inconsistent"


def test_a_name_the_model_lets_go_at_any_moment_may_go_between_readdir_and_lookup():
    """A veth end in p1's namespace dies with its peer's namespace, whenever cleanup_net runs
    after p2's exit: listed by one op, gone at the next (seen on stock 6.1.176)."""
    program = parse_text("m1 = mount_proc p1\np2 = spawn p1\nunshare_net p2\n"
                         "link_add p1 d1 kind=veth peer=d1 peer_in=p2\nexit p2\n"
                         "readdir p1 {m1}/sys/net/ipv6/neigh\nlookup p1 {m1}/sys/net/ipv6/neigh/d1\n")
    kernel = Trace(("ok", "ok:2", "ok", "ok", "ok", "ok:d1,lo", "ENOENT"))
    model = ModelTarget(PROFILE).run(program)
    assert model.results[6] == "*"                                              # either way
    assert compare(program, model, kernel) is None
    assert find_inconsistency(program, kernel).cls == "inconsistent"           # without the model


def test_finding_round_trip_and_signature(tmp_path):
    expected, actual = ModelTarget(PROFILE).run(ZOMBIE), BuggyTarget(PROFILE).run(ZOMBIE)
    finding = Finding(ZOMBIE, expected, actual, compare(ZOMBIE, expected, actual), "k=1", "log")
    assert finding.signature == "stale lookup /proc/<pid> after reap"
    directory, new = store.record(tmp_path, finding)
    assert new and directory.name == ZOMBIE.id
    assert store.record(tmp_path, finding) == (directory, False)
    loaded = store.load(directory)
    assert loaded.program == ZOMBIE and loaded.divergence == finding.divergence
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        ["program.prog", "program.json", "model.json", "kernel.json", "divergence.json", "console.log", "meta.json"])


def test_sigkill_while_recording_leaves_no_partial_finding(tmp_path):
    expected, actual = ModelTarget(PROFILE).run(ZOMBIE), BuggyTarget(PROFILE).run(ZOMBIE)
    divergence = compare(ZOMBIE, expected, actual)
    pid = os.fork()
    if pid == 0:                                  # child: record findings as fast as it can
        for i in range(100000):
            program = validate(ZOMBIE.ops + tuple(parse_text("drop_caches\n" * (1 + i % 200)).ops))
            store.record(tmp_path, Finding(program, expected, actual, divergence, "k"))
        os._exit(0)
    deadline = time.monotonic() + 120            # a loaded machine records slowly: wait for some
    while len(store.list_findings(tmp_path)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.1)                               # then kill it mid-write, most likely
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    recorded = store.list_findings(tmp_path)
    assert recorded
    for directory in recorded:
        store.load(directory)                  # every visible finding is complete


@settings(max_examples=150, suppress_health_check=list(HealthCheck), deadline=None)
@given(programs(PROFILE))
def test_generated_programs_are_valid_and_the_model_never_fails(program):
    assert validate(program.ops) == program
    assert parse_text(program.to_text()) == program
    assert ModelTarget(PROFILE).run(program).outcome == "ok"


def test_mutation_keeps_programs_valid():
    rng = random.Random(7)
    source = ProgramSource(PROFILE, [], rng, max_ops=30)
    pool = [source.next() for _ in range(20)]
    made = 0
    for _ in range(200):
        mutant = mutate(rng.choice(pool), rng.choice(pool), rng)
        if mutant is not None:
            made += 1
            assert validate(mutant.ops) == mutant
            assert ModelTarget(PROFILE).run(mutant).outcome == "ok"
    assert made > 150


def test_same_seed_same_programs():
    first = ProgramSource(PROFILE, [], random.Random("s"), 30)
    second = ProgramSource(PROFILE, [], random.Random("s"), 30)
    assert [first.next() for _ in range(10)] == [second.next() for _ in range(10)]


def test_campaign_finds_stores_and_grows_corpus(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "zombie.prog").write_text(ZOMBIE.to_text())
    config = WorkerConfig(0, 1, PROFILE, "buggy-kernel", tmp_path / "out", corpus,
                          deadline=time.monotonic() + 60, max_programs=150)
    stats = run_worker(config, BuggyTarget(PROFILE), lambda s: None, lambda: False)
    assert stats.programs == 150
    assert stats.findings["stale"] >= 1
    recorded = [store.load(d) for d in store.list_findings(tmp_path / "out")]
    assert with_state_check(ZOMBIE).id in {f.program.id for f in recorded}     # run with its state check
    assert stats.corpus_added > 5 and len(load_directory(corpus)[0]) == 1 + stats.corpus_added


def test_seed_programs_are_replayed_but_never_copied_into_the_working_corpus(tmp_path):
    corpus = tmp_path / "corpus"
    config = WorkerConfig(0, 3, PROFILE, "k", tmp_path / "out", corpus, float("inf"), max_programs=30)
    stats = run_worker(config, ModelTarget(PROFILE), lambda s: None, lambda: False, start=StartCorpus((ZOMBIE,), ()))
    saved = {program.id for _, program in load_directory(corpus)[0]}
    assert ZOMBIE.id not in saved and with_state_check(ZOMBIE).id not in saved
    assert stats.corpus_added == len(saved) > 0


def test_next_campaign_starts_from_the_saved_corpus(tmp_path):
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    corpus.mkdir()
    first = WorkerConfig(0, 5, PROFILE, "k", out, corpus, deadline=time.monotonic() + 60, max_programs=40)
    run_worker(first, ModelTarget(PROFILE), lambda s: None, lambda: False)
    saved = {program for _, program in load_directory(corpus)[0]}
    assert saved
    second = ProgramSource(PROFILE, [p for _, p in load_directory(corpus)[0]], random.Random(0), 30)
    assert {second.next() for _ in range(len(saved))} == saved      # seeds are replayed first


def test_atheris_grows_the_corpus_with_valid_programs(tmp_path):
    from fuzz.campaign.atheris_driver import grow_corpus
    from targets.kernels import load_profile
    added = grow_corpus(load_profile(), tmp_path, runs=400, max_ops=20)
    programs, errors = load_directory(tmp_path)
    assert added == len(programs) > 0 and not errors
    for _, program in programs:
        assert ModelTarget(load_profile()).run(program).outcome == "ok"


def test_guest_cpus_do_not_oversubscribe_the_host():
    from fuzz.campaign.parallel import guest_cpus_for
    assert [guest_cpus_for(1, 2), guest_cpus_for(2, 2), guest_cpus_for(2, 8), guest_cpus_for(3, 2),
            guest_cpus_for(1, None)] == [2, 1, 2, 1, 1]


def test_a_listing_through_a_hidepid_mount_is_visibility_even_after_an_exit():
    program = parse_text("m1 = mount_proc p1 hidepid=invisible\np2 = spawn p1\np3 = spawn p1\nexit p2\n"
                         "setuid p3 1000\nf1 = open p3 {m1}\ngetdents p3 f1\nreaddir p3 {m1}\n")
    before = ("ok",) * 6
    for index in (6, 7):
        results = before + ("ok:1,self", "ok:1,self")
        got = list(results)
        got[index] = "ok:1,3,self"
        assert compare(program, Trace(results), Trace(tuple(got))).cls == "visibility"


def test_success_where_the_model_refuses_is_permission():
    program = parse_text("m1 = mount_proc p1\nf1 = open p1 {m1}/sys/net/ipv4/conf/lo/forwarding rw=1\nsetuid p1 1000\n"
                         "write p1 f1 1\n")
    before = ("ok", "ok", "ok")
    assert compare(program, Trace(before + ("EPERM",)), Trace(before + ("ok",))).cls == "permission"
    assert compare(program, Trace(before + ("EPERM",)), Trace(before + ("EACCES",))).cls == "errno"


# ---- every op compared -----------------------------------------------------------------------------

TWO_DIVERGENCES = parse_text("""\
m1 = mount_proc p1
f1 = open p1 {m1}/sys/net/ipv6/conf/lo/forwarding rw=1
write p1 f1 1
p2 = spawn p1
exit p2
reap p1 p2
lookup p1 {m1}/{p2}
read p1 f1
""")


def _two_divergences(write_result: str, lookup_result: str) -> tuple[Trace, Trace]:
    from targets.kernels import load_profile
    expected = ModelTarget(load_profile()).run(TWO_DIVERGENCES)
    actual = list(expected.results)
    actual[2], actual[6] = write_result, lookup_result
    return expected, Trace(tuple(actual), kernel="linux-image-6.1.0-50-cloud-amd64-unsigned=6.1.176-1")


def test_every_op_is_compared_and_a_known_issue_does_not_hide_a_later_divergence(tmp_path):
    from fuzz.compare.oracle import compare_all
    from fuzz.record.known import load_known_issues
    from corpus import KNOWN_ISSUES
    expected, actual = _two_divergences("ok:1", "ok:dir")      # the 6.1.176 short write, then a stale pid
    known = load_known_issues(KNOWN_ISSUES)
    comparison = compare_all(TWO_DIVERGENCES, expected, actual, known.explainer(actual.kernel))
    assert [(d.index, d.role) for d in comparison.divergences] == [(2, "known"), (6, "")]
    finding = Finding(TWO_DIVERGENCES, expected, actual, comparison.primary, actual.kernel, others=comparison.others)
    assert finding.signature == "stale lookup /proc/<pid> after reap" and not finding.is_known
    directory, _ = store.record(tmp_path, finding)
    assert store.load(directory).others == comparison.others
    # Without the known issue, the short write comes first and the stale pid is not its consequence.
    alone = compare_all(TWO_DIVERGENCES, expected, actual)
    assert [(d.index, d.role) for d in alone.divergences] == [(2, ""), (6, "")]


def test_a_known_issue_explains_only_its_own_results():
    from fuzz.compare.oracle import compare_all
    from fuzz.record.known import load_known_issues
    from corpus import KNOWN_ISSUES
    known = load_known_issues(KNOWN_ISSUES)
    expected, actual = _two_divergences("EIO", "ENOENT")        # same write, another failure
    comparison = compare_all(TWO_DIVERGENCES, expected, actual, known.explainer(actual.kernel))
    assert [(d.index, d.cls, d.role) for d in comparison.divergences] == [(2, "errno", "")]
    on_612 = Trace(actual.results[:2] + ("ok:1",) + actual.results[3:], kernel="linux-image-6.12.117+deb12")
    comparison = compare_all(TWO_DIVERGENCES, expected, on_612, known.explainer(on_612.kernel))
    assert [d.role for d in comparison.divergences] == [""]    # known on 6.1.176 only


def test_ops_on_what_a_divergence_changed_are_its_consequences():
    from fuzz.compare.oracle import compare_all
    program = parse_text("m1 = mount_proc p1\np2 = spawn p1\nexit p2\nlookup p1 {m1}/{p2}\nreadlink p2 {m1}/self\n"
                         "p3 = spawn p1\nlookup p1 {m1}/{p3}/comm\n")
    expected = ModelTarget(PROFILE).run(program)
    actual = list(expected.results)
    actual[2], actual[3], actual[4], actual[6] = "dead", "ENOENT", "ok:2", "ENOENT"   # exit failed
    comparison = compare_all(program, expected, Trace(tuple(actual)))
    assert [(d.index, d.role) for d in comparison.divergences] == \
        [(2, ""), (3, "consequence"), (4, "consequence"), (6, "")]
    assert comparison.primary.index == 2


class LosingTarget(BuggyTarget):
    """The buggy kernel, but the guest goes away (no kernel report) at the runs named in
    ``lose_at``, counting host faults as QemuTarget does."""
    host_faults = 0

    def __init__(self, profile, lose_at):
        super().__init__(profile)
        self.lose_at, self.runs = set(lose_at), 0

    def run(self, program):
        self.runs += 1
        if self.runs in self.lose_at:
            self.host_faults += 1
            self.restarts += 1
            return Trace((), outcome="lost", title="QEMU exited (signal 9) with no kernel report")
        return super().run(program)


def test_a_lost_guest_is_a_host_fault_and_the_program_runs_again(tmp_path):
    target = LosingTarget(PROFILE, lose_at={1})
    config = WorkerConfig(0, 1, PROFILE, "buggy-kernel", tmp_path / "out", tmp_path / "corpus", float("inf"),
                          max_programs=1)
    stats = run_worker(config, target, lambda s: None, lambda: False, start=StartCorpus((ZOMBIE,), ()))
    [finding] = [store.load(d) for d in store.list_findings(tmp_path / "out")]
    assert finding.divergence.cls == "stale"                  # the re-run's finding, not a crash
    assert (stats.host_faults, stats.findings) == (1, {"stale": 1})


def test_a_guest_lost_twice_on_one_program_is_a_crash(tmp_path):
    target = LosingTarget(PROFILE, lose_at={1, 2})
    config = WorkerConfig(0, 1, PROFILE, "buggy-kernel", tmp_path / "out", tmp_path / "corpus", float("inf"),
                          max_programs=1)
    stats = run_worker(config, target, lambda s: None, lambda: False, start=StartCorpus((ZOMBIE,), ()))
    [finding] = [store.load(d) for d in store.list_findings(tmp_path / "out")]
    assert finding.signature == "crash: guest lost running this program, twice, with no kernel report"
    assert stats.host_faults == 2 and stats.findings == {"crash": 1}
