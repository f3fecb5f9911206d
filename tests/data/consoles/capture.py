"""Capture the real console logs of tests/data/consoles from the pinned kernels.

Each case boots its own guest (a zoo bug stays loaded for the guest's life), provokes one kernel
report and saves the guest's whole raw console (boot messages included: the parser must find
the report among them) as ``<kernel pin>-<case>.log``, then prints the title it parses to today.
The expected titles in expected.toml are written by hand after reading each log.

    python3 -m tests.data.consoles.capture [--kernel 6.1-cloud] [--kernel 6.12-cloud] [CASE ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reference.program import parse_text
from targets.console import find_report
from targets.qemu import QemuTarget

OUT_DIR = Path(__file__).parent
KERNELS = ("6.1-cloud", "6.12-cloud")
# A hung task is reported after hung_task_timeout_secs (1 s here, set by the program) plus up
# to one check interval; the agent's reply watchdog must outlast that under a loaded TCG host.
# The blocked task's stack is printed at KERN_INFO, below the guest's loglevel=5: the program
# raises the console loglevel to 7 first.
HANG_WATCHDOG = 40.0

LOOKUP_IN_NEW_PIDNS = parse_text("""\
m1 = mount_proc p1
lookup p1 {m1}/1
""")

LOOKUP_BELOW_PID = parse_text("""\
m1 = mount_proc p1
lookup p1 {m1}/1/status
""")

READ_INT_SYSCTL = parse_text("""\
m1 = mount_proc p1
f1 = open p1 {m1}/sys/net/ipv4/conf/lo/forwarding
read p1 f1
""")

LINK_ADD_AFTER_FORWARDING = parse_text("""\
m1 = mount_proc p1
f1 = open p1 {m1}/sys/kernel/hung_task_timeout_secs rw=1
write p1 f1 1
f3 = open p1 {m1}/sys/kernel/printk rw=1
write p1 f3 7
f2 = open p1 {m1}/sys/net/ipv4/conf/lo/forwarding rw=1
write p1 f2 1
link_add p1 dummy0 kind=dummy
""")

# case -> (zoo bug or None for the agent's sysrq panic, program)
CASES = {
    "sysrq-panic": (None, None),
    "crash_lookup_null": ("crash_lookup_null", LOOKUP_IN_NEW_PIDNS),
    "crash_lookup_gpf": ("crash_lookup_gpf", LOOKUP_IN_NEW_PIDNS),
    "bug_splice_hashed": ("bug_splice_hashed", LOOKUP_BELOW_PID),
    "warn_sysctl_length": ("warn_sysctl_length", READ_INT_SYSCTL),
    "hang_sysctl_rtnl": ("hang_sysctl_rtnl", LINK_ADD_AFTER_FORWARDING),
}


class CapturingTarget(QemuTarget):
    """A QemuTarget that keeps the raw console of the guest it throws away after a failure,
    and does not boot a replacement (each case needs a fresh guest anyway)."""

    raw_console = ""

    def restart(self) -> None:
        self.raw_console = self.vm.read_console(0)
        self.close()


def capture(kernel: str, case: str) -> Path:
    bug, program = CASES[case]
    with CapturingTarget(kernel, zoo=bug is not None, watchdog_base=HANG_WATCHDOG) as target:
        if bug:
            result = target.load_zoo(bug)
            if result != "ok":
                raise RuntimeError(f"{kernel}: zoo {bug}: {result}")
        trace = target.control("panic") if program is None else target.run(program)
        if trace.outcome not in ("crash", "hang"):
            raise RuntimeError(f"{kernel} {case}: no kernel report ({trace.outcome}: {trace.results})")
        path = OUT_DIR / f"{kernel}-{case}.log"
        path.write_text(target.raw_console)
    report = find_report(path.read_text())
    print(f"{path.name}: {trace.outcome}: {report.title if report else None!r}")
    return path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", action="append", choices=KERNELS)
    parser.add_argument("cases", nargs="*", metavar="CASE", help=f"of: {', '.join(CASES)}")
    args = parser.parse_args(argv)
    if unknown := set(args.cases) - set(CASES):
        parser.error(f"unknown cases: {', '.join(sorted(unknown))}")
    for kernel in args.kernel or KERNELS:
        for case in args.cases or CASES:
            capture(kernel, case)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
