"""Kernel coverage: `procfuzz coverage` over a fake kernel (what it prints and writes), then the
probe on the real default kernel: the functions a program must reach, and the same set twice."""

import json
from contextlib import contextmanager

import pytest

from reference.program import parse_text
from reference.trace import Trace
from targets.coverage import EXACT, FEEDBACK
from targets.coverage.lists import load_probe_list

from fuzz.cli import main

TASK_LOOKUP = parse_text("m1 = mount_proc p1\np2 = spawn p1\nt1 = spawn_thread p2\nlookup p1 {m1}/{p2}/task/{t1}\n")
SYSCTL_READ = parse_text("m1 = mount_proc p1\nf1 = open p1 {m1}/sys/net/ipv4/ip_forward\nread p1 f1\n")


class CoverageKernel:
    """A fake kernel with the probe: a lookup reaches proc_pid_lookup, a read proc_sys_read."""
    label = "fake-kernel"

    def __init__(self):
        self.specs = []

    def run(self, program):
        kinds = {op.kind for op in program.ops}
        kcov = {"proc_root_lookup": 2, "not_a_listed_function": 5}
        if "lookup" in kinds:
            kcov["proc_pid_lookup"] = 3
        if "read" in kinds:
            kcov["proc_sys_read"] = 1
        return Trace(("ok",) * len(program), kernel=self.label, extra={"kcov": kcov})

    @contextmanager
    def open(self, spec):
        self.specs.append(spec)
        yield self


def test_coverage_command_prints_and_writes_what_the_corpus_reaches(tmp_path, capsys):
    corpus = tmp_path / "run" / "corpus"
    corpus.mkdir(parents=True)
    (corpus / "a.prog").write_text(TASK_LOOKUP.to_text())
    (corpus / "b.prog").write_text(SYSCTL_READ.to_text())
    kernel = CoverageKernel()
    assert main(["coverage", str(corpus), "--kernel", "6.1-cloud"], open_target=kernel.open) == 0
    assert [spec.coverage for spec in kernel.specs] == [EXACT]
    out = capsys.readouterr().out
    probed = len(load_probe_list("6.1-cloud").names)
    assert out.startswith(f"kernel coverage on fake-kernel: 3 of {probed} probed functions reached")
    assert "fs/proc/base.c" in out and "never reached" in out
    unreached = out.split("never reached")[1]
    assert "proc_task_lookup" in unreached and "proc_pid_lookup" not in unreached
    report = tmp_path / "run" / "report"
    page = (report / "kcov-6.1-cloud.html").read_text()
    assert "<code>proc_pid_lookup</code>" in page and "Content-Security-Policy" in page
    doc = json.loads((report / "kcov-6.1-cloud.json").read_text())
    assert doc["reached"] == 3 and doc["runs"] == 2
    assert {f["function"]: f["hits"] for f in doc["functions"]}["proc_root_lookup"] == 4
    assert "fs/proc/base.c proc_task_lookup" in doc["unreached"]


def test_coverage_command_without_a_list_is_exit_2(capsys):
    assert main(["coverage", "--kernel", "nosuch=1"], open_target=CoverageKernel().open) == 2
    assert "no coverage list" in capsys.readouterr().err


# ---- on the real default kernel --------------------------------------------------------------------

@pytest.fixture(scope="module")
def covered_target():
    """The probe as a campaign's feedback loads it."""
    from targets.qemu import QemuTarget
    with QemuTarget(coverage=FEEDBACK) as target:
        yield target


@pytest.fixture(scope="module")
def exact_target():
    """The probe as `procfuzz coverage` loads it."""
    from targets.qemu import QemuTarget
    with QemuTarget(coverage=EXACT) as target:
        yield target


@pytest.mark.kernel
def test_a_task_directory_lookup_reaches_the_task_lookup_functions(covered_target):
    assert covered_target.coverage_missing == ()
    trace = covered_target.run(TASK_LOOKUP)
    assert trace.results[-1] == "ok:dir"
    assert {"proc_root_lookup", "proc_pid_lookup", "proc_tgid_base_lookup", "proc_task_lookup",
            "proc_task_instantiate"} <= set(trace.extra["kcov"])


@pytest.mark.kernel
def test_a_sysctl_read_reaches_the_sysctl_handlers(covered_target):
    trace = covered_target.run(SYSCTL_READ)
    assert trace.results[-1].startswith("ok:")
    assert {"proc_sys_lookup", "proc_sys_open", "proc_sys_read", "proc_sys_call_handler"} <= set(trace.extra["kcov"])


TEARDOWN = {"cleanup_net", "sysctl_net_exit", "unregister_net_sysctl_table"}


@pytest.mark.kernel
def test_the_same_program_reaches_the_same_functions(covered_target):
    """The sandbox's network namespace is torn down in a workqueue after the program: the
    feedback probe counts only the program's own tasks, so none of it lands in the next one."""
    runs = [set(covered_target.run(program).extra["kcov"]) for program in (TASK_LOOKUP, SYSCTL_READ, TASK_LOOKUP)]
    assert runs[0] == runs[2]
    assert not TEARDOWN & (runs[0] | runs[1])


@pytest.mark.kernel
def test_the_exact_probe_counts_the_teardown_for_its_own_program(exact_target):
    """`procfuzz coverage` waits for the teardown: its calls count for the program that caused it."""
    runs = [set(exact_target.run(program).extra["kcov"]) for program in (TASK_LOOKUP, SYSCTL_READ, TASK_LOOKUP)]
    assert runs[0] == runs[2]
    assert TEARDOWN <= runs[0]
