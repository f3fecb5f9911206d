"""Campaigns of several workers: one process per worker, each with its own VM, reporting its
counters to the parent through a queue."""

from __future__ import annotations

import multiprocessing
import signal
import traceback
from typing import Callable

from reference.program import Program

from fuzz.execute.kernels import KernelSpec, TargetOpener, open_qemu
from fuzz.record.summary import Stats

from .worker import WorkerConfig, run_worker, starting_programs


def _worker_main(config: WorkerConfig, kernel: KernelSpec, open_target: TargetOpener, start: list[Program],
                 queue, stop_event):
    signal.signal(signal.SIGINT, signal.SIG_IGN)      # the parent decides when to stop
    try:
        with open_target(kernel) as target:
            run_worker(config, target, lambda s: queue.put((config.index, s)), stop_event.is_set, start)
    except Exception:  # noqa: BLE001 - reported to the parent as a tool failure
        failed = Stats(errors=[f"worker {config.index}: {traceback.format_exc(limit=6)}"])
        queue.put((config.index, failed))
    queue.put((config.index, None))


def guest_cpus_for(workers: int, host_cpus: int | None) -> int:
    """vCPUs per guest so that the workers' guests do not oversubscribe the host: under TCG each
    vCPU is a busy host thread, and a worker also needs a core for generation and the model.
    Measured on 2 cores (`procfuzz bench scaling`): one worker does 12 programs/s with 1 or 2
    vCPUs alike; two workers do 10.6 programs/s with 2 vCPUs each but 19.4 with 1 each."""
    return max(1, min(2, (host_cpus or 1) // max(1, workers)))


def run_campaign(configs: list[WorkerConfig], kernel: KernelSpec, on_update: Callable[[Stats], None],
                 stop_event, open_target: TargetOpener = open_qemu) -> Stats:
    """Every worker in its own process with its own target, until each ends; the counters summed.
    ``open_target`` must be picklable (a module-level function): workers are spawned."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    # One snapshot of the corpus for all: a worker that boots later must not start from what
    # another has added meanwhile, or a seeded campaign would not be reproducible.
    start = starting_programs(configs[0]) if configs else []
    workers = [context.Process(target=_worker_main, args=(c, kernel, open_target, start, queue, stop_event), daemon=True)
               for c in configs]
    for worker in workers:
        worker.start()
    latest: dict[int, Stats] = {}
    running = len(workers)
    while running:
        try:
            index, stats = queue.get(timeout=1.0)
        except Exception:  # noqa: BLE001 - queue.Empty: refresh the display, check liveness
            if not any(w.is_alive() for w in workers):
                break
            on_update(_total(latest))
            continue
        if stats is None:
            running -= 1
        elif stats.errors and index in latest:
            latest[index].errors += stats.errors
        else:
            latest[index] = stats
        on_update(_total(latest))
    for worker in workers:
        worker.join(timeout=30)
    return _total(latest)


def _total(latest: dict[int, Stats]) -> Stats:
    total = Stats()
    for stats in latest.values():
        total.merge(stats)
    return total
