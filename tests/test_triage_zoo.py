"""Issue #7 end to end on the real kernel: findings that campaigns of several workers and runs
make on a kernel with an injected bug triage to one row for that bug, and the row carries a
minimised program and a standalone C reproducer that reports the bug in the guest and is
silent on the stock kernel."""

import json
import subprocess

import pytest

from fuzz.cli import main
from reference.program import parse
from reference.state_check import split_state_check
from targets.qemu import QemuTarget

RUNS = 2            # campaigns per bug (seeds 1 and 2), each with two workers
PROGRAMS = 40       # per worker: a fixed program sequence, so the findings do not depend on speed
# The leak oracle measures every 10th program: leaks need more programs for several findings;
# leak_pidns (one namespace per program that lists a proc root) is suspect only when several
# of the ten did (bench zoo: first found after 166 programs).
PROGRAMS_FOR = {"leak_dentry": 100, "leak_pidns": 200}


def triage_zoo_findings(tmp_path, bug: str) -> dict:
    for seed in range(1, RUNS + 1):
        code = main(["run", "--zoo", bug, "--workers", "2", "--budget", "5m",
                     "--max-programs", str(PROGRAMS_FOR.get(bug, PROGRAMS)),
                     "--seed", str(seed),
                     "--out", str(tmp_path / bug / f"run{seed}")])
        assert code in (0, 1)
    code = main(["triage", str(tmp_path), "--minimize", "--kernels", "6.1-cloud", "--runs", "2",
                 "--report", str(tmp_path / "report")])
    assert code == 1                                   # the injected bug is new
    return json.loads((tmp_path / "report" / "report.json").read_text())


def c_reproducer_output(source, zoo: str | None) -> tuple[str, str]:
    binary = source.with_suffix("")
    subprocess.run(["gcc", "-static", "-O2", "-Wall", "-o", str(binary), str(source)], check=True)
    with QemuTarget(zoo=zoo, files={"opt/repro": binary.read_bytes()}) as target:
        run = target.run_file("/opt/repro", timeout=60)
    return run.status, run.output


@pytest.mark.kernel
@pytest.mark.parametrize("bug", [
    "hidepid_wrong_mount",
    "leak_dentry",
    *(pytest.param(bug, marks=pytest.mark.slow)
      for bug in ("stale_pid", "stale_tid", "stale_sysctl", "sysctl_wrong_netns", "leak_pidns")),
])
def test_zoo_findings_triage_to_one_minimised_reproducible_row(tmp_path, bug):
    report = triage_zoo_findings(tmp_path, bug)
    new = [row for row in report["bugs"] if row["new"]]
    assert len(new) == 1, [row["signature"] for row in new]
    row = new[0]
    assert row["count"] >= 2 and all(f"+zoo:{bug}" in kernel for kernel in row["kernels"])
    # The minimised program ends with its state check, derived again from the shrunk ops.
    assert row["minimized"] and split_state_check(parse(row["program"])) < 12
    assert any(entry["diverged"] for entry in row["reproducibility"].values())

    source = tmp_path / "report" / row["repro_c"]
    status, output = c_reproducer_output(source, zoo=bug)
    verdict = "LEAKS" if row["class"] == "leak" else "DIVERGES"
    assert (status, output.splitlines()[-1].split(" (")[0]) == ("exit 1", f"procfuzz-repro: {verdict}"), output
    status, output = c_reproducer_output(source, zoo=None)
    assert (status, output.splitlines()[-1]) == ("exit 0", "procfuzz-repro: OK"), output
