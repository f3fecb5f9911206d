"""The kubernetes runtime: the shards of one campaign as one Indexed Job."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, replace
from pathlib import Path

from fuzz.campaign.shards import Shard
from fuzz.errors import EXIT_FOUND

from .runtimes import DEFAULT_IMAGE, WORKER_UID, Job, Runtime, RuntimeUnavailable


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


