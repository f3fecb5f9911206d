"""Faults of the host are never kernel bugs: stopping a campaign (Ctrl-C to the process group,
SIGTERM, SIGHUP, a second Ctrl-C), and a full disk under --out.

Most tests run `procfuzz run` against fake kernels (module-level openers, since workers are
spawned processes) in a child process of its own session, so that a signal to its process group
is what a terminal's Ctrl-C is.  The -m kernel tests drive the real command on a pseudo-terminal
against the default kernel."""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from fuzz.campaign.run import RunOptions, new_stop_event, run
from fuzz.cli import main
from fuzz.execute.kernels import KernelSpec, profile_for
from fuzz.record import store
from fuzz.record.programs import save_program
from reference.program import parse_text
from reference.trace import Trace
from targets.model_target import ModelTarget

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


# ---- fake kernels (picklable openers) -------------------------------------------------------------

class FakeKernel(ModelTarget):
    """The model, a little slower; with ``diverge``, every third program's last result is EIO."""
    restarts = 0

    def __init__(self, spec: KernelSpec, delay: float = 0.01, diverge: bool = False):
        super().__init__(profile_for(spec.pin))
        self.label = spec.label
        self.delay, self.diverge = delay, diverge

    def run(self, program):
        time.sleep(self.delay)
        trace = super().run(program)
        if self.diverge and len(program) and int(program.id[:4], 16) % 3 == 0:
            trace = Trace(trace.results[:-1] + ("EIO",), kernel=self.label)
        return trace


def _note_pid(spec: KernelSpec) -> None:
    marks = os.environ.get("PROCFUZZ_TEST_PIDS")
    if marks:
        Path(marks).mkdir(parents=True, exist_ok=True)
        (Path(marks) / str(os.getpid())).touch()


@contextmanager
def model_kernel(spec: KernelSpec):
    _note_pid(spec)
    yield FakeKernel(spec)


@contextmanager
def divergent_kernel(spec: KernelSpec):
    yield FakeKernel(spec, delay=0.0, diverge=True)


@contextmanager
def slow_boot_kernel(spec: KernelSpec):
    _note_pid(spec)
    time.sleep(120)                     # a TCG boot, stretched
    yield FakeKernel(spec)


@contextmanager
def stuck_kernel(spec: KernelSpec):
    """Boots, then takes 5 minutes for a program: only a second Ctrl-C ends it in time."""
    _note_pid(spec)
    yield FakeKernel(spec, delay=300)


# ---- helpers -------------------------------------------------------------------------------------

def start_campaign(out: Path, opener: str, *extra: str) -> subprocess.Popen:
    """`procfuzz run` with a fake kernel, in a session of its own (its process group is what a
    terminal's foreground group is)."""
    code = ("import sys; import test_host_campaign as t; from fuzz.cli import main; "
            f"sys.exit(main(sys.argv[1:], open_target=t.{opener}))")
    env = {**os.environ, "PYTHONPATH": f"{TESTS}:{ROOT}", "PROCFUZZ_TEST_PIDS": str(out.parent / "pids")}
    return subprocess.Popen([sys.executable, "-c", code, "run", "--budget", "120s", "--workers", "2",
                             "--out", str(out), "--seed", "3", *extra],
                            cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def booted_workers(out: Path) -> int:
    pids = out.parent / "pids"
    return len(list(pids.iterdir())) if pids.is_dir() else 0


def check_clean_stop(out: Path, proc: subprocess.Popen, timeout: float = 60) -> dict:
    """Exit 0 or 1 as the summary's findings say, no traceback, summary interrupted, every
    finding whole, no staging left, no worker left alive."""
    stdout, stderr = proc.communicate(timeout=timeout)
    assert "Traceback" not in stderr and "Error" not in stderr, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["errors"] == []
    assert proc.returncode == (1 if sum(summary["findings"].values()) else 0), (proc.returncode, summary)
    for directory in store.list_findings(out):
        store.load(directory)
    assert not [p for p in (out / "findings").glob(".tmp-*")] if (out / "findings").exists() else True
    pids = out.parent / "pids"
    for pid in (int(p.name) for p in pids.iterdir()) if pids.is_dir() else ():
        wait_for(lambda: not _alive(pid), 10, f"worker {pid} to end")
    return summary


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text()


# ---- stopping --------------------------------------------------------------------------------------

def test_stop_event_while_workers_boot_ends_them_without_an_error(tmp_path):
    stop = new_stop_event()
    options = RunOptions(budget=120, workers=2, out=tmp_path / "out", seed=1, seed_dirs=())
    import threading
    threading.Timer(2.0, stop.set).start()
    started = time.monotonic()
    result = run(options, lambda stats: None, stop, slow_boot_kernel)
    assert time.monotonic() - started < 30
    assert result.stats.errors == [] and result.summary["interrupted"] and result.exit_code == 0


@pytest.mark.parametrize("how", ["group-sigint", "sigterm", "sighup"])
def test_a_stop_signal_while_fuzzing_is_a_clean_stop(tmp_path, how):
    out = tmp_path / "out"
    proc = start_campaign(out, "model_kernel")
    wait_for(lambda: len(list((out / "corpus").glob("*.prog"))) >= 5, 90, "the campaign to fuzz")
    if how == "group-sigint":
        os.killpg(proc.pid, signal.SIGINT)         # what Ctrl-C at a terminal does
    else:
        os.kill(proc.pid, signal.SIGTERM if how == "sigterm" else signal.SIGHUP)
    summary = check_clean_stop(out, proc)
    assert summary["programs"] > 0


def test_ctrl_c_while_booting_ends_the_booting_workers(tmp_path):
    out = tmp_path / "out"
    proc = start_campaign(out, "slow_boot_kernel")
    wait_for(lambda: booted_workers(out) == 2, 60, "both workers to start booting")
    started = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    summary = check_clean_stop(out, proc)
    assert time.monotonic() - started < 20 and summary["programs"] == 0


def test_a_second_ctrl_c_ends_the_workers_at_once(tmp_path):
    out = tmp_path / "out"
    proc = start_campaign(out, "stuck_kernel")
    wait_for(lambda: booted_workers(out) == 2, 60, "both workers to boot")
    time.sleep(1.0)                                # both are inside their 5-minute program
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.5)
    started = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    check_clean_stop(out, proc, timeout=30)
    assert time.monotonic() - started < 15


# ---- a full disk -----------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def tree(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_a_full_disk_stops_the_campaign_with_exit_2_and_whole_entries(small_disk, capsys):
    out = small_disk / "out"
    earlier = parse_text("m1 = mount_proc p1\nreaddir p1 {m1}\n")
    save_program(out / "corpus", earlier)
    (out / "findings" / "earlier").mkdir(parents=True)
    (out / "findings" / "earlier" / "note").write_text("recorded before\n")
    before = tree(out)
    code = main(["run", "--budget", "120s", "--workers", "2", "--out", str(out), "--seed", "5"],
                open_target=divergent_kernel)
    err = capsys.readouterr().err
    assert code == 2
    assert re.search(rf"procfuzz: no space left on device under {re.escape(str(out))}: ", err), err
    assert "Traceback" not in err
    assert {name: digest for name, digest in tree(out).items() if name in before} == before
    findings = [d for d in store.list_findings(out) if d.name != "earlier"]
    assert findings, "the disk filled up before any finding: make it larger"
    for directory in findings:
        store.load(directory)                       # whole, or absent
    leftovers = [p for p in out.rglob(".tmp-*")]
    assert leftovers == []


# ---- the real thing: Ctrl-C at a terminal, the default kernel ------------------------------------

PROGRAMS_RAN = r"programs(?:\x1b\[[0-9;]*m|[\s│|])*[1-9]"      # the status panel's programs row, > 0


@pytest.mark.kernel
@pytest.mark.parametrize("when", ["boot", "fuzzing"])
def test_ctrl_c_at_a_terminal_stops_a_real_campaign_cleanly(tmp_path, when):
    pexpect = pytest.importorskip("pexpect")
    import io
    out, log = tmp_path / "out", io.StringIO()
    child = pexpect.spawn(sys.executable, ["-m", "fuzz.cli", "run", "--budget", "60s", "--workers", "1",
                                           "--out", str(out)],
                          cwd=str(ROOT), encoding="utf-8", timeout=300, dimensions=(60, 140))
    child.logfile_read = log
    child.expect("run time")                       # the status panel: the campaign has begun
    # "boot": right away, while the worker is spawned or boots its guest (a spawn and a TCG boot
    # take more than 3 s here, so no program can have run yet)
    if when == "fuzzing":
        child.expect(PROGRAMS_RAN)
    stopped = time.monotonic()
    child.sendintr()                               # the terminal's intr char: SIGINT to the group
    child.expect(pexpect.EOF, timeout=180)
    child.close()
    text = log.getvalue()
    assert "Traceback" not in text and "SIGINT: stopping workers" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["errors"] == []
    assert child.exitstatus == (1 if sum(summary["findings"].values()) else 0), text[-3000:]
    assert not [d for d in store.list_findings(out) if store.load(d).actual.outcome == "crash"
                and "no kernel report" in store.load(d).actual.title]
    assert time.monotonic() - stopped < 60
    if when == "boot":
        assert summary["programs"] == 0


def test_workers_ignore_stop_signals_sent_to_them_only_the_parent_decides(tmp_path):
    out = tmp_path / "out"
    proc = start_campaign(out, "model_kernel")
    wait_for(lambda: booted_workers(out) == 2 and len(list((out / "corpus").glob("*.prog"))) >= 5, 90,
             "the campaign to fuzz")
    workers = [int(p.name) for p in (out.parent / "pids").iterdir()]
    for pid in workers:
        assert os.getsid(pid) == pid != os.getsid(proc.pid)     # a session of its own
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            os.kill(pid, sig)
    time.sleep(1.0)
    assert all(_alive(pid) for pid in workers) and proc.poll() is None
    os.kill(proc.pid, signal.SIGTERM)
    check_clean_stop(out, proc)


def spawned_children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and f"PPid:\t{pid}\n" in (entry / "status").read_text() \
                    and b"spawn_main" in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_ctrl_c_while_workers_still_start_up_reaches_the_parent_alone(tmp_path):
    out = tmp_path / "out"
    proc = start_campaign(out, "model_kernel")
    wait_for(lambda: len(spawned_children(proc.pid)) >= 2, 90, "the workers to be spawned")
    time.sleep(0.4)                                  # past Python's start, most likely still importing
    os.killpg(proc.pid, signal.SIGINT)
    check_clean_stop(out, proc)


def _deaf_to_abort(ready) -> None:
    """A worker that hangs on its way out: the abort signal does not end it."""
    from fuzz.campaign.parallel import ABORT_SIGNAL
    signal.signal(ABORT_SIGNAL, signal.SIG_IGN)
    ready.set()
    time.sleep(120)


def test_a_worker_stuck_after_the_stop_aborted_it_is_killed_and_the_campaign_ends():
    import multiprocessing
    from fuzz.campaign.parallel import _Campaign
    context = multiprocessing.get_context("spawn")
    ready, stop = context.Event(), context.Event()
    worker = context.Process(target=_deaf_to_abort, args=(ready,), daemon=True)
    worker.start()
    assert ready.wait(60)
    stop.set()                                           # while it has not booted: it is aborted
    campaign = _Campaign({0: worker}, context.Queue(), lambda stats: None, stuck_after=0.5)
    started = time.monotonic()
    campaign.follow(stop, lambda: False)
    worker.join(10)
    assert worker.exitcode == -signal.SIGKILL and campaign.ended == {0}
    assert time.monotonic() - started < 30


def _unbootable(spec):
    """A TargetOpener whose kernel never boots (what open_qemu raises after BootFailed)."""
    from fuzz.errors import ToolError
    raise ToolError("3 boots in a row failed, the last: QEMU exited (status 1): no kernel")


def test_a_worker_that_cannot_boot_stops_with_its_reason_and_the_campaign_says_so(tmp_path):
    from fuzz.campaign.run import RunOptions, new_stop_event, run
    from fuzz.errors import EXIT_TOOL
    result = run(RunOptions(budget=5, workers=1, out=tmp_path / "out", seed_dirs=()), lambda s: None,
                 new_stop_event(), _unbootable)
    assert result.stats.stopped == ["worker 0: 3 boots in a row failed, the last: QEMU exited (status 1): no kernel"]
    assert result.summary["stopped_workers"] == result.stats.stopped and result.stats.errors == []
    assert result.exit_code == EXIT_TOOL          # nothing ran at all
