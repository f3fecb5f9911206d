"""Where workers run: one interface, three runtimes (in the spirit of KernelCI's runtimes).

    runtime.prepare()                          # check the engine; build or find the worker image
    handles = runtime.submit(jobs)             # start one job per shard
    codes = runtime.wait(handles, deadline)    # exit codes; jobs still running at the deadline are stopped
    paths = runtime.collect(handles, out)      # shard outputs, merged into out

A Job is one ``procfuzz run --shard I/N`` invocation, whatever runs it: a process here
(``local``), a container (``docker``), or a pod of a Kubernetes Indexed Job (``kubernetes``).
Shards are 0-based (``0/2`` and ``1/2``), like Kubernetes' completion index.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from pathlib import Path

from .cli import EXIT_FOUND, EXIT_OK, EXIT_TOOL
from .merge import merge

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "ci" / "Dockerfile"
BASE_IMAGE_SCRIPT = REPO / "ci" / "base-image.sh"
DEFAULT_IMAGE = "procfuzz-worker:latest"
WORKER_UID = 10001                 # the image's procfuzz user (ci/Dockerfile)
EXTRA_CA_DIR = Path("/usr/local/share/ca-certificates")
STOP_GRACE_SECONDS = 60            # after SIGTERM a run stops its VMs and writes its summary
RUNTIMES = ("local", "docker", "kubernetes")


class RuntimeUnavailable(Exception):
    """The runtime cannot be used here (no engine, no cluster, no image); the message says why."""


@dataclass(frozen=True, order=True)
class Shard:
    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> "Shard":
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not match:
            raise ValueError(f"bad shard {text!r}: use I/N, e.g. 0/2 (0-based: I is 0..N-1)")
        shard = cls(int(match.group(1)), int(match.group(2)))
        if shard.count < 1 or not 0 <= shard.index < shard.count:
            raise ValueError(f"bad shard {text!r}: shards are 0-based, so I must be 0..N-1 with N >= 1")
        return shard

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def dirname(self) -> str:
        return f"shard-{self.index}-of-{self.count}"

    def streams(self, workers: int) -> range:
        """The random-stream indexes of this shard's workers: disjoint across the shards of one
        campaign (same seed, same workers per shard), and shard 0/1 with W workers has the
        same streams as the W shards of W/1 worker each."""
        return range(self.index * workers, (self.index + 1) * workers)

    def split(self, parts: int) -> list["Shard"]:
        """This shard as ``parts`` shards of one worker each, with the same random streams."""
        return [Shard(self.index * parts + part, self.count * parts) for part in range(parts)]


WHOLE = Shard(0, 1)


@dataclass(frozen=True)
class Job:
    """One ``procfuzz run`` of one shard."""
    shard: Shard
    seed: int
    budget: int = 600                         # seconds
    kernel: str | None = None
    workers: int = 1
    max_programs: int | None = None
    extra_args: tuple[str, ...] = ()          # further `procfuzz run` options

    def run_args(self, out: str, shard: str | None = None) -> list[str]:
        """The ``procfuzz`` arguments; ``shard`` replaces the shard text (Kubernetes fills in the index)."""
        args = ["run", "--shard", shard or str(self.shard), "--seed", str(self.seed),
                "--budget", f"{self.budget}s", "--workers", str(self.workers), "--out", out]
        if self.kernel:
            args += ["--kernel", self.kernel]
        if self.max_programs is not None:
            args += ["--max-programs", str(self.max_programs)]
        return args + list(self.extra_args)


def combined_exit(codes: list[int | None]) -> int:
    """2 if any job failed as a tool or did not finish, else 1 if any found something, else 0."""
    if any(code not in (EXIT_OK, EXIT_FOUND) for code in codes):
        return EXIT_TOOL
    return EXIT_FOUND if EXIT_FOUND in codes else EXIT_OK


class Runtime(ABC):
    """Runs jobs whose outputs land in ``work/shard-I-of-N/``."""

    def __init__(self, work: Path):
        self.work = Path(work)

    @abstractmethod
    def prepare(self) -> None: ...

    @abstractmethod
    def submit(self, jobs: list[Job]) -> list: ...

    @abstractmethod
    def wait(self, handles: list, deadline: float) -> list[int | None]: ...

    def collect(self, handles: list, out: Path) -> list[Path]:
        """Merge the shard outputs into ``out``; returns the shard output directories."""
        paths = [self.work / handle.job.shard.dirname for handle in handles]
        merge(Path(out), [path for path in paths if path.is_dir()])
        return paths


# ---- local ---------------------------------------------------------------------------------------

@dataclass
class LocalHandle:
    job: Job
    process: subprocess.Popen


class LocalRuntime(Runtime):
    """Each job is a ``procfuzz run`` process here (run_campaign: one VM per worker), running
    this very procfuzz; its output goes to ``work/shard-I-of-N/run.log``."""

    def prepare(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)

    def submit(self, jobs: list[Job]) -> list[LocalHandle]:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        handles = []
        for job in jobs:
            directory = self.work / job.shard.dirname
            directory.mkdir(parents=True, exist_ok=True)
            with open(directory / "run.log", "wb") as log:
                process = subprocess.Popen([sys.executable, "-m", "fuzz.cli", *job.run_args(str(self.work))],
                                           stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           env=env)
            handles.append(LocalHandle(job, process))
        return handles

    def wait(self, handles: list[LocalHandle], deadline: float) -> list[int | None]:
        for handle in handles:
            try:
                handle.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                handle.process.terminate()
        for handle in handles:
            try:
                handle.process.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                handle.process.kill()
                handle.process.wait()
        return [h.process.returncode if h.process.returncode >= 0 else EXIT_TOOL for h in handles]


# ---- docker --------------------------------------------------------------------------------------

@dataclass
class DockerHandle:
    job: Job
    container: object                # docker.models.containers.Container


def host_extra_ca_certs() -> str:
    """The host's locally added CA certificates (e.g. of a TLS-intercepting proxy), for the build."""
    if not EXTRA_CA_DIR.is_dir():
        return ""
    return "".join(path.read_text() for path in sorted(EXTRA_CA_DIR.glob("*.crt")))


def host_kvm_works() -> bool:
    """targets.vm's probe: /dev/kvm present and a guest really boots with it (verdict cached)."""
    if not os.path.exists("/dev/kvm"):
        return False
    from targets.initramfs import guest_image
    from targets.kernels import resolve
    from targets.vm import choose_accel
    image = resolve()
    return choose_accel(image.vmlinuz, guest_image(modules_dir=image.modules_dir)) == "kvm"


def build_image(client, tag: str, base_script: Path = BASE_IMAGE_SCRIPT) -> None:
    """Build ci/Dockerfile from this checkout as ``tag``, making the base image first if absent."""
    import docker
    if not DOCKERFILE.is_file():
        raise RuntimeUnavailable(f"no {DOCKERFILE.relative_to(REPO)} beside this procfuzz (installed without "
                                 "its checkout?): build the image from a checkout, or pass --image")
    proc = subprocess.run(["bash", str(base_script)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeUnavailable(f"making the base image failed ({base_script.name}):\n{proc.stderr[-2000:]}")
    try:
        client.images.build(path=str(REPO), dockerfile=str(DOCKERFILE.relative_to(REPO)), tag=tag, rm=True,
                            buildargs={"EXTRA_CA_CERTS": host_extra_ca_certs()})
    except docker.errors.BuildError as err:
        log = "".join(str(line.get("stream", line.get("error", ""))) for line in err.build_log)
        raise RuntimeUnavailable(f"building {tag} failed: {err.msg}\n{log[-3000:]}") from None


class DockerRuntime(Runtime):
    """Each job is a worker container (ci/Dockerfile); only the job's shard directory is mounted
    (at /out/shard-I-of-N), so a container can write nothing else of the host."""

    def __init__(self, work: Path, image: str | None = None):
        super().__init__(work)
        self.image = image or DEFAULT_IMAGE
        self.build = image is None          # our own tag: (re)build it from this checkout
        self.client = None
        self.devices: list[str] = []

    def prepare(self) -> None:
        import docker
        try:
            self.client = docker.from_env()
            self.client.ping()
        except docker.errors.DockerException as err:
            raise RuntimeUnavailable(f"no Docker engine reachable ({err}); start dockerd "
                                     "(ci/setup.sh does) or set DOCKER_HOST") from None
        if self.build:
            build_image(self.client, self.image)
        else:
            try:
                self.client.images.get(self.image)
            except docker.errors.ImageNotFound:
                raise RuntimeUnavailable(f"image {self.image} not found: docker pull it or build "
                                         "ci/Dockerfile") from None
        self.devices = ["/dev/kvm:/dev/kvm:rwm"] if host_kvm_works() else []
        self.work.mkdir(parents=True, exist_ok=True)

    def _mount(self, directory: Path) -> dict:
        """Run as our uid if we are not root; as root, hand the directory to the image's user."""
        directory.mkdir(parents=True, exist_ok=True)
        if os.getuid() != 0:
            return {"user": f"{os.getuid()}:{os.getgid()}"}
        for path in (directory, *directory.rglob("*")):
            os.chown(path, WORKER_UID, WORKER_UID, follow_symlinks=False)
        return {}

    def submit(self, jobs: list[Job]) -> list[DockerHandle]:
        import docker
        handles = []
        try:
            for job in jobs:
                directory = (self.work / job.shard.dirname).resolve()
                user = self._mount(directory)
                container = self.client.containers.run(
                    self.image, job.run_args("/out"), detach=True, devices=self.devices,
                    volumes={str(directory): {"bind": f"/out/{job.shard.dirname}", "mode": "rw"}},
                    labels={"procfuzz.shard": str(job.shard), "procfuzz.seed": str(job.seed)}, **user)
                handles.append(DockerHandle(job, container))
        except docker.errors.DockerException as err:
            for handle in handles:          # no half-started campaign left running
                handle.container.remove(force=True, v=True)
            raise RuntimeUnavailable(f"starting a worker container failed: {err}") from None
        return handles

    def wait(self, handles: list[DockerHandle], deadline: float) -> list[int | None]:
        import requests
        codes = []
        for handle in handles:
            try:
                result = handle.container.wait(timeout=max(1.0, deadline - time.monotonic()))
            except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
                handle.container.stop(timeout=STOP_GRACE_SECONDS)      # SIGTERM, then SIGKILL
                result = handle.container.wait()
            codes.append(result.get("StatusCode"))
        return codes

    def collect(self, handles: list[DockerHandle], out: Path) -> list[Path]:
        """Keep each container's output beside its shard, remove the containers, merge."""
        from .storage import atomic_write
        for handle in handles:
            atomic_write(self.work / handle.job.shard.dirname / "run.log", handle.container.logs())
            handle.container.remove(v=True)
        return super().collect(handles, out)


# ---- kubernetes ----------------------------------------------------------------------------------

@dataclass
class KubernetesHandle:
    job: Job
    name: str                        # the Kubernetes Job; one handle per shard


class KubernetesRuntime(Runtime):
    """All jobs (the N shards of one campaign) as one Indexed Job: completion index i runs shard
    i/N. Pods write to ``/out/<job name>/shard-i-of-N`` on a ReadWriteMany PersistentVolumeClaim."""

    def __init__(self, work: Path, image: str | None = None, namespace: str = "default",
                 claim: str = "procfuzz-findings", storage: str = "10Gi"):
        super().__init__(work)
        self.image = image or DEFAULT_IMAGE
        self.namespace, self.claim, self.storage = namespace, claim, storage

    @staticmethod
    def job_name(job: Job) -> str:
        kernel = re.sub(r"[^a-z0-9]+", "-", (job.kernel or "default").lower()).strip("-")
        return f"procfuzz-{kernel[:30]}-{job.seed}".rstrip("-")[:63]

    def manifests(self, jobs: list[Job]) -> list[dict]:
        """The PersistentVolumeClaim and the Indexed Job for ``jobs``: all shards of one campaign."""
        first = jobs[0]
        count = first.shard.count
        if sorted(job.shard for job in jobs) != [Shard(i, count) for i in range(count)] or \
                any(replace(job, shard=first.shard) != first for job in jobs):
            raise ValueError("a Kubernetes Indexed Job runs all N shards of one campaign, alike but for the shard")
        name = self.job_name(first)
        labels = {"app.kubernetes.io/name": "procfuzz", "app.kubernetes.io/instance": name}
        memory = f"{1536 * first.workers}Mi"          # one 1 GiB guest per worker, plus procfuzz
        claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                 "metadata": {"name": self.claim, "namespace": self.namespace, "labels": labels},
                 "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": self.storage}}}}
        worker = {
            "name": "worker", "image": self.image,
            # $(JOB_COMPLETION_INDEX) is expanded by the kubelet from the env entry below.
            "args": first.run_args(f"/out/{name}", shard=f"$(JOB_COMPLETION_INDEX)/{count}"),
            "env": [{"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {
                "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}}],
            "resources": {"requests": {"cpu": str(first.workers), "memory": memory}, "limits": {"memory": memory}},
            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
            "volumeMounts": [{"name": "out", "mountPath": "/out"}]}
        job = {
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": self.namespace, "labels": labels},
            "spec": {
                "completionMode": "Indexed", "completions": count, "parallelism": count,
                # Exit 1 means "found something": that shard is done, not to be retried. Other
                # failures (a tool error, an evicted node) get one more try.
                "backoffLimitPerIndex": 1,
                "podFailurePolicy": {"rules": [
                    {"action": "FailIndex", "onExitCodes": {"containerName": "worker", "operator": "In",
                                                            "values": [EXIT_FOUND]}},
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]},
                "activeDeadlineSeconds": first.budget + 1800,    # boot, seeds, stopping: generous
                "ttlSecondsAfterFinished": 7 * 86400,
                "template": {
                    "metadata": {"labels": dict(labels)},
                    "spec": {
                        "restartPolicy": "Never",
                        "securityContext": {"runAsNonRoot": True, "runAsUser": WORKER_UID,
                                            "runAsGroup": WORKER_UID, "fsGroup": WORKER_UID},
                        "containers": [worker],
                        "volumes": [{"name": "out", "persistentVolumeClaim": {"claimName": self.claim}}]}}}}
        return [claim, job]

    def manifest_yaml(self, jobs: list[Job]) -> str:
        import yaml
        return yaml.safe_dump_all(self.manifests(jobs), sort_keys=False)

    def prepare(self) -> None:
        try:
            from kubernetes import config
        except ImportError:
            raise RuntimeUnavailable("the kubernetes Python client is not installed (pip install kubernetes)") from None
        try:
            config.load_incluster_config()
        except config.ConfigException:
            try:
                config.load_kube_config()
            except (config.ConfigException, OSError) as err:
                raise RuntimeUnavailable(
                    f"no Kubernetes cluster configured ({err}): set KUBECONFIG or ~/.kube/config, or run "
                    "in a pod with a service account; --dry-run prints the manifests to apply yourself") from None

    def submit(self, jobs: list[Job]) -> list[KubernetesHandle]:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException
        claim, job = self.manifests(jobs)
        try:
            client.CoreV1Api().create_namespaced_persistent_volume_claim(self.namespace, claim)
        except ApiException as err:
            if err.status != 409:              # 409: the claim exists (an earlier night): reuse it
                raise RuntimeUnavailable(f"creating the claim {self.claim} failed: {err.reason}") from None
        try:
            client.BatchV1Api().create_namespaced_job(self.namespace, job)
        except ApiException as err:
            raise RuntimeUnavailable(f"creating the Job {job['metadata']['name']} failed: {err.reason}") from None
        return [KubernetesHandle(j, job["metadata"]["name"]) for j in jobs]

    def wait(self, handles: list[KubernetesHandle], deadline: float) -> list[int | None]:
        """The worker exit codes by completion index (None: no finished pod by the deadline)."""
        from kubernetes import client
        name, count = handles[0].name, handles[0].job.shard.count
        codes: dict[int, int] = {}
        while len(codes) < count and time.monotonic() < deadline:
            pods = client.CoreV1Api().list_namespaced_pod(self.namespace, label_selector=f"job-name={name}")
            for pod in pods.items:
                annotations = pod.metadata.annotations or {}
                index = int(annotations.get("batch.kubernetes.io/job-completion-index", -1))
                for status in pod.status.container_statuses or []:
                    if status.state.terminated and index >= 0:
                        codes[index] = status.state.terminated.exit_code
            time.sleep(10)
        return [codes.get(handle.job.shard.index) for handle in handles]

    def collect(self, handles: list[KubernetesHandle], out: Path) -> list[Path]:
        raise RuntimeUnavailable(
            f"the findings are on the PersistentVolumeClaim {self.claim} under /{handles[0].name}/: copy that "
            f"directory out (e.g. kubectl cp from a pod mounting the claim) and run "
            f"`procfuzz merge {out} <copied directory>`")


def make_runtime(name: str, work: Path, **options) -> Runtime:
    """``options``: image (docker, kubernetes); namespace, claim (kubernetes)."""
    if name == "local":
        return LocalRuntime(work)
    if name == "docker":
        return DockerRuntime(work, options.get("image"))
    if name == "kubernetes":
        return KubernetesRuntime(work, options.get("image"), options.get("namespace") or "default",
                                 options.get("claim") or "procfuzz-findings")
    raise ValueError(f"unknown runtime {name!r}: one of {', '.join(RUNTIMES)}")
