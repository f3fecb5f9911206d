"""The kubernetes runtime: the shards of one campaign as one Indexed Job."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, replace
from pathlib import Path

from fuzz.campaign.shards import Shard
from fuzz.errors import EXIT_FOUND

from .runtimes import DEFAULT_IMAGE, WORKER_UID, Job, ReportTo, Runtime, RuntimeUnavailable

TOKEN_SECRET = "procfuzz-token"              # a Secret with the service's write token under "token"
TOKEN_DIR = "/var/run/secrets/procfuzz"
SERVICE_NAME = "procfuzz-serve"
SERVICE_PORT = 8080
# The in-cluster service takes what the workers report; it fuzzes nothing itself and leaves
# follow-ups (which boot guests) to a service configured for them.
SERVICE_CONFIG = "kernel = []\n\n[follow_up]\nenabled = false\n"


@dataclass
class KubernetesHandle:
    job: Job
    name: str                        # the Kubernetes Job; one handle per shard


class KubernetesRuntime(Runtime):
    """All jobs (the N shards of one campaign) as one Indexed Job: completion index i runs shard
    i/N. Pods write to ``/out/<job name>/shard-i-of-N`` on a ReadWriteMany PersistentVolumeClaim."""

    def __init__(self, work: Path, image: str | None = None, namespace: str = "default",
                 claim: str = "procfuzz-findings", storage: str = "10Gi", report_to: ReportTo | None = None,
                 with_service: bool = False):
        if with_service and report_to is None:          # the workers report to the service beside them
            report_to = ReportTo(f"http://{SERVICE_NAME}.{namespace}.svc:{SERVICE_PORT}")
        super().__init__(work, report_to)
        self.image = image or DEFAULT_IMAGE
        self.namespace, self.claim, self.storage = namespace, claim, storage
        self.with_service = with_service

    @property
    def uses_token(self) -> bool:
        """The workers (and the service) read the token from the Secret: a service listening on
        the pod network needs one, and so does any service given a token file."""
        return self.with_service or bool(self.report_to and self.report_to.token)

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
        volumes = [{"name": "out", "persistentVolumeClaim": {"claimName": self.claim}}]
        if self.report_to:
            worker["args"] += self.report_to.args(f"{TOKEN_DIR}/token" if self.uses_token else None)
            if self.uses_token:
                worker["volumeMounts"].append(_token_mount())
                volumes.append(_token_volume())
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
                        "containers": [worker], "volumes": volumes}}}}
        return [claim, job] + (self.service_manifests() if self.with_service else [])

    def service_manifests(self) -> list[dict]:
        """`procfuzz serve` next to the Job: its configuration, a claim for its state, one pod
        (Recreate: the state directory is locked by one service at a time) and a Service the
        workers report to.  The token comes from the Secret, as the workers'."""
        labels = {"app.kubernetes.io/name": "procfuzz", "app.kubernetes.io/component": "serve"}
        meta = lambda name: {"name": name, "namespace": self.namespace, "labels": dict(labels)}  # noqa: E731
        config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(f"{SERVICE_NAME}-config"),
                  "data": {"procfuzz.toml": SERVICE_CONFIG}}
        state = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta(f"{SERVICE_NAME}-state"),
                 "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "5Gi"}}}}
        probe = {"httpGet": {"path": "/api/status", "port": SERVICE_PORT}, "periodSeconds": 10}
        container = {
            "name": "serve", "image": self.image,
            "args": ["serve", "--listen", f"0.0.0.0:{SERVICE_PORT}", "--state", "/state",
                     "--config", "/etc/procfuzz/procfuzz.toml", "--token-file", f"{TOKEN_DIR}/token"],
            "ports": [{"name": "http", "containerPort": SERVICE_PORT}],
            "readinessProbe": probe, "livenessProbe": {**probe, "failureThreshold": 6},
            "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}},
            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
            "volumeMounts": [{"name": "state", "mountPath": "/state"},
                             {"name": "config", "mountPath": "/etc/procfuzz", "readOnly": True}, _token_mount()]}
        deployment = {
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta(SERVICE_NAME),
            "spec": {"replicas": 1, "strategy": {"type": "Recreate"},
                     "selector": {"matchLabels": dict(labels)},
                     "template": {"metadata": {"labels": dict(labels)}, "spec": {
                         "securityContext": {"runAsNonRoot": True, "runAsUser": WORKER_UID,
                                             "runAsGroup": WORKER_UID, "fsGroup": WORKER_UID},
                         "containers": [container],
                         "volumes": [{"name": "state", "persistentVolumeClaim": {"claimName": f"{SERVICE_NAME}-state"}},
                                     {"name": "config", "configMap": {"name": f"{SERVICE_NAME}-config"}},
                                     _token_volume()]}}}}
        service = {"apiVersion": "v1", "kind": "Service", "metadata": meta(SERVICE_NAME),
                   "spec": {"selector": dict(labels),
                            "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "http"}]}}
        return [config, state, deployment, service]

    def missing_secret_hint(self) -> str:
        """What to create before applying the printed manifests (the token is never printed)."""
        return (f"create the token Secret first: kubectl -n {self.namespace} create secret generic "
                f"{TOKEN_SECRET} --from-file=token=TOKEN_FILE") if self.uses_token else ""

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
        manifests = self.manifests(jobs)
        job = manifests[1]
        if self.report_to and self.report_to.token:
            self._create(client.CoreV1Api().create_namespaced_secret, {
                "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": TOKEN_SECRET, "namespace": self.namespace},
                "stringData": {"token": self.report_to.token}}, replace=client.CoreV1Api().replace_namespaced_secret)
        creators = {"PersistentVolumeClaim": client.CoreV1Api().create_namespaced_persistent_volume_claim,
                    "ConfigMap": client.CoreV1Api().create_namespaced_config_map,
                    "Service": client.CoreV1Api().create_namespaced_service,
                    "Deployment": client.AppsV1Api().create_namespaced_deployment,
                    "Job": client.BatchV1Api().create_namespaced_job}
        for manifest in manifests:
            # an earlier night's claims, configuration and service stay (409): reused; a Job is new
            self._create(creators[manifest["kind"]], manifest, exists_ok=manifest["kind"] != "Job")
        return [KubernetesHandle(j, job["metadata"]["name"]) for j in jobs]

    def _create(self, create, manifest: dict, exists_ok: bool = True, replace=None) -> None:
        from kubernetes.client.exceptions import ApiException
        name = manifest["metadata"]["name"]
        try:
            create(self.namespace, manifest)
        except ApiException as err:
            if err.status == 409 and replace is not None:
                replace(name, self.namespace, manifest)
            elif err.status != 409 or not exists_ok:
                raise RuntimeUnavailable(f"creating the {manifest['kind']} {name} failed: {err.reason}") from None

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


def _token_volume() -> dict:
    return {"name": "token", "secret": {"secretName": TOKEN_SECRET, "defaultMode": 0o400}}


def _token_mount() -> dict:
    return {"name": "token", "mountPath": TOKEN_DIR, "readOnly": True}
