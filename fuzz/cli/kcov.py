"""`procfuzz coverage`: what a corpus reaches of the kernel's proc code (parses nothing, calls
fuzz.triage.kernel_coverage and prints)."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import corpus

from fuzz.errors import EXIT_OK, EXIT_TOOL, ToolError

from .commands import _spec


def cmd_coverage(args) -> int:
    from fuzz.record.programs import load_directory
    from fuzz.report.kernel_coverage import write_coverage
    from fuzz.triage.kernel_coverage import format_text, measure
    from targets.coverage import EXACT
    from targets.coverage.lists import ListError, load_probe_list
    from targets.kernels import KernelError, find_pin
    try:
        probes = load_probe_list(args.kernel)
        pin = find_pin(args.kernel).name
    except (ListError, KernelError) as err:
        raise ToolError(str(err)) from None
    programs, errors = [], []
    for directory in [Path(args.corpus)] if args.corpus else corpus.SEED_DIRS:
        if not directory.is_dir():
            raise ToolError(f"no corpus directory {directory}")
        found, unreadable = load_directory(directory)
        programs += found
        errors += unreadable
    for err in errors:
        print(f"skipped: {err}", file=sys.stderr)
    with args.open_target(replace(_spec(args), coverage=EXACT)) as target:
        coverage = measure(programs, target, probes)
    for line in format_text(coverage):
        print(line)
    report = Path(args.report or (Path(args.corpus).resolve().parent / "report" if args.corpus else "report"))
    paths = write_coverage(coverage, report, pin)
    print(f"wrote {paths['html']} and {paths['json'].name}")
    return EXIT_TOOL if errors or coverage.failed else EXIT_OK
