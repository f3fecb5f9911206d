"""The nightly pipeline's scripts, end to end as the workflow runs them: two shards of one kernel
(ci/nightly-worker.sh), then merge + triage (ci/nightly-triage.sh) into the CI reports."""

import json
import os
import subprocess
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
import yaml

from test_report_to import TOKEN, service  # noqa: F401 - a fixture

CI = Path(__file__).resolve().parent.parent / "ci"
KERNEL = "6.1-cloud"


def test_workflow_runs_only_ci_scripts_over_a_kernel_shard_matrix():
    workflow = yaml.safe_load((CI / "nightly.yml").read_text())
    assert set(workflow[True]) == {"schedule", "workflow_dispatch"}       # YAML reads the key `on` as True
    commands = [step["run"] for job in workflow["jobs"].values() for step in job["steps"] if "run" in step]
    assert commands and all(command.startswith("bash ci/") for command in commands)
    for command in commands:
        assert (CI.parent / command.split()[1]).is_file()
    matrix = workflow["jobs"]["fuzz"]["strategy"]["matrix"]
    assert len(matrix["kernel"]) >= 2 and matrix["shard"] == list(range(int(workflow["env"]["SHARDS"])))
    uses = {step.get("uses", "").split("@")[0] for step in workflow["jobs"]["triage"]["steps"]}
    assert {"actions/download-artifact", "github/codeql-action/upload-sarif", "actions/upload-artifact"} <= uses


def test_worker_script_rejects_bad_usage(tmp_path):
    assert subprocess.run(["bash", str(CI / "nightly-worker.sh"), KERNEL], capture_output=True).returncode == 2
    bad_shard = subprocess.run(["bash", str(CI / "nightly-worker.sh"), KERNEL, "2/2", "1m", str(tmp_path)],
                               capture_output=True, text=True)
    assert bad_shard.returncode == 2 and "0-based" in bad_shard.stderr


@pytest.mark.kernel
def test_two_shards_then_triage_give_the_ci_reports(tmp_path, service):
    env = {**os.environ, "NIGHTLY_SEED": "20261125", "NIGHTLY_RUN_ARGS": "--max-programs 6 --leak-every 0",
           "PROCFUZZ_URL": service.url, "PROCFUZZ_TOKEN": TOKEN}
    workers = [subprocess.Popen(["bash", str(CI / "nightly-worker.sh"), KERNEL, f"{shard}/2", "10m",
                                 str(tmp_path / "in")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
               for shard in (0, 1)]
    for worker in workers:
        output = worker.communicate(timeout=900)[0].decode(errors="replace")
        assert worker.returncode == 0, output[-2000:]
    for shard in (0, 1):
        summary = json.loads((tmp_path / "in" / KERNEL / f"shard-{shard}-of-2" / "summary.json").read_text())
        assert (summary["shard"], summary["seed"], summary["programs"]) == (f"{shard}/2", 20261125, 6)
    # the shards reported live to the service (PROCFUZZ_URL), by name
    assert [(w["name"], w["programs"]) for w in service.get("/api/workers")] == \
        [(f"nightly-{KERNEL}-shard-{shard}-of-2", 6) for shard in (0, 1)]

    triage = subprocess.run(["bash", str(CI / "nightly-triage.sh"), str(tmp_path / "in"), str(tmp_path / "report")],
                            capture_output=True, text=True, timeout=1800)
    assert triage.returncode in (0, 1), triage.stdout[-2000:] + triage.stderr[-2000:]
    report = tmp_path / "report"
    merged = json.loads((report / "merged" / "summary.json").read_text())
    assert sorted(run["shard"] for run in merged["runs"]) == ["0/2", "1/2"] and merged["programs"] == 12
    json.loads((report / "report.json").read_text())
    sarif = json.loads((report / "report.sarif").read_text())
    assert sarif["version"] == "2.1.0" and sarif["runs"]
    assert ElementTree.parse(report / "junit.xml").getroot().tag in ("testsuites", "testsuite")
    assert "<html" in (report / "report.html").read_text().lower()
    assert (report / "report.md").read_text().strip()
