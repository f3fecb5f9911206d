"""Throughput of the QEMU target on a fixed program set.

    python bench/bench_target.py [--kernel 6.1-cloud] [--rounds 10] [--pings 200]
                                 [--load-module PATH.ko[:params] ...]

Prints boot-to-ready time, ping round trip, programs/s and ops/s, and where the wall time of
the programs goes: executing ops in the guest (the agent's ops_us), the agent's sandbox set-up
and teardown (total_us - ops_us), and the rest (serial transport, host side, scheduling).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz.errors import ToolError  # noqa: E402
from fuzz.execute.kernels import KernelSpec, open_qemu  # noqa: E402
from reference.program import parse_text  # noqa: E402

PROGRAMS = [parse_text(text) for text in (
    """\
m1 = mount_proc p1
readdir p1 {m1}
readdir p1 {m1}/{p1}
readdir p1 {m1}/{p1}/task/{p1}
lookup p1 {m1}/self
readlink p1 {m1}/thread-self
""",
    """\
m1 = mount_proc p1
p2 = spawn p1
t1 = spawn_thread p2
readdir p1 {m1}/{p2}/task
exit t1
lookup p1 {m1}/{p2}/task/{t1}
exit p2
lookup p1 {m1}/{p2}/status
reap p1 p2
lookup p1 {m1}/{p2}
""",
    """\
p2 = spawn p1 newpid=1
m1 = mount_proc p2 hidepid=invisible
m2 = mount_proc p1
p3 = spawn p2
setuid p3 1000
readdir p3 {m1}
lookup p1 {m2}/{p3}/status
umount p1 m1
""",
    """\
m1 = mount_proc p1
p2 = spawn p1
t1 = spawn_thread p2
f1 = open p1 {m1}/{p2}/status
chdir p1 {m1}/{p2}/task
exec t1
read p1 f1
getdents p1 cwd
close p1 f1
""",
    """\
m1 = mount_proc p1
lookup p1 {m1}/{p1}/fd
drop_caches
lookup p1 {m1}/{p1}/fd
readdir p1 {m1}/sys/kernel
""",
)]


def measure(target, rounds: int, pings: int) -> None:
    print(f"kernel           {target.label} ({target.accel})"
          + "".join(f", module {spec.path.name} {spec.params}".rstrip() for spec in target.modules))
    print(f"boot to ready    {target.boot_seconds[0]:.2f} s")
    round_trips = [target.ping() for _ in range(pings)]
    print(f"ping round trip  median {statistics.median(round_trips) * 1e3:.2f} ms, "
          f"p90 {statistics.quantiles(round_trips, n=10)[-1] * 1e3:.2f} ms")

    ops = programs = guest_us = agent_us = 0
    failures = []
    started = time.monotonic()
    for _ in range(rounds):
        for program in PROGRAMS:
            trace = target.run(program)
            programs += 1
            ops += len(program)
            if trace.outcome != "ok":
                failures.append(f"{trace.outcome}: {trace.title}")
                continue
            guest_us += trace.guest_us
            agent_us += trace.extra["total_us"] - trace.guest_us
    wall_us = (time.monotonic() - started) * 1e6
    print(f"programs         {programs} ({ops} ops) in {wall_us / 1e6:.2f} s: "
          f"{programs / wall_us * 1e6:.1f} programs/s, {ops / wall_us * 1e6:.1f} ops/s")
    print(f"time in ops      {guest_us / wall_us:6.1%}  (guest, agent's ops_us)")
    print(f"sandbox          {agent_us / wall_us:6.1%}  (guest, agent's total_us - ops_us)")
    print(f"transport/host   {1 - (guest_us + agent_us) / wall_us:6.1%}  (serial channel, host, restarts)")
    if failures:
        print(f"{len(failures)} program(s) did not run cleanly; first: {failures[0]}")
    if target.restarts:
        print(f"restarts         {target.restarts}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", default=None, help="pin name or package[=version] (default: the default pin)")
    parser.add_argument("--rounds", type=int, default=10, help="times the program set is run")
    parser.add_argument("--pings", type=int, default=200)
    parser.add_argument("--load-module", action="append", default=[], metavar="PATH.ko[:params]",
                        help="load an out-of-tree module into the guest after boot (repeatable): "
                             "what it costs shows in the figures")
    args = parser.parse_args()

    try:
        with open_qemu(KernelSpec.from_options(args.kernel, None, args.load_module)) as target:
            measure(target, args.rounds, args.pings)
    except ToolError as err:        # a bad --kernel or --load-module
        print(f"procfuzz: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
