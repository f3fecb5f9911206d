"""Reproducibility across kernels: counting runs with the bug's signature, verdicts, and the
`reproduce` command's reproducibility.json (fake kernels: a model with a planted bug)."""

import json
from contextlib import contextmanager

import pytest

from fuzz.cli import main
from fuzz.execute.kernels import KernelSpec
from fuzz.record.signature import signature as signature_text
from fuzz.triage.reproduce import reproducibility, verdict
from fuzz.triage.rerun import Goal
from reference.program import parse_text
from test_minimize import CORE, MODEL, BUGGY, CountingKernel, FakeKernel, _finding_dir, model_for, signature

PROGRAM = parse_text(CORE)


Kernel = FakeKernel


def test_counts_per_kernel():
    flaky = CountingKernel(flaky_every=2)
    counts = reproducibility(PROGRAM, signature(PROGRAM), [Kernel("buggy", BUGGY.run), Kernel("fixed", MODEL.run),
                                                           Kernel("flaky", flaky.run)],
                             runs=4, model_for=model_for)
    assert counts == {"buggy": (4, 4), "fixed": (0, 4), "flaky": (2, 4)}


def test_other_signature_is_not_counted():
    counts = reproducibility(PROGRAM, Goal("missing readdir /proc"), [Kernel("buggy", BUGGY.run)], runs=2,
                             model_for=model_for)
    assert counts == {"buggy": (0, 2)}


def test_verdicts():
    assert verdict(5, 5) == "reliable (5 of 5)"
    assert verdict(2, 5) == "flaky (2 of 5)"
    assert verdict(0, 5) == "not reproducible (0 of 5)"


def test_cli_writes_reproducibility_json(tmp_path, capsys):
    booted = []

    @contextmanager
    def fake_kernels(spec):
        booted.append((spec.pin, spec.zoo))
        yield Kernel(f"{spec.pin} +zoo:{spec.zoo}", BUGGY.run if spec.pin == "6.1-cloud" else MODEL.run)
    directory, _ = _finding_dir(tmp_path, PROGRAM)
    code = main(["reproduce", str(directory), "--kernels", "6.1-cloud,6.12-cloud", "--runs", "3",
                 "--zoo", "stale_pid"], open_target=fake_kernels, model_for=model_for)
    assert code == 1
    assert booted == [("6.1-cloud", "stale_pid"), ("6.12-cloud", "stale_pid")]
    assert json.loads((directory / "reproducibility.json").read_text()) == {
        "6.1-cloud +zoo:stale_pid": {"diverged": 3, "runs": 3}, "6.12-cloud +zoo:stale_pid": {"diverged": 0, "runs": 3}}
    out = capsys.readouterr().out.splitlines()
    assert [line.split() for line in out[1:]] == [["reliable", "(3", "of", "3)", "6.1-cloud", "+zoo:stale_pid"],
                                                  ["not", "reproducible", "(0", "of", "3)", "6.12-cloud", "+zoo:stale_pid"]]


def test_cli_prefers_the_minimised_program(tmp_path, capsys):
    @contextmanager
    def fake_kernels(spec):
        yield Kernel(spec.pin, BUGGY.run)
    directory, _ = _finding_dir(tmp_path, parse_text(CORE + "readdir p1 {m1}\n"))
    (directory / "minimized.prog").write_text(CORE)
    assert main(["reproduce", str(directory), "--kernels", "6.1-cloud", "--runs", "1"],
                open_target=fake_kernels, model_for=model_for) == 1
    assert "(minimised program, 5 ops)" in capsys.readouterr().out


def test_cli_needs_kernels(tmp_path, capsys):
    directory, _ = _finding_dir(tmp_path, PROGRAM)
    assert main(["reproduce", str(directory), "--kernels", ",", "--runs", "2"]) == 2
    assert "at least one kernel" in capsys.readouterr().err


@pytest.mark.kernel
def test_zoo_bug_reproduces_at_every_run():
    from fuzz.compare.oracle import compare
    from reference.trace import Trace
    from targets.kernels import load_profile
    from targets.model_target import ModelTarget
    from test_minimize import STALE_PID_CORE
    program = parse_text(STALE_PID_CORE)
    expected = ModelTarget(load_profile("6.1-cloud")).run(program)
    stale = Trace(expected.results[:-1] + ("ok:dir",))      # what tests/test_zoo.py shows
    wanted = Goal(signature_text(program, expected.results, compare(program, expected, stale)))
    counts = reproducibility(program, wanted, [KernelSpec("6.1-cloud", "stale_pid")], runs=3)
    assert list(counts.values()) == [(3, 3)]
    assert next(iter(counts)).endswith(" +zoo:stale_pid")
