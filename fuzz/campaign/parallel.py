"""Campaigns of several workers: one process per worker, each with its own VM, reporting its
counters to the parent through a queue.

Only the parent decides when a campaign stops.  Each worker runs in a session of its own (its
QEMU with it), so the terminal's Ctrl-C, a hangup or a signal to the parent's process group
reaches the parent alone; workers ignore SIGINT, SIGTERM and SIGHUP besides.  The parent stops
them through the stop event (each ends the program it runs and reports), or, for a worker still
booting or when the operator insists, with ABORT_SIGNAL: that unwinds the worker at once through
its clean-ups (a finding being staged is removed, the VM closed) and ends it quietly.  SIGKILL
is the last resort.  A worker whose parent dies gets ABORT_SIGNAL too.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import queue as queues
import signal
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

from fuzz.errors import ToolError
from fuzz.execute.kernels import KernelSpec, TargetOpener, open_qemu
from fuzz.record.programs import is_disk_full
from fuzz.record.summary import Stats

from .startup import StartCorpus
from .worker import WorkerConfig, run_worker, starting_programs

ABORT_SIGNAL = signal.SIGUSR1
KILL_GRACE = 3.0               # seconds aborted workers get to unwind before SIGKILL
STUCK_AFTER = 10.0             # seconds after which a worker aborted by the stop counts as stuck
BOOTED = "booted"              # a worker's message: its target is up
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PR_SET_PDEATHSIG = 1


class Abort(SystemExit):
    """The parent ends this worker now (a SystemExit: no traceback, no tool error)."""


@dataclass(frozen=True)
class NoSpace:
    """A worker's message: a write under the output directory found the disk full."""
    detail: str


def _abort(_signum, _frame):
    signal.signal(ABORT_SIGNAL, signal.SIG_IGN)     # once: a second one must not cut the clean-ups short
    raise Abort(0)


def _detach() -> None:
    """Out of the parent's session and deaf to the operator's signals: only the parent stops us.
    (A worker is born ignoring them, see _born_deaf; until here they were also blocked.)"""
    os.setsid()
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    signal.signal(ABORT_SIGNAL, _abort)
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, ABORT_SIGNAL)
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:
        raise Abort(0)                  # the parent died before the line above


@contextmanager
def _born_deaf() -> Iterator[None]:
    """Workers started in here ignore the stop signals from their first instruction (an ignored
    signal stays ignored across exec, and Python then installs no KeyboardInterrupt), so a
    Ctrl-C while one still imports cannot reach it.  Meanwhile the parent holds them blocked:
    pending, not lost, they reach its own handlers afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield                           # signal dispositions belong to the main thread
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def _send(queue, message) -> None:
    """queue.put with the abort held off until it returns.  A queue's first put starts its
    feeder thread, then registers the finalizers that stop and join it: an Abort between the
    two would leave the worker's exit joining a feeder that is never told to stop."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {ABORT_SIGNAL})
    try:
        queue.put(message)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {ABORT_SIGNAL})


def _worker_main(config: WorkerConfig, kernel: KernelSpec, open_target: TargetOpener, start: StartCorpus,
                 queue, stop_event):
    _detach()
    booted = False
    try:
        if stop_event.is_set():
            return
        with open_target(kernel) as target:
            booted = True
            _send(queue, (config.index, BOOTED))
            run_worker(config, target, lambda s: _send(queue, (config.index, s)), stop_event.is_set, start)
    except Abort:
        _end_now(queue, config.index)
    except ToolError as err:
        # The kernel would not boot (BootFailed after its retries): this worker stops and says
        # why; the campaign goes on with the others.  After the boot it is a failure like any.
        if booted:
            _send(queue, (config.index, Stats(errors=[f"worker {config.index}: {err}"])))
        elif not stop_event.is_set():
            _send(queue, (config.index, Stats(stopped=[f"worker {config.index}: {err}"])))
    except Exception as err:  # noqa: BLE001 - reported to the parent
        if is_disk_full(err):
            _send(queue, (config.index, NoSpace(_space_detail(err))))
        elif booted or not stop_event.is_set():     # a boot cut short by the stop is no failure
            _send(queue, (config.index, Stats(errors=[f"worker {config.index}: {traceback.format_exc(limit=6)}"])))
    finally:
        _send(queue, (config.index, None))


def _end_now(queue, index: int) -> None:
    """End an aborted worker from inside its exception handler: the clean-ups on the way here
    have run (staging removed, VM closed or, mid-boot, left to die with us), and leaving before
    the half-built objects of an interrupted boot are collected keeps their complaints off the
    operator's terminal (asyncio's "Task was destroyed but it is pending")."""
    _send(queue, (index, None))
    queue.close()
    queue.join_thread()
    os._exit(0)


def _space_detail(err: OSError) -> str:
    """What the worker was writing when the disk filled up, and the system's word for it."""
    what, frame = "writing", err.__traceback__
    while frame:
        what = {"record": "recording a finding", "save_program": "saving a corpus program"}.get(
            frame.tb_frame.f_code.co_name, what)
        frame = frame.tb_next
    return f"{what}: {os.strerror(err.errno)}" + (f" ({err.filename})" if err.filename else "")


def guest_cpus_for(workers: int, host_cpus: int | None) -> int:
    """vCPUs per guest so that the workers' guests do not oversubscribe the host: under TCG each
    vCPU is a busy host thread, and a worker also needs a core for generation and the model.
    Measured on 2 cores (`procfuzz bench scaling`): one worker does 12 programs/s with 1 or 2
    vCPUs alike; two workers do 10.6 programs/s with 2 vCPUs each but 19.4 with 1 each."""
    return max(1, min(2, (host_cpus or 1) // max(1, workers)))


@dataclass
class Outcome:
    stats: Stats
    no_space: str | None = None         # why a worker's write failed, if the disk was full
    killed: bool = False                # the workers were killed at the operator's insistence


@dataclass
class _Campaign:
    workers: dict                       # index -> Process
    queue: object
    on_update: Callable[[Stats], None]
    latest: dict = field(default_factory=dict)
    booted: set = field(default_factory=set)
    ended: set = field(default_factory=set)
    aborted: dict = field(default_factory=dict)     # index -> when it was sent ABORT_SIGNAL
    outcome: Outcome = field(default_factory=lambda: Outcome(Stats()))
    stuck_after: float = STUCK_AFTER

    def follow(self, stop_event, kill_now: Callable[[], bool]) -> None:
        while len(self.ended) < len(self.workers):
            if kill_now():
                self.kill()
                return
            if stop_event.is_set():     # booting workers just end
                self.abort([i for i in self.workers if i not in self.booted])
            self.kill_stuck()
            try:
                index, message = self.queue.get(timeout=0.5)
            except queues.Empty:
                if not any(w.is_alive() for w in self.workers.values()):
                    return
                self.on_update(self.total())
                continue
            self.receive(index, message, stop_event)
            self.on_update(self.total())

    def receive(self, index: int, message, stop_event) -> None:
        if message is None:
            self.ended.add(index)
        elif message == BOOTED:
            self.booted.add(index)
        elif isinstance(message, NoSpace):
            self.outcome.no_space = self.outcome.no_space or message.detail
            stop_event.set()
        elif message.errors and index in self.latest:
            self.latest[index].errors += message.errors
        else:
            self.latest[index] = message

    def abort(self, indices) -> None:
        for index in indices:
            worker = self.workers[index]
            if index not in self.aborted and worker.pid and worker.is_alive():
                self.aborted[index] = time.monotonic()
                try:
                    os.kill(worker.pid, ABORT_SIGNAL)
                except ProcessLookupError:
                    pass

    def kill_stuck(self) -> None:
        """SIGKILL the aborted workers still alive stuck_after their abort.  A worker cut
        short while it started can hang in its exit, its queue's feeder waiting for a lock that
        never comes (seen about once in 15 Ctrl-Cs during start-up): it has nothing left to send,
        and the campaign must end."""
        for index, when in self.aborted.items():
            worker = self.workers[index]
            if index not in self.ended and time.monotonic() - when > self.stuck_after and worker.is_alive():
                worker.kill()
                self.ended.add(index)

    def kill(self) -> None:
        """Abort every worker; SIGKILL those that have not unwound within KILL_GRACE."""
        self.outcome.killed = True
        self.aborted.clear()
        self.abort(list(self.workers))
        deadline = time.monotonic() + KILL_GRACE
        for worker in self.workers.values():
            worker.join(timeout=max(0.0, deadline - time.monotonic()))
            if worker.is_alive():
                worker.kill()

    def total(self) -> Stats:
        total = Stats()
        for stats in self.latest.values():
            total.merge(stats)
        return total


def follow_campaign(configs: list[WorkerConfig], kernel: KernelSpec, on_update: Callable[[Stats], None],
                    stop_event, open_target: TargetOpener = open_qemu, start: StartCorpus | None = None,
                    kill_now: Callable[[], bool] = lambda: False) -> Outcome:
    """Every worker in its own process with its own target, until each ends; the counters summed.
    ``open_target`` must be picklable (a module-level function): workers are spawned.  ``start``
    defaults to the first worker's starting corpus; ``kill_now`` turns true when the operator
    wants the workers gone at once."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    # One snapshot of the corpus for all: a worker that boots later must not start from what
    # another has added meanwhile, or a seeded campaign would not be reproducible.
    if start is None and configs:
        start = starting_programs(configs[0])
    campaign = _Campaign({c.index: context.Process(target=_worker_main, daemon=True,
                                                   args=(c, kernel, open_target, start, queue, stop_event))
                          for c in configs}, queue, on_update)
    with _born_deaf():
        for worker in campaign.workers.values():
            worker.start()
    campaign.follow(stop_event, kill_now)
    for worker in campaign.workers.values():
        worker.join(timeout=30)
        if worker.is_alive():
            worker.kill()
            worker.join()
    campaign.outcome.stats = campaign.total()
    return campaign.outcome


def run_campaign(configs: list[WorkerConfig], kernel: KernelSpec, on_update: Callable[[Stats], None],
                 stop_event, open_target: TargetOpener = open_qemu) -> Stats:
    """follow_campaign's counters (a full disk shows as a tool error in them)."""
    outcome = follow_campaign(configs, kernel, on_update, stop_event, open_target)
    if outcome.no_space:
        outcome.stats.errors.append(f"no space left on device: {outcome.no_space}")
    return outcome.stats
