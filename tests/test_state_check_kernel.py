"""The state check on the real kernels: a program that removes a task and never looks at it again
agrees with the model on both stock kernels, check included; with the zoo's stale_pid bug the
check (and only the check) shows the stale /proc/<pid>, under the bug key a generated op would
give, and the C reproducer runs the check's ops and reports it."""

import shutil

import pytest

from fuzz.compare.oracle import STATE_CHECK, compare, compare_all
from fuzz.record.signature import bug_key
from fuzz.triage.export_c import export_c
from reference.state_check import with_state_check
from targets.kernels import load_profile
from targets.model_target import ModelTarget
from test_export_c import build
from test_state_check import UNSEEN

CHECKED = with_state_check(UNSEEN)


@pytest.mark.kernel
@pytest.mark.parametrize("fixture, pin", [("qemu_target", None), ("qemu_target_612", "6.12-cloud")])
def test_the_check_agrees_with_the_model_on_stock_kernels(fixture, pin, request):
    target = request.getfixturevalue(fixture)
    expected = ModelTarget(load_profile(pin)).run(CHECKED)
    actual = target.run(CHECKED)
    assert len(actual.results) == len(CHECKED) > len(UNSEEN) + 10     # the check ran, op by op
    assert compare_all(CHECKED, expected, actual).divergences == ()


@pytest.mark.kernel
@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_the_check_shows_the_zoo_stale_pid_and_its_reproducer_runs_the_check(tmp_path):
    from targets.qemu import QemuTarget
    expected = ModelTarget(load_profile()).run(CHECKED)
    source = export_c(CHECKED, expected, kernel="test-kernel", summary="state check")
    binary = build(source, tmp_path)
    with QemuTarget(zoo="stale_pid", files={"opt/repro": binary.read_bytes()}) as target:
        unchecked = target.run(UNSEEN)
        actual = target.run(CHECKED)
        repro = target.run_file("/opt/repro")
    assert compare(UNSEEN, ModelTarget(load_profile()).run(UNSEEN), unchecked) is None
    found = compare(CHECKED, expected, actual)
    assert (found.cls, found.detail) == ("stale", STATE_CHECK) and found.index >= len(UNSEEN)
    assert bug_key(CHECKED, expected.results, found) == "stale /proc/<pid> after exit"
    lines = repro.output.splitlines()
    assert repro.status == "exit 1" and lines[-1].startswith("procfuzz-repro: DIVERGES"), repro.output
    assert f"procfuzz-repro: op {found.index} `{found.op}`: expected {found.expected}, got {found.actual}" in lines
