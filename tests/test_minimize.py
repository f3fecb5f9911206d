"""Minimisation: ddmin over ops and argument simplification against fake kernels (a model with a
planted bug, deterministic or flaky), the finding follow-up (fake kernels passed in), and (-m kernel) a padded zoo program on a real
kernel with the stale_pid bug injected."""

import json
from contextlib import contextmanager

import pytest

from fuzz.record import store
from fuzz.record.finding import Finding
from fuzz.cli import main
from fuzz.execute.kernels import KernelSpec
from fuzz.record.signature import signature as signature_text
from fuzz.triage.follow_up import minimize_finding
from fuzz.triage.minimize import NotReproduced, _simpler_ops, minimize
from fuzz.triage.rerun import Goal, divergence_with, kernel_runner
from fuzz.compare.oracle import compare
from reference.program import parse_text, validate
from targets.model_target import ModelTarget
from test_engine import BuggyTarget
from fuzz.compare.leaks import Leak
from test_model import PROFILE

# The planted bug of BuggyTarget: reaping does not release the child, so /proc keeps it (stale).
CORE = """\
m1 = mount_proc p1
p2 = spawn p1
exit p2
reap p1 p2
lookup p1 {m1}/{p2}
"""


def padded(core: str, blocks: int) -> str:
    """The core ops of a bug with unrelated blocks of ops (fresh processes, threads, fds, all
    alive, observed through m1) before each core op but the first, and one block after the last."""
    lines = core.splitlines()
    out = [lines[0]]
    for index, line in enumerate(lines[1:] + [""]):
        for block in range(blocks):
            n = 3 + index * blocks + block
            out += [f"p{n} = spawn p1", f"t{n} = spawn_thread p{n}", f"lookup p1 {{m1}}/{{p{n}}}/status",
                    f"readdir p1 {{m1}}/{{p{n}}}/task", f"f{n} = open p1 {{m1}}/{{p{n}}}/comm", f"read p1 f{n}",
                    f"lookup p{n} {{m1}}/{{t{n}}}", f"readlink p{n} {{m1}}/self"]
        out.append(line)
    return "\n".join(out).strip() + "\n"


MODEL = ModelTarget(PROFILE)
BUGGY = BuggyTarget(PROFILE)


def signature(program, kernel=BUGGY) -> Goal:
    expected = MODEL.run(program)
    actual = kernel.run(program)
    return Goal(signature_text(program, expected.results, compare(program, expected, actual)))


class CountingKernel:
    """The buggy kernel, counting runs; with flaky_every=N only every Nth run shows the bug."""

    def __init__(self, flaky_every: int = 1):
        self.runs = 0
        self.flaky_every = flaky_every

    def run(self, program):
        self.runs += 1
        return (BUGGY if self.runs % self.flaky_every == 0 else MODEL).run(program)


def reproduces(ops, expected_signature):
    program = validate(ops)
    return divergence_with(expected_signature, program, MODEL.run(program), BUGGY.run(program))[0] is not None


def test_padded_program_shrinks_to_the_bug_with_the_same_signature():
    program = parse_text(padded(CORE, 2))
    assert len(program) > 80
    wanted = signature(program)
    kernel = CountingKernel()
    result = minimize(program, wanted, kernel.run, MODEL, retries=1)
    assert result.program.to_text() == CORE
    assert signature(result.program) == wanted
    assert result.kernel_runs == kernel.runs           # every run counted, none twice (cache)
    assert result.steps > 0


def test_result_is_one_minimal():
    program = parse_text(padded(CORE, 1))
    wanted = signature(program)
    ops = minimize(program, wanted, CountingKernel().run, MODEL, retries=1).program.ops
    for index in range(len(ops) - 1):
        smaller = ops[:index] + ops[index + 1:]
        try:
            assert not reproduces(smaller, wanted)
        except ValueError:
            pass                                        # not even a valid program


def test_options_go_back_to_defaults_and_handles_become_dense():
    program = parse_text("""\
m3 = mount_proc p1 subset=pid
p7 = spawn p1
f2 = open p1 {m3}/{p7}/comm rw=1
exit p7
reap p1 p7
lookup p1 {m3}/{p7}
""")
    result = minimize(program, signature(program), CountingKernel().run, MODEL, retries=1)
    assert result.program.to_text() == CORE


def test_simpler_variants_of_one_op():
    op = parse_text("m1 = mount_proc p1\np2 = spawn p1\nf1 = open p2 {m1}/{p2}/task/{p2}/comm rw=1\n").ops[2]
    variants = {variant.to_text() for variant in _simpler_ops(op)}
    assert variants == {"f1 = open p2 {m1}/{p2}/task/{p2}/comm", "f1 = open p2 {m1}/{p2}/task/{p2} rw=1",
                        "f1 = open p2 {m1}/{p2}/task/comm rw=1", "f1 = open p2 {m1}/{p2}/{p2}/comm rw=1",
                        "f1 = open p2 {m1}/task/{p2}/comm rw=1"}


def test_flaky_bug_is_minimised_with_retries():
    program = parse_text(padded(CORE, 1))
    wanted = signature(program)
    kernel = CountingKernel(flaky_every=2)
    result = minimize(program, wanted, kernel.run, MODEL, retries=3)
    assert result.program.to_text() == CORE
    assert result.kernel_runs == kernel.runs


def test_flaky_bug_without_retries_does_not_reproduce():
    program = parse_text(CORE)
    with pytest.raises(NotReproduced, match="does not reproduce") as caught:
        minimize(program, signature(program), CountingKernel(flaky_every=5).run, MODEL, retries=2)
    assert caught.value.kernel_runs == 2


def test_another_signature_does_not_count():
    program = parse_text(CORE)
    with pytest.raises(NotReproduced) as caught:
        minimize(program, Goal("missing readdir /proc"), BUGGY.run, MODEL, retries=1)
    assert f"runs showed: {signature(program).signature}" in str(caught.value)


class FakeKernel:
    """A started fake target: a label and a run (a planted bug, or none)."""
    restarts, host_faults, measure_leaks = 0, 0, False

    def __init__(self, label: str, run):
        self.label, self.run = label, run

    def close(self) -> None:
        pass


@contextmanager
def buggy_kernel(spec):
    yield FakeKernel("buggy-kernel", BUGGY.run)


def model_for(kernel):
    return MODEL


def _finding_dir(tmp_path, program):
    expected, actual = MODEL.run(program), BUGGY.run(program)
    finding = Finding(program, expected, actual, compare(program, expected, actual), "buggy-kernel")
    return store.record(tmp_path, finding)[0], finding


def test_minimizing_a_finding_writes_minimized_program_and_summary(tmp_path):
    directory, finding = _finding_dir(tmp_path, parse_text(padded(CORE, 1)))
    result = minimize_finding(directory, KernelSpec(), 1, buggy_kernel, model_for)
    assert result.program.to_text() == CORE
    assert (directory / "minimized.prog").read_text() == CORE
    summary = json.loads((directory / "minimize.json").read_text())
    assert summary["minimized_ops"] == CORE.splitlines()
    assert len(summary["original_ops"]) == len(finding.program)
    assert summary["signature"] == finding.signature and summary["kernel_runs"] == result.kernel_runs > 0
    assert summary["kernel"] == "buggy-kernel"


def test_a_finding_that_does_not_reproduce_is_not_minimised(tmp_path):
    directory, _ = _finding_dir(tmp_path, parse_text(CORE))

    @contextmanager
    def fixed_kernel(spec):
        yield FakeKernel("fixed-kernel", MODEL.run)
    with pytest.raises(NotReproduced, match="does not reproduce"):
        minimize_finding(directory, KernelSpec(), 3, fixed_kernel, model_for)
    assert not (directory / "minimized.prog").exists()


def test_cli_bad_finding_is_exit_2(tmp_path, capsys):
    assert main(["minimize", str(tmp_path)]) == 2
    assert "not a readable finding" in capsys.readouterr().err


# ---- on a real kernel ------------------------------------------------------------------------------

# The stale_pid zoo bug (tests/test_zoo.py): a reaped pid's cached /proc/<pid> stays.
STALE_PID_CORE = """\
m1 = mount_proc p1
p2 = spawn p1
lookup p1 {m1}/{p2}
exit p2
reap p1 p2
lookup p1 {m1}/{p2}
"""


@pytest.mark.kernel
def test_padded_zoo_program_minimises_on_the_kernel():
    from targets.kernels import load_profile
    from targets.qemu import QemuTarget
    program = parse_text(padded(STALE_PID_CORE, 1))
    model = ModelTarget(load_profile())
    expected = model.run(program)
    with QemuTarget(zoo="stale_pid") as target:
        actual = target.run(program)
        divergence = compare(program, expected, actual)
        assert divergence is not None and divergence.cls == "stale", divergence
        wanted = Goal(signature_text(program, expected.results, divergence))
        result = minimize(program, wanted, target.run, model, retries=2)
        assert result.program.to_text() == STALE_PID_CORE
        minimal = result.program
        assert divergence_with(wanted, minimal, model.run(minimal), target.run(minimal))[0] is not None
        for index in range(len(minimal) - 1):       # 1-minimal: no single op can go
            try:
                smaller = validate(minimal.ops[:index] + minimal.ops[index + 1:])
            except ValueError:
                continue
            assert divergence_with(wanted, smaller, model.run(smaller), target.run(smaller))[0] is None


def test_cli_refuses_findings_a_rerun_cannot_show(tmp_path, capsys):
    from fuzz.compare.oracle import Divergence
    from reference.trace import Trace
    program = parse_text(CORE)
    ours = Finding(program, MODEL.run(program), Trace(()), Divergence("model-bug", None, "", "", "", "boom"),
                            "buggy-kernel")
    directory, _ = store.record(tmp_path, ours)
    assert main(["minimize", str(directory)]) == 2
    assert "'model-bug' finding is procfuzz's own failure" in capsys.readouterr().err


class LeakingKernel:
    """The model, with slab counts: every run of a program that looks up a task directory in a
    second proc mount pins one dentry for good (like the zoo's leak_dentry); other caches move
    by noise.  Counts runs; each needs measure_leaks set, as QemuTarget's slab counts do."""

    def __init__(self):
        self.runs, self.pinned, self.measure_leaks = 0, 0, False

    def run(self, program):
        from reference.trace import Trace
        assert self.measure_leaks
        self.runs += 1
        mounts = [op.ret for op in program.ops if op.kind == "mount_proc"]
        if any(op.kind == "lookup" and op.arg("path").startswith(("{m2}/{p", "{m3}/{p")) and len(mounts) > 1
               for op in program.ops):
            self.pinned += 1
        trace = MODEL.run(program)
        counts = {"dentry": 1000 + 3 * self.pinned, "pid": 50 + self.runs % 2, "proc_inode_cache": 700 + self.pinned}
        return Trace(trace.results, extra={"slab": counts})


LEAKY = """\
m1 = mount_proc p1
p2 = spawn p1
m2 = mount_proc p1 hidepid=invisible
lookup p1 {m1}/{p2}/status
readdir p1 {m2}
lookup p1 {m2}/{p2}
exit p2
reap p1 p2
lookup p1 {m1}/{p2}
"""


def test_a_leak_shrinks_to_the_ops_that_leak_and_its_signature_stays():
    """A leak has no divergent op: every op may go, the last one too, and each candidate costs
    1 + RERUNS measured runs (the leak oracle's re-check)."""
    from fuzz.compare.leaks import RERUNS
    kernel = LeakingKernel()
    dentry = Goal("leak dentry", Leak((("dentry", ()),)))
    result = minimize(parse_text(LEAKY), dentry, kernel_runner(kernel, dentry), MODEL, retries=1)
    assert result.program.to_text() == "m1 = mount_proc p1\nm2 = mount_proc p1\nlookup p1 {m2}/{p1}\n"
    assert result.kernel_runs == kernel.runs and kernel.runs % (1 + RERUNS) == 0
    with pytest.raises(NotReproduced):
        both = Goal("leak dentry, pid", Leak((("dentry", ()), ("pid", ()))))
        minimize(parse_text(LEAKY), both, kernel_runner(kernel, both), MODEL, retries=1)
    # A finding whose campaign saw fewer caches leak (a count dipped) is the same leak.
    assert minimize(parse_text(LEAKY), dentry, kernel_runner(kernel, dentry), MODEL, retries=1).program \
        == result.program


def test_reproducibility_of_a_leak_counts_leak_rechecks():
    from fuzz.triage.reproduce import reproducibility
    kernel = LeakingKernel()
    kernel.label = "leaky"
    dentry = Goal("leak dentry", Leak((("dentry", ()),)))
    assert reproducibility(parse_text(LEAKY), dentry, [kernel], 2, model_for=model_for) == {"leaky": (2, 2)}
    assert reproducibility(parse_text(CORE), dentry, [kernel], 2, model_for=model_for) == {"leaky": (0, 2)}


def test_minimisation_boots_the_kernel_and_zoo_bug_the_finding_ran_on(tmp_path):
    from fuzz.triage.follow_up import as_recorded
    booted = []

    @contextmanager
    def recording_kernel(spec):
        booted.append((spec.pin, spec.zoo))
        yield FakeKernel("buggy-kernel", BUGGY.run)
    program = parse_text(CORE)
    expected, actual = MODEL.run(program), BUGGY.run(program)
    label = "linux-image-6.12.117+deb12-cloud-amd64-unsigned=6.12.117-1~deb12u1 +zoo:stale_pid"
    finding = Finding(program, expected, actual, compare(program, expected, actual), label)
    directory, _ = store.record(tmp_path, finding)
    for asked in (KernelSpec(), KernelSpec("6.1-cloud", "stale_tid")):
        minimize_finding(directory, as_recorded(finding, asked), 1, recording_kernel, model_for)
    assert booted == [("6.12-cloud", "stale_pid"), ("6.1-cloud", "stale_tid")]


def test_cli_minimize_prints_the_program_and_exits_by_outcome(tmp_path, capsys):
    directory, _ = _finding_dir(tmp_path, parse_text(padded(CORE, 1)))
    assert main(["minimize", str(directory), "--retries", "1"], open_target=buggy_kernel, model_for=model_for) == 0
    assert capsys.readouterr().out.endswith(CORE)

    @contextmanager
    def fixed_kernel(spec):
        yield FakeKernel("fixed-kernel", MODEL.run)
    fixed, _ = _finding_dir(tmp_path / "fixed", parse_text(CORE))
    assert main(["minimize", str(fixed)], open_target=fixed_kernel, model_for=model_for) == 1
    assert "does not reproduce" in capsys.readouterr().out


def test_cli_minimize_says_which_kernel_it_boots(tmp_path, capsys):
    program = parse_text(CORE)
    expected, actual = MODEL.run(program), BUGGY.run(program)
    label = "linux-image-6.12.117+deb12-cloud-amd64-unsigned=6.12.117-1~deb12u1 +zoo:stale_pid"
    directory, _ = store.record(tmp_path, Finding(program, expected, actual, compare(program, expected, actual), label))
    assert main(["minimize", str(directory), "--retries", "1"], open_target=buggy_kernel, model_for=model_for) == 0
    assert "# as recorded: kernel 6.12-cloud, zoo bug stale_pid" in capsys.readouterr().out
