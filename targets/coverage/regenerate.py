"""Regenerate the committed probe lists (targets/kernels/<package>.kcov.txt, see lists.py):
candidates from unpacked kernel sources, checked against the symbols of each booted pin.

    python -m targets.coverage.regenerate --source 6.1=DIR --source 6.12=DIR [PIN ...]

DIR: ``/usr/src/linux-source-<series>.tar.xz`` (``apt-get install linux-source-6.1
linux-source-6.12``) unpacked, e.g. in /tmp. Only this command needs the sources: CI reads the
committed lists.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

from targets.coverage.lists import (ListError, candidates, format_list, list_path, mirrored_names, probe_list,
                                    series)
from targets.kernels import find_pin, load_pins
from targets.qemu import QemuTarget

# Runs in the guest (busybox): the candidates' text symbols of vmlinux (4 fields = a module's),
# then the candidates ftrace can trace, one "kind base-name symbol" a line (a gcc clone such as
# name.isra.0 is the function under another symbol). Output stays far below the 64 KiB cap.
SYMBOL_SCRIPT = """#!/bin/sh
bb=/bin/busybox
$bb mount -t tracefs none /sys/kernel/tracing 2>/dev/null
$bb awk 'NR==FNR{want[$1]=1;next} NF==3 && ($2=="t"||$2=="T"){split($3,b,".")} NF==3 && (b[1] in want){print "K", b[1], $3}' /kcov/candidates /proc/kallsyms
$bb awk 'NR==FNR{want[$1]=1;next} NF==1{split($1,b,".")} NF==1 && (b[1] in want){print "F", b[1], $1}' /kcov/candidates /sys/kernel/tracing/available_filter_functions
"""


def guest_symbols(pin: str, names: list[str]) -> tuple[dict[str, list[str]], Counter]:
    """(candidate -> its text symbols in kallsyms, ftrace entries per symbol), read in the
    booted pin."""
    files = {"kcov/symbols.sh": SYMBOL_SCRIPT.encode(), "kcov/candidates": "\n".join(names).encode() + b"\n"}
    with QemuTarget(pin, files=files) as target:
        run = target.run_file("kcov/symbols.sh", timeout=600)
    if run.status != "exit 0":
        raise ListError(f"{pin}: symbol script: {run.status}: {run.output[-500:]}")
    kallsyms: dict[str, list[str]] = {}
    ftrace: Counter = Counter()
    for line in run.output.splitlines():
        kind, base, symbol = line.split(" ")
        if kind == "K":
            kallsyms.setdefault(base, []).append(symbol)
        else:
            ftrace[symbol] += 1
    return kallsyms, ftrace


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m targets.coverage.regenerate", description=__doc__.split("\n")[0])
    parser.add_argument("--source", action="append", default=[], metavar="SERIES=DIR",
                        help="an unpacked linux-source tree, e.g. 6.1=/tmp/linux-source-6.1")
    parser.add_argument("pins", nargs="*", help="kernel pins (default: every pin with a source)")
    args = parser.parse_args(argv)
    sources = dict(item.split("=", 1) for item in args.source)
    _, pins = load_pins()
    mirrored = mirrored_names()
    for name in args.pins or [p for p, pin in pins.items() if series(pin.package) in sources]:
        pin = find_pin(name)
        tree = sources.get(series(pin.package))
        if not tree:
            raise ListError(f"{name}: no --source for series {series(pin.package)}")
        found = candidates(Path(tree), mirrored)
        kallsyms, ftrace = guest_symbols(name, sorted(found))
        probes = probe_list(found, kallsyms, ftrace)
        version = (Path(tree) / "Makefile").read_text()
        release = ".".join(re.search(rf"^{key} = (\d+)", version, re.M).group(1)
                           for key in ("VERSION", "PATCHLEVEL", "SUBLEVEL"))
        list_path(pin.package).write_text(format_list(probes, pin.package, release))
        print(f"{name}: {len(probes.functions)} probed, {len(probes.skipped)} left out of {len(found)} candidates")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
