"""The long-lived manager of `procfuzz serve`: one campaign thread per configured kernel (a
campaign that ends is started again from the grown corpus), a scanner that imports new
findings into the bug database, and a follow-up thread that minimises, reproduces and exports
each new bug, all within one guest budget (fuzz/serve/guests.py).

State directory: ``serve.lock`` (one manager at a time), the SQLite database unless a
PostgreSQL URL is configured, ``campaigns/<kernel name>/`` (a run output: findings, corpus,
summary), ``imports/<upload id>/`` (uploaded finding directories).  Start-up reconciles the
database with the disk, closes the campaigns and restarts the follow-ups a killed manager left.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import signal
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import corpus
from fuzz.campaign.run import RunOptions, new_stop_event, run
from fuzz.errors import ToolError
from fuzz.execute.kernels import TargetOpener, model_for as default_model_for, open_qemu
from fuzz.record.known import load_known_issues
from fuzz.record.summary import Stats
from fuzz.triage.follow_up import ModelFor

from . import records
from .config import KernelConfig, ServeConfig
from .db import DB_FILE, Database, DatabaseError
from .followups import follow_up_finding, stoppable
from .guests import GuestPool, Lease
from .importer import FindingCache, Imported, drop_repeated_findings, import_findings, reconcile
from .stats import StatTracker
from .upload import Limits, unpack
from .hub import CorpusHub
from .workers import RemoteWorkers

log = logging.getLogger("procfuzz.serve")
LOCK_FILE = "serve.lock"
PR_SET_PDEATHSIG = 1


class ManagerError(Exception):
    """The manager cannot start (the state directory is another manager's, a bad database)."""


@dataclass(frozen=True)
class DieWithManager:
    """A TargetOpener for campaign workers that first ties the worker's life to the manager's:
    workers are spawned processes, and a manager killed with -9 must not leave them (and their
    QEMUs, which die with their worker) running."""
    opener: TargetOpener
    manager_pid: int

    def __call__(self, spec):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != self.manager_pid:         # the manager died before the prctl
            os._exit(1)
        return self.opener(spec)


def lock_state(state: Path):
    """An open file holding the state directory's lock; ManagerError if another manager has it."""
    state.mkdir(parents=True, exist_ok=True)
    handle = open(state / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise ManagerError(f"{state} is in use by another procfuzz serve (pid {holder})") from None
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


class Manager:
    def __init__(self, config: ServeConfig, state: Path, open_target: TargetOpener = open_qemu,
                 model_for: ModelFor = default_model_for, stat_seconds: int = 60, scan_seconds: float = 5.0):
        self.config, self.state = config, Path(state).resolve()
        self.open_target, self.model_for = open_target, model_for
        self.stat_seconds, self.scan_seconds = stat_seconds, scan_seconds
        self.pool = GuestPool(config.guests)
        self.stopping = threading.Event()
        self.live: dict[str, dict] = {}                 # kernel name -> the running campaign's counters
        self.remote = RemoteWorkers()                    # campaigns elsewhere that report here
        self.hub = CorpusHub(self.state / "hub")         # and share their corpus programs through it
        self._stops: dict[str, object] = {}             # kernel name -> its campaign's stop event
        self._wake = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._import_lock = threading.RLock()
        self._findings = FindingCache()                 # read once, kept while the service runs
        self.known = load_known_issues(config.known or corpus.KNOWN_ISSUES)
        self.started = int(time.time())
        self._lock = lock_state(self.state)
        try:
            self.db = Database(config.database or self.state / DB_FILE)
        except (DatabaseError, sqlite3.Error, OSError) as err:
            self._lock.close()
            raise ManagerError(str(err)) from err

    # ---- life cycle -------------------------------------------------------------------------------

    def start(self) -> "Manager":
        now = int(time.time())
        gone = reconcile(self.db)
        closed = records.close_open_campaigns(self.db, now)
        requeued = records.requeue_running(self.db, now)
        newer = records.requeue_outdated(self.db, self._stock_labels(), now)
        log.info("state %s: %d stale finding rows dropped, %d campaigns closed, %d follow-ups restarted, "
                 "%d bugs to re-run on newer kernels", self.state, gone, closed, requeued, newer)
        for kernel in self.config.kernels:
            records.ensure_kernel(self.db, kernel.name, kernel.pin, kernel.zoo, _label(kernel),
                                  kernel.workers, kernel.leak_every)
        self.import_now()
        self._spawn("scan", self._scan_loop)
        if self.config.follow_up:
            self._spawn("follow-up", self._follow_up_loop)
        for kernel in self.config.kernels:
            self._spawn(f"campaign {kernel.name}", self._campaign_loop, kernel)
        return self

    def _stock_labels(self) -> dict[str, str]:
        """Each pin of the matrix and the package it names today (a pin moves to a newer one)."""
        pins = [k.pin for k in self.config.kernels] + list(self.config.follow_up_pins)
        return {pin or "default": _label(KernelConfig("", pin)) for pin in dict.fromkeys(pins)}

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the campaigns (workers finish their program), wait for the threads, unlock."""
        self.stopping.set()
        for stop in list(self._stops.values()):
            stop.set()
        self.poke()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.1, deadline - time.monotonic()))
        self.db.close()
        self._lock.close()

    def _spawn(self, name: str, target, *args) -> None:
        thread = threading.Thread(target=self._guarded, args=(name, target, *args), name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _guarded(self, name: str, target, *args) -> None:
        """A thread that fails is logged and started again: the service keeps serving."""
        while not self.stopping.is_set():
            try:
                target(*args)
                return
            except Exception:  # noqa: BLE001 - logged; the loop restarts it after a pause
                log.exception("%s failed; restarting it in 10 s", name)
                self._sleep(10)

    def poke(self) -> None:
        """Wake the threads that wait for work (a kernel enabled, an upload, a stop)."""
        with self._wake:
            self._wake.notify_all()

    def _sleep(self, seconds: float) -> None:
        with self._wake:
            if not self.stopping.is_set():
                self._wake.wait(seconds)

    # ---- campaigns --------------------------------------------------------------------------------

    def set_campaign(self, name: str, running: bool) -> bool:
        """Start or stop the campaigns of a kernel (kept across restarts); whether it exists."""
        if self.config.kernel(name) is None or not records.set_kernel_enabled(self.db, name, running):
            return False
        if not running and name in self._stops:
            self._stops[name].set()
        self.poke()
        return True

    def _enabled(self, name: str) -> bool:
        return any(row["name"] == name and row["enabled"] for row in records.kernels(self.db))

    def _campaign_loop(self, kernel: KernelConfig) -> None:
        failures = 0
        while not self.stopping.is_set():
            if not self._enabled(kernel.name):
                self._sleep(5)
                continue
            with self.pool.hold(kernel.workers, False, self.stopping) as lease:
                ok = lease.held and self._one_campaign(kernel, lease)
            failures = 0 if ok else failures + 1
            if failures:
                self._sleep(min(300, 5 * 2 ** failures))    # a kernel that fails to boot is not hammered

    def _one_campaign(self, kernel: KernelConfig, lease: Lease) -> bool:
        """One campaign on the kernel until its budget, a stop or a follow-up wanting its guests;
        whether it ran without a tool failure."""
        out = self.state / "campaigns" / kernel.name
        kernel_id = records.ensure_kernel(self.db, kernel.name, kernel.pin, kernel.zoo, _label(kernel),
                                          kernel.workers, kernel.leak_every)
        campaign_id = records.start_campaign(self.db, kernel_id, str(out), int(time.time()))
        stop = new_stop_event()
        self._stops[kernel.name] = stop
        tracker = StatTracker(self.db, campaign_id, out, self.stat_seconds)
        options = RunOptions(kernel.spec, self.config.budget, kernel.workers, out, max_ops=self.config.max_ops,
                             leak_every=kernel.leak_every, known=self.config.known)

        def on_update(stats: Stats) -> None:
            self.live[kernel.name] = tracker.update(stats)
            if lease.should_yield() or self.stopping.is_set():
                stop.set()

        stats, errors = Stats(), []
        log.info("campaign %d on %s started", campaign_id, kernel.name)
        try:
            stats = run(options, on_update, stop, DieWithManager(self.open_target, os.getpid())).stats
            errors = stats.errors
        except ToolError as err:
            errors = [str(err)]
        finally:
            self.live[kernel.name] = tracker.update(stats, final=True)
            records.end_campaign(self.db, campaign_id, stats.programs, sum(stats.findings.values()), errors,
                                 int(time.time()))
            self._stops.pop(kernel.name, None)
        log.info("campaign %d on %s ended: %d programs%s", campaign_id, kernel.name, stats.programs,
                 f", errors: {errors[0][:300]}" if errors else "")
        self.import_now()
        # Workers that all died at once failed too, unless they were asked to stop that early.
        return not errors and (stats.programs > 0 or lease.yielding or self.stopping.is_set())

    # ---- findings ---------------------------------------------------------------------------------

    def sources(self) -> dict[Path, str]:
        """Where findings come from, and the source name their rows carry."""
        found = {self.state / "campaigns" / k.name: f"campaign {k.name}" for k in self.config.kernels}
        found[self.state / "imports"] = "import {}"      # one root for every upload: named by its id
        return found

    def import_now(self, refresh: bool = False) -> Imported:
        with self._import_lock:
            imported = import_findings(self.db, self.sources(), self.known, int(time.time()), refresh,
                                       warn=lambda text: log.warning("%s", text), cache=self._findings)
        if imported.queued:
            self.poke()
        return imported

    def import_upload(self, data: bytes, limits: Limits = Limits()) -> dict:
        """An uploaded tarball of finding directories, checked, unpacked and imported (UploadError
        if refused, then nothing changed)."""
        with self._import_lock:             # the scanner must not import it first: the answer counts it
            directory, new = unpack(data, self.state / "imports", limits)
            repeated = drop_repeated_findings(self.db, directory) if new else 0
            imported = self.import_now()
        # Only this upload's findings: the campaigns' latest ones may have come in with them.
        added = [d for d in imported.findings if Path(d).is_relative_to(directory.resolve())]
        return {"upload": directory.name, "new_upload": new, "findings_added": len(added), "repeated": repeated,
                "bugs": imported.bugs, "queued_for_follow_up": list(imported.queued)}

    def _scan_loop(self) -> None:
        while not self.stopping.is_set():
            self._sleep(self.scan_seconds)
            self.import_now()

    # ---- follow-ups -------------------------------------------------------------------------------

    def _follow_up_loop(self) -> None:
        while not self.stopping.is_set():
            job = records.next_follow_up(self.db)
            if job is None:
                self._sleep(self.scan_seconds)
                continue
            with self.pool.hold(1, True, self.stopping) as lease:
                if lease.held:
                    self._follow_up(job)

    def _follow_up(self, job: dict) -> None:
        bug_id = job["bug_id"]
        log.info("following up bug %d: %s", bug_id, job["bug_key"])

        def step(name: str) -> None:
            records.set_follow_up(self.db, bug_id, "running", name, "", int(time.time()))

        records.set_follow_up(self.db, bug_id, "running", "start", "", int(time.time()), job["representative"])
        result = follow_up_finding(Path(job["representative"]), self.config,
                                   stoppable(self.open_target, self.stopping), self.model_for, step)
        if self.stopping.is_set():          # cut short: the next start follows it up again
            records.set_follow_up(self.db, bug_id, "queued", "", "", int(time.time()))
            return
        if result.reproducibility:
            records.record_reproducibility(self.db, bug_id, list(result.reproducibility), int(time.time()))
        self.import_now(refresh=True)       # triage status from the new artifacts (flaky, unconfirmed)
        records.set_follow_up(self.db, bug_id, "done" if result.ok else "failed", "", result.detail, int(time.time()))
        log.info("bug %d followed up: %s", bug_id, result.detail)

    # ---- status -----------------------------------------------------------------------------------

    def status(self) -> dict:
        kernels = []
        for row in records.kernels(self.db):
            live = self.live.get(row["name"], {})
            running = row["name"] in self._stops
            state = "running" if running else ("waiting for guests" if row["enabled"] else "stopped")
            state = state if self.config.kernel(row["name"]) else "not configured"
            kernels.append({**row, "enabled": bool(row["enabled"]), "running": running, "state": state, **live})
        return {"state": str(self.state), "database": self.db.dialect, "since": self.started,
                "guests": {"capacity": self.pool.capacity, "in_use": self.pool.in_use()},
                "kernels": kernels, **records.counts(self.db),
                "follow_ups": records.follow_up_counts(self.db)}


def _label(kernel: KernelConfig) -> str:
    """The kernel label (pins resolve offline once fetched); '' if the pin cannot be resolved now."""
    try:
        return kernel.spec.label
    except ToolError:
        return ""
