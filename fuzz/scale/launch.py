"""Starting a campaign's shards on a runtime: pick the runtime by name, submit one job per
shard, wait, merge."""

from __future__ import annotations

import time
from pathlib import Path

from .docker_runtime import DockerRuntime
from .kubernetes_runtime import KubernetesRuntime
from .merge import MergeError
from fuzz.record.summary import read_summary

from .runtimes import Job, LocalRuntime, ReportTo, Runtime, RuntimeUnavailable, combined_exit

RUNTIMES = ("local", "docker", "kubernetes")


def make_runtime(name: str, work: Path, report_to: ReportTo | None = None, **options) -> Runtime:
    """``options``: image (docker, kubernetes); namespace, claim, with_service (kubernetes)."""
    if name == "local":
        return LocalRuntime(work, report_to)
    if name == "docker":
        return DockerRuntime(work, options.get("image"), report_to)
    if name == "kubernetes":
        return KubernetesRuntime(work, options.get("image"), options.get("namespace") or "default",
                                 options.get("claim") or "procfuzz-findings", report_to=report_to,
                                 with_service=bool(options.get("with_service")))
    raise ValueError(f"unknown runtime {name!r}: one of {', '.join(RUNTIMES)}")


RUNTIME_START_SLACK = 600.0     # image start, kernel boot and seed replay come on top of the budget


def run_on_runtime(name: str, jobs: list[Job], out: Path, log, report_to: ReportTo | None = None,
                   **options) -> tuple[int, dict]:
    """`run --runtime docker|kubernetes`: start one job (one worker) per shard, wait for them
    (Ctrl-C stops them and keeps what they found), merge their outputs into ``out``; returns
    (the combined exit code, the merged summary)."""
    runtime = make_runtime(name, out, report_to, **options)
    try:
        runtime.prepare()
        handles = runtime.submit(jobs)
        log(f"procfuzz: {len(handles)} {name} workers started (seed {jobs[0].seed})")
        try:
            codes = runtime.wait(handles, time.monotonic() + jobs[0].budget + RUNTIME_START_SLACK)
        except KeyboardInterrupt:
            log("\nprocfuzz: interrupted: stopping the workers, keeping everything")
            codes = runtime.wait(handles, time.monotonic())
        runtime.collect(handles, out)
        return combined_exit(codes), read_summary(out)
    except MergeError as err:
        raise RuntimeUnavailable(str(err)) from None
