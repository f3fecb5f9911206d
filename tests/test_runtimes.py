"""Runtimes: Kubernetes manifests (validated against the API schemas), the local runtime, and
the docker runtime for real: two containers give the same findings as two local workers."""

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from fuzz.record import store
from fuzz.cli import main
from fuzz.campaign.shards import WHOLE, Shard
from fuzz.errors import EXIT_FOUND, EXIT_OK, EXIT_TOOL
from fuzz.scale.docker_runtime import DockerRuntime, on_loopback
from fuzz.scale.kubernetes_runtime import KubernetesRuntime
from fuzz.scale.runtimes import REPO, WORKER_UID, Job, LocalRuntime, ReportTo, RuntimeUnavailable, combined_exit
from fuzz.serve.config import load_config
from fuzz.record.programs import load_directory
from test_serve_fakes import _free_port

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


def test_dry_run_with_the_service_prints_it_beside_the_job_and_never_the_token(tmp_path, capsys):
    token = tmp_path / "token"
    token.write_text("a-secret-token-of-the-service-1234")
    assert main(["run", "--runtime", "kubernetes", "--dry-run", "--with-service", "--workers", "2", "--seed", "4",
                 "--budget", "5m", "--namespace", "fuzz", "--token-file", str(token)]) == 0
    out, err = capsys.readouterr()
    assert "a-secret-token" not in out and "create secret generic procfuzz-token" in err
    docs = list(yaml.safe_load_all(out))
    assert [d["kind"] for d in docs] == ["PersistentVolumeClaim", "Job", "ConfigMap", "PersistentVolumeClaim",
                                         "Deployment", "Service"]
    for version in K8S_VERSIONS:
        for doc in docs:
            kubernetes_validate.validate(doc, version, strict=True)
    job, config, deployment, service = docs[1], docs[2], docs[4], docs[5]
    worker = job["spec"]["template"]["spec"]["containers"][0]
    url = worker["args"][worker["args"].index("--report-to") + 1]
    assert url == f"http://{service['metadata']['name']}.fuzz.svc:{service['spec']['ports'][0]['port']}"
    assert worker["args"][worker["args"].index("--token-file") + 1] == "/var/run/secrets/procfuzz/token"
    serve = deployment["spec"]["template"]["spec"]["containers"][0]
    assert serve["args"][0] == "serve" and "--token-file" in serve["args"]
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}      # one service on the state at a time
    assert service["spec"]["selector"] == deployment["spec"]["template"]["metadata"]["labels"]
    for pod in (job["spec"]["template"]["spec"], deployment["spec"]["template"]["spec"]):
        assert {"name": "token", "secret": {"secretName": "procfuzz-token", "defaultMode": 0o400}} in pod["volumes"]
    config_path = tmp_path / "procfuzz.toml"
    config_path.write_text(config["data"]["procfuzz.toml"])
    assert load_config(config_path).kernels == ()           # it only receives


def test_workers_report_where_they_are_told_with_the_token_as_a_file():
    report_to = ReportTo("http://fuzz.example:8080", "some-token-0123456789")
    _, job = KubernetesRuntime(Path("unused"), report_to=report_to).manifests(campaign(2, seed=9, budget=60))
    worker = job["spec"]["template"]["spec"]["containers"][0]
    assert worker["args"][-4:] == ["--report-to", "http://fuzz.example:8080", "--token-file",
                                   "/var/run/secrets/procfuzz/token"]
    assert "some-token" not in yaml.safe_dump(job)
    assert on_loopback("http://127.0.0.1:8080") and on_loopback("http://localhost:80/") \
        and on_loopback("http://[::1]:8080") and not on_loopback("http://fuzz.example:8080")


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
    (["--runtime", "docker", "--with-service"], "use it with --runtime kubernetes"),
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


class ServeProcess:
    """`procfuzz serve` that only receives, in a child process, stopped and started at will on the
    same state and port."""

    def __init__(self, tmp_path: Path, token: Path):
        self.port = _free_port()
        config = tmp_path / "procfuzz.toml"
        config.write_text("kernel = []\n[follow_up]\nenabled = false\n")
        self.argv = [sys.executable, "-m", "fuzz.cli", "serve", "--config", str(config), "--state",
                     str(tmp_path / "state"), "--listen", f"127.0.0.1:{self.port}", "--token-file", str(token)]
        self.log = tmp_path / "serve.log"
        self.process = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ServeProcess":
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        wait_for(lambda: self.get("/api/status") is not None, 60, "the service to answer")
        return self

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)

    def get(self, path: str):
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as answer:
                return json.loads(answer.read())
        except OSError:
            return None


def wait_for(condition, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(2)
    raise AssertionError(f"waited {seconds:.0f} s for {what}")


@pytest.mark.kernel
@pytest.mark.docker
def test_two_containers_report_to_one_service_through_an_outage(tmp_path, docker_engine):
    token = tmp_path / "token"
    token.write_text("docker-workers-token-0123456789")
    service = ServeProcess(tmp_path, token).start()
    out = tmp_path / "out"
    run = subprocess.Popen([sys.executable, "-m", "fuzz.cli", "run", "--runtime", "docker", "--workers", "2",
                            "--zoo", "stale_pid", "--seed", "7", "--budget", "150s", "--leak-every", "0",
                            "--report-to", service.url, "--token-file", str(token), "--out", str(out)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        # both workers' counters reach the dashboard's API while they run
        live = lambda: [w for w in service.get("/api/workers") or [] if w["programs"] and not w["stale"]]  # noqa: E731
        workers = wait_for(lambda: len(live()) == 2 and live(), 400, "both workers to report")
        assert sorted(w["name"].split("-shard-")[-1] for w in workers) == ["0-of-2", "1-of-2"]
        assert all(w["kernel"].endswith("+zoo:stale_pid") for w in workers)
        service.stop()                       # an outage in the middle of the campaign
        time.sleep(20)
        service.start()
        assert run.wait(timeout=900) == EXIT_FOUND, run.stdout.read().decode()[-3000:]
    finally:
        if run.poll() is None:
            run.kill()
        service.stop()
    service.start()
    try:
        rows = [finding for bug in service.get("/api/bugs")
                for finding in service.get(f"/api/bugs/{bug['id']}")["findings"]]
    finally:
        service.stop()
    shards = [out / f"shard-{i}-of-2" for i in range(2)]
    recorded = {(d.name, store.kernel_of(d)) for shard in shards for d in store.list_findings(shard)}
    taken = [(row["program_id"], row["kernel"]) for row in rows]
    # every finding once, nothing lost through the outage, the zoo bug among them
    assert recorded and sorted(taken) == sorted(recorded)
    assert all(kernel.endswith("+zoo:stale_pid") for _, kernel in taken)
    # a program one worker added to the corpus was run by the other (through the service's hub)
    summaries = [json.loads((shard / "summary.json").read_text()) for shard in shards]
    assert any(summary["programs_from_others"] for summary in summaries), summaries
