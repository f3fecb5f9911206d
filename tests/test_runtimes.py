"""Runtimes: Kubernetes manifests (validated against the API schemas), the local runtime, and
the docker runtime for real: two containers give the same findings as two local workers."""

import json
import os
import subprocess
import time
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from fuzz.record import store
from fuzz.cli import main
from fuzz.campaign.shards import WHOLE, Shard
from fuzz.errors import EXIT_FOUND, EXIT_OK, EXIT_TOOL
from fuzz.scale.docker_runtime import DockerRuntime
from fuzz.scale.kubernetes_runtime import KubernetesRuntime
from fuzz.scale.runtimes import REPO, WORKER_UID, Job, LocalRuntime, RuntimeUnavailable, combined_exit
from fuzz.record.programs import load_directory

K8S_VERSIONS = ("1.29.0", "1.33.0", "1.37.0")     # backoffLimitPerIndex and FailIndex: 1.29 on


def campaign(shards: int, seed=3, workers=1, **fields) -> list[Job]:
    return [Job(shard, seed, workers=workers, **fields) for shard in WHOLE.split(shards)]


def content(out: Path) -> tuple[set, set]:
    """What a campaign found, independent of which worker found it first: (program id,
    signature) of every finding, and the corpus program ids."""
    found = {(d.name, store.load(d).signature) for d in store.list_findings(out)}
    return found, {program.id for _, program in load_directory(out / "corpus")[0]}


# ---- kubernetes (no cluster needed) --------------------------------------------------------------

@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_indexed_job_manifest_is_valid(version):
    jobs = campaign(3, seed=9, budget=1800, kernel="6.12-cloud", max_programs=100, extra_args=("--leak-every", "0"))
    for doc in KubernetesRuntime(Path("unused"), image="registry.example/procfuzz:1").manifests(jobs):
        kubernetes_validate.validate(doc, version, strict=True)


def test_indexed_job_maps_the_completion_index_to_the_shard():
    claim, job = KubernetesRuntime(Path("unused"), claim="nightly").manifests(campaign(4, seed=9, budget=60))
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 4, 4)
    worker = spec["template"]["spec"]["containers"][0]
    args = worker["args"]
    assert args[:3] == ["run", "--shard", "$(JOB_COMPLETION_INDEX)/4"] and "--seed" in args
    assert [e["name"] for e in worker["env"]] == ["JOB_COMPLETION_INDEX"]      # $(...) expands only declared vars
    assert args[args.index("--out") + 1] == f"/out/{job['metadata']['name']}"
    assert worker["volumeMounts"] == [{"name": "out", "mountPath": "/out"}]
    assert spec["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"] == "nightly"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert spec["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_an_incomplete_or_mixed_shard_set_is_not_one_indexed_job():
    runtime = KubernetesRuntime(Path("unused"))
    with pytest.raises(ValueError, match="all N shards"):
        runtime.manifests(campaign(3)[:2])
    with pytest.raises(ValueError, match="all N shards"):
        runtime.manifests([Job(Shard(0, 2), 1), Job(Shard(1, 2), 2)])


def test_dry_run_prints_the_valid_manifests(capsys):
    assert main(["run", "--runtime", "kubernetes", "--dry-run", "--workers", "2", "--seed", "4",
                 "--budget", "5m", "--image", "procfuzz-worker:1"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [d["kind"] for d in docs] == ["PersistentVolumeClaim", "Job"]
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)


def test_kubernetes_without_a_cluster_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert main(["run", "--runtime", "kubernetes", "--workers", "2", "--out", str(tmp_path / "out")]) == 2
    assert "no Kubernetes cluster configured" in capsys.readouterr().err


# ---- cli and docker errors (no engine needed) ----------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--runtime", "docker", "--shard", "0/2"], "starts every shard itself"),
    (["--runtime", "docker", "--dry-run"], "use it with --runtime kubernetes"),
    (["--runtime", "docker", "--corpus", "c"], "containers do not see"),
    (["--runtime", "docker", "--workers", "0"], "at least 1"),
])
def test_runtime_options_are_checked(tmp_path, capsys, args, message):
    assert main(["run", "--out", str(tmp_path), *args]) == 2
    assert message in capsys.readouterr().err


def test_docker_without_an_engine_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such.sock")
    with pytest.raises(RuntimeUnavailable, match="no Docker engine reachable"):
        DockerRuntime(tmp_path).prepare()


def test_combined_exit_code():
    assert combined_exit([EXIT_OK, EXIT_OK]) == EXIT_OK
    assert combined_exit([EXIT_OK, EXIT_FOUND]) == EXIT_FOUND
    assert combined_exit([EXIT_FOUND, EXIT_TOOL]) == combined_exit([EXIT_OK, None]) == EXIT_TOOL


# ---- local and docker, for real ------------------------------------------------------------------

@pytest.mark.kernel
def test_local_runtime_runs_a_shard_job_and_collects_it(tmp_path):
    runtime = LocalRuntime(tmp_path / "work")
    runtime.prepare()
    # bounded by programs, not time: a short budget can run out while the VM boots on a busy machine
    handles = runtime.submit([Job(Shard(1, 2), seed=2, budget=600, workers=1, max_programs=3)])
    assert runtime.wait(handles, time.monotonic() + 600) in ([EXIT_OK], [EXIT_FOUND])
    assert runtime.collect(handles, tmp_path / "out") == [tmp_path / "work" / "shard-1-of-2"]
    shard = json.loads((tmp_path / "work" / "shard-1-of-2" / "summary.json").read_text())
    assert (shard["shard"], shard["programs"], shard["seed"]) == ("1/2", 3, 2)
    merged = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert merged["runs"] == [shard] and merged["programs"] == 3


@pytest.fixture(scope="module")
def docker_engine():
    """Start dockerd when none answers (as ci/setup.sh does); skip only where Docker cannot run."""
    started = subprocess.run(["bash", str(REPO / "ci" / "start-dockerd.sh")], capture_output=True, text=True)
    if started.returncode != 0:
        pytest.skip(f"Docker cannot run here: {started.stderr.strip()}")


@pytest.mark.kernel
@pytest.mark.docker
def test_two_containers_find_what_two_local_workers_find(tmp_path, docker_engine):
    seed, programs = 11, 45          # past the 33 seed and regression programs: a generated corpus
    bound = ("--seed", str(seed), "--max-programs", str(programs), "--leak-every", "0", "--budget", "10m")
    local = LocalRuntime(tmp_path / "local")
    local.prepare()
    handles = local.submit([Job(WHOLE, seed, budget=600, workers=2, max_programs=programs,
                                extra_args=("--leak-every", "0"))])
    assert local.wait(handles, time.monotonic() + 900) in ([EXIT_OK], [EXIT_FOUND])
    local.collect(handles, tmp_path / "local")

    assert main(["run", "--runtime", "docker", "--workers", "2", *bound, "--out", str(tmp_path / "docker")]) \
        in (EXIT_OK, EXIT_FOUND)
    docker_summary = json.loads((tmp_path / "docker" / "summary.json").read_text())
    assert sorted(run["shard"] for run in docker_summary["runs"]) == ["0/2", "1/2"]
    assert docker_summary["programs"] == 2 * programs
    found, corpus = content(tmp_path / "local")
    assert corpus and content(tmp_path / "docker") == (found, corpus)

    # non-root workers that wrote only their own mounted shard directory
    for shard in ("shard-0-of-2", "shard-1-of-2"):
        written = [p for p in (tmp_path / "docker" / shard).rglob("*") if p.name != "run.log"]
        assert written and all(p.stat().st_uid == (WORKER_UID if os.getuid() == 0 else os.getuid())
                               for p in written)
    assert sorted(p.name for p in (tmp_path / "docker").iterdir()) == \
        ["corpus", "findings", "shard-0-of-2", "shard-1-of-2", "summary.json"]
