"""The docker runtime: each job is a worker container of the image built from ci/Dockerfile."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from fuzz.record.programs import atomic_write

from .runtimes import DEFAULT_IMAGE, WORKER_UID, REPO, STOP_GRACE_SECONDS, Job, ReportTo, Runtime, RuntimeUnavailable, \
    forget_token_file, is_loopback, private_token_file

DOCKERFILE = REPO / "ci" / "Dockerfile"
TOKEN_IN_WORKER = "/run/procfuzz/token"
BASE_IMAGE_SCRIPT = REPO / "ci" / "base-image.sh"
EXTRA_CA_DIR = Path("/usr/local/share/ca-certificates")


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


def on_loopback(url: str) -> bool:
    """Whether the URL names this host's loopback (a container reaches it on the host's network)."""
    return is_loopback(urllib.parse.urlsplit(url).hostname or "")


class DockerRuntime(Runtime):
    """Each job is a worker container (ci/Dockerfile); only the job's shard directory is mounted
    (at /out/shard-I-of-N), so a container can write nothing else of the host.  Reporting to a
    service, the token is a read-only file mount; a service on this host's loopback is reached
    by running the workers on the host's network."""

    def __init__(self, work: Path, image: str | None = None, report_to: ReportTo | None = None):
        super().__init__(work, report_to)
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

    def _reporting(self) -> tuple[list[str], dict, dict]:
        """The workers' reporting options, extra volumes and container options."""
        if self.report_to is None:
            return [], {}, {}
        volumes = {}
        if self.report_to.token:             # as root, hand it to the image's user; else the workers run as us
            self.token_file = private_token_file(self.report_to.token, WORKER_UID if os.getuid() == 0 else None)
            volumes[str(self.token_file)] = {"bind": TOKEN_IN_WORKER, "mode": "ro"}
        network = {"network_mode": "host"} if on_loopback(self.report_to.url) else {}
        return self.report_to.args(TOKEN_IN_WORKER if self.report_to.token else None), volumes, network

    def submit(self, jobs: list[Job]) -> list[DockerHandle]:
        import docker
        handles = []
        reporting, token_volume, network = self._reporting()
        try:
            for job in jobs:
                directory = (self.work / job.shard.dirname).resolve()
                user = self._mount(directory)
                container = self.client.containers.run(
                    self.image, job.run_args("/out") + reporting, detach=True, devices=self.devices,
                    volumes={str(directory): {"bind": f"/out/{job.shard.dirname}", "mode": "rw"}, **token_volume},
                    labels={"procfuzz.shard": str(job.shard), "procfuzz.seed": str(job.seed)}, **user, **network)
                handles.append(DockerHandle(job, container))
        except docker.errors.DockerException as err:
            for handle in handles:          # no half-started campaign left running
                handle.container.remove(force=True, v=True)
            forget_token_file(self.token_file)
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
        for handle in handles:
            atomic_write(self.work / handle.job.shard.dirname / "run.log", handle.container.logs())
            handle.container.remove(v=True)
        forget_token_file(self.token_file)
        return super().collect(handles, out)


