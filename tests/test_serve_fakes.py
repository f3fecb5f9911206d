"""Fakes and fixtures the service tests share: kernels without QEMU (a planted stale bug when a
zoo bug is asked for, the model otherwise), a finding maker, and a real PostgreSQL server
started in a temporary directory.  Module-level functions: campaign workers are spawned
processes and unpickle the opener by name."""

import dataclasses
import os
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from fuzz.compare.oracle import compare
from fuzz.execute.kernels import profile_for
from fuzz.record import store
from fuzz.record.finding import Finding
from reference.program import parse_text
from reference.trace import alternatives
from targets.model_target import ModelTarget
from test_engine import BuggyTarget
from test_model import PROFILE

MODEL = ModelTarget(PROFILE)
BUGGY = BuggyTarget(PROFILE)
STALE = parse_text("m1 = mount_proc p1\np2 = spawn p1\nexit p2\nreap p1 p2\nlookup p1 {m1}/{p2}\n")


class FakeKernel:
    """A started fake target: buggy with a zoo bug injected, correct without; with the coverage
    probe asked for, each op kind a program uses "reaches" a kernel function of its own."""
    restarts = host_faults = 0
    measure_leaks = False

    def __init__(self, spec):
        self.label = f"fake {spec.pin or 'default'}" + (f" +zoo:{spec.zoo}" if spec.zoo else "")
        profile = profile_for(spec.pin)          # what the campaign's model expects of this kernel
        self._target = BuggyTarget(profile) if spec.zoo else ModelTarget(profile)
        self.coverage = spec.coverage

    def run(self, program):
        time.sleep(0.01)                # a guest is not instantaneous: keep the stats' rates sane
        trace = self._target.run(program)
        extra = {**trace.extra, "kcov": {f"proc_{op.kind}": 1 for op in program.ops}} if self.coverage else trace.extra
        # A kernel answers one way where the model allows several: the first, a prefix as itself.
        return dataclasses.replace(trace, results=tuple(alternatives(r)[0].removesuffix("*") for r in trace.results),
                                   extra=extra)

    def cpu_seconds(self):
        return 0.0

    def restart(self):
        pass

    def close(self):
        pass


@contextmanager
def fake_kernel(spec):
    yield FakeKernel(spec)


def record_finding(out: Path, program=STALE, kernel="fake 6.1-cloud +zoo:stale_pid") -> Path:
    expected, actual = MODEL.run(program), BUGGY.run(program)
    finding = Finding(program, expected, actual, compare(program, expected, actual), kernel)
    return store.record(out, finding)[0]


PG_BIN = Path("/usr/lib/postgresql/15/bin")


@pytest.fixture(scope="session")
def postgres_url():
    """A PostgreSQL 15 server of Debian's postgresql package in a temporary directory, as the
    postgres user when run as root; skipped with the reason when it cannot start."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip("PostgreSQL is not installed (ci/setup.sh installs Debian's postgresql)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed (pip install 'psycopg[binary]')")
    # Not under pytest's temporary root: that is private to root, and the server runs as postgres.
    data = Path(tempfile.mkdtemp(prefix="procfuzz-pg-"))
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(data, "postgres")
    port = _free_port()
    run = lambda *cmd: subprocess.run([*as_user, *cmd], capture_output=True, text=True, timeout=120)  # noqa: E731
    init = run(str(PG_BIN / "initdb"), "-D", str(data / "db"), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    if init.returncode:
        pytest.skip(f"initdb failed: {init.stderr[-500:]}")
    start = run(str(PG_BIN / "pg_ctl"), "-D", str(data / "db"), "-l", str(data / "log"), "-w", "-o",
                f"-k {data} -p {port} -c listen_addresses=''", "start")
    if start.returncode:
        pytest.skip(f"PostgreSQL did not start: {start.stderr[-500:]} {_tail(data / 'log')}")
    try:
        yield f"postgresql://postgres@/postgres?host={data}&port={port}"
    finally:
        run(str(PG_BIN / "pg_ctl"), "-D", str(data / "db"), "-m", "immediate", "stop")
        shutil.rmtree(data, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path) -> str:
    try:
        return path.read_text()[-500:]
    except OSError:
        return ""
