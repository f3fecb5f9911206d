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

import ipaddress
import os
import shutil
import subprocess
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from fuzz.campaign.shards import Shard
from fuzz.errors import EXIT_FOUND, EXIT_OK, EXIT_TOOL

from .merge import merge

REPO = Path(__file__).resolve().parents[2]
DEFAULT_IMAGE = "procfuzz-worker:latest"
WORKER_UID = 10001                 # the image's procfuzz user (ci/Dockerfile)
STOP_GRACE_SECONDS = 60            # after SIGTERM a run stops its VMs and writes its summary


@dataclass(frozen=True)
class ReportTo:
    """Where the workers report as they go (`run --report-to`): the service's URL and its write
    token (the text, read on this host; each runtime hands it to its workers as a file)."""
    url: str
    token: str | None = None

    def args(self, token_file: str | None) -> list[str]:
        """The worker's `procfuzz run` options, the token at ``token_file`` as the worker sees it."""
        return ["--report-to", self.url] + (["--token-file", token_file] if token_file else [])


def is_loopback(host: str) -> bool:
    """Whether a host name or address is this machine's loopback."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def private_token_file(token: str, owner: int | None = None) -> Path:
    """The token in a file only its reader (``owner``, default us) may read, in a directory of
    its own; remove it with forget_token_file when the workers are done."""
    directory = Path(tempfile.mkdtemp(prefix="procfuzz-token-"))
    path = directory / "token"
    path.write_text(token)
    os.chmod(path, 0o400)
    if owner is not None:
        os.chown(directory, owner, owner)
        os.chown(path, owner, owner)
    return path


def forget_token_file(path: Path | None) -> None:
    if path is not None:
        shutil.rmtree(path.parent, ignore_errors=True)


class RuntimeUnavailable(Exception):
    """The runtime cannot be used here (no engine, no cluster, no image); the message says why."""


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

    def __init__(self, work: Path, report_to: ReportTo | None = None):
        self.work = Path(work)
        self.report_to = report_to
        self.token_file: Path | None = None      # the token handed to the workers, while they run

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
        reporting = []
        if self.report_to:
            self.token_file = private_token_file(self.report_to.token) if self.report_to.token else None
            reporting = self.report_to.args(str(self.token_file) if self.token_file else None)
        handles = []
        for job in jobs:
            directory = self.work / job.shard.dirname
            directory.mkdir(parents=True, exist_ok=True)
            with open(directory / "run.log", "wb") as log:
                argv = [sys.executable, "-m", "fuzz.cli", *job.run_args(str(self.work)), *reporting]
                process = subprocess.Popen(argv,
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
        forget_token_file(self.token_file)
        return [h.process.returncode if h.process.returncode >= 0 else EXIT_TOOL for h in handles]
