"""Bug zoo: time and programs to the first finding of each injected bug, then a control campaign.

    procfuzz bench zoo [--budget-per-bug 5m] [--control-budget B] [--kernel K] [--bugs a,b] [--kernel-coverage]
                       [--seed S] [--workers 1|2] [--seeded-only] [--json FILE] [--out DIR]

For each bug of the zoo (targets/zoo): fresh VMs with the bug injected (WorkerConfig.zoo_bug) and
a normal campaign (run_campaign: the seed corpus corpus/seeds + corpus/regressions replayed
first, then programs of the generator and mutations), fixed seed, stopped at the
first new finding of one of the bug's classes.  A seed that catches a bug is weak evidence (it
was written by hand, often for that very shape), so a second campaign per bug runs without the
seed corpus: generated and mutated programs only (skip it with --seeded-only).  A finding of
another class is listed but does not count.  Then a control campaign on the stock kernel, which
must have no findings beyond the known issues (corpus/known-issues.toml).

Times are wall seconds from the campaign's start, VM boot included; programs are the count all
workers had reported when the finding showed (workers report about once a second, so both can
be late by a second's worth).  Exit 0 when every bug was found and the control is clean, 1 when
not, 2 on a tool failure.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from corpus import KNOWN_ISSUES, SEED_DIRS  # noqa: E402
from fuzz.campaign.parallel import run_campaign  # noqa: E402
from fuzz.campaign.run import parse_duration, parse_state_check  # noqa: E402
from fuzz.campaign.worker import WorkerConfig  # noqa: E402
from fuzz.compare.oracle import STATE_CHECK  # noqa: E402
from fuzz.errors import ToolError  # noqa: E402
from fuzz.execute.kernels import KernelSpec  # noqa: E402
from fuzz.record import store  # noqa: E402
from fuzz.record.known import load_known_issues  # noqa: E402
from fuzz.record.programs import atomic_write, load_directory  # noqa: E402
from fuzz.record.summary import Stats  # noqa: E402
from reference.state_check import with_state_check  # noqa: E402
from targets.coverage import FEEDBACK  # noqa: E402

# The classes of divergence each bug's mechanism causes (targets/zoo/README.md); a finding of
# another class does not count.  tests/test_zoo.py checks that this lists exactly the bugs of
# zoo.c's table.  sysctl_wrong_netns has two classes because its wrong dentry can both show and
# hide: a lookup matching another network namespace's cached directory shows that namespace's
# entries (stale) and hides the reader's own (missing, the more frequent first sign).
EXPECTED_CLASSES = {
    "stale_pid": ("stale",),
    "stale_tid": ("stale",),
    "stale_sysctl": ("stale",),
    "sysctl_wrong_netns": ("stale", "missing"),
    "hidepid_wrong_mount": ("visibility",),
    "leak_pidns": ("leak",),
    "leak_dentry": ("leak",),
    # crash bugs: the kernel reports (oops, BUG, WARN) or a program blocks for good
    "crash_lookup_null": ("crash",),
    "crash_lookup_gpf": ("crash",),
    "warn_sysctl_length": ("crash",),
    "hang_sysctl_rtnl": ("hang", "crash"),
    "bug_splice_hashed": ("crash",),
}

# The leak oracle (fuzz/leaks.py) suspects a program when a cache grew by more than its
# tolerance (2 for dentry, proc_inode_cache and pid_namespace) since the previous measured
# program, and confirms only if re-running that program grows the cache at every run.  So the
# measured program must leak itself, and the gap to the previous measurement must hold enough
# growth: leak_dentry pins 4 dentries and inodes per program that looks up a pid (measuring
# every program would do), but leak_pidns pins one namespace per program that reads a proc
# root, which passes the tolerance only when several programs of the gap leaked.  Measuring
# every program (--leak-every 1) is then blind to it unless one program reads three namespaces'
# roots: the bench keeps the default of `procfuzz run`, every 10th program, for every campaign.
DEFAULT_LEAK_EVERY = WorkerConfig.leak_every


@dataclass
class PassResult:
    """One campaign: a bug (or the stock kernel, bug None) with or without the seed corpus."""
    bug: str | None
    seeded: bool
    detected: bool = False
    seconds: float | None = None        # to the first finding of an expected class
    programs: int | None = None
    origin: str | None = None           # "seed <file>" or "generated" (generated or mutated)
    finding: str | None = None          # its directory
    # The first new finding of any class: on a kernel whose control run is clean, the bug's
    # doing even when the oracle files it under another class.
    any_seconds: float | None = None
    any_programs: int | None = None
    any_classes: list = field(default_factory=list)
    total_seconds: float = 0.0
    total_programs: int = 0
    findings: dict = field(default_factory=dict)    # class -> new findings (known issues excluded)
    known: int = 0                      # findings of known issues and duplicates
    errors: list = field(default_factory=list)


def seed_origins() -> dict[str, str]:
    """program id -> "seed <file name>" for the seed corpus, run with its state check or without."""
    return {run.id: f"seed {path.name}" for directory in SEED_DIRS
            for path, program in load_directory(directory)[0] for run in (program, with_state_check(program))}


def first_finding(out: Path, classes: tuple[str, ...]) -> Path | None:
    """The earliest recorded new finding of one of ``classes`` (``recorded`` has whole seconds:
    ties go to the smaller program id)."""
    candidates = []
    for directory in store.list_findings(out):
        finding = store.load(directory)
        if finding.divergence.cls in classes and not finding.is_known:
            candidates.append((store.recorded_at(directory), directory.name, directory))
    return min(candidates)[2] if candidates else None


def run_pass(result: PassResult, *, kernel: str | None, label: str, profile, out: Path, budget: float,
             seed: int, workers: int, known, stop_all, expected: tuple[str, ...],
             leak_every: int, origins: dict[str, str], state_check: int = WorkerConfig.state_check,
             coverage: bool = False) -> PassResult:
    """One campaign into ``out``; stops early at the first new finding of an ``expected`` class."""
    corpus = out / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    configs = [WorkerConfig(i, seed, profile, label, out, corpus, started + budget, known=known,
                            seed_dirs=SEED_DIRS if result.seeded else (), leak_every=leak_every,
                            state_check=state_check)
               for i in range(workers)]
    stop = multiprocessing.get_context("spawn").Event()

    def on_update(stats: Stats) -> None:
        if stats.findings and result.any_seconds is None:
            result.any_seconds = round(time.monotonic() - started, 1)
            result.any_programs = stats.programs
            result.any_classes = sorted(stats.findings)
        if not result.detected and any(stats.findings.get(cls) for cls in expected):
            result.detected = True
            result.seconds = round(time.monotonic() - started, 1)
            result.programs = stats.programs
        if result.detected or stats.errors or stop_all.is_set():
            stop.set()

    stats = run_campaign(configs, KernelSpec(kernel, result.bug, coverage=FEEDBACK if coverage else None), on_update, stop)
    result.total_seconds = round(time.monotonic() - started, 1)
    result.total_programs = stats.programs
    result.findings = dict(stats.findings)
    result.known = stats.duplicates
    result.errors = stats.errors
    if expected and (directory := first_finding(out, expected)):
        result.detected = True
        result.finding = str(directory)
        result.origin = origins.get(directory.name, "generated")
    return result


def corpus_name(seeded: bool) -> str:
    return "seeds + generated" if seeded else "generated only"


def render(results: list[PassResult], control: PassResult | None) -> None:
    from rich.console import Console
    from rich.table import Table
    table = Table(title="bug zoo: first finding of an expected class")
    for column in ("bug", "class", "corpus", "found", "seconds", "programs", "first finding from",
                   "first of any class", "other findings", "programs run"):
        table.add_column(column)
    for r in results:
        expected = EXPECTED_CLASSES[r.bug]
        others = {c: n for c, n in r.findings.items() if c not in expected}
        table.add_row(r.bug, "|".join(expected), corpus_name(r.seeded),
                      "yes" if r.detected else "[bold red]NO[/]",
                      "" if r.seconds is None else f"{r.seconds:.1f}",
                      "" if r.programs is None else str(r.programs), r.origin or "",
                      "" if r.any_seconds is None else
                      f"{'/'.join(r.any_classes)} {r.any_seconds:.1f} s, {r.any_programs} programs",
                      ", ".join(f"{c} {n}" for c, n in sorted(others.items())) or "-",
                      f"{r.total_programs} in {r.total_seconds:.0f} s")
    if control:
        clean = not control.findings
        table.add_row("(control)", "none", corpus_name(True), "clean" if clean else "[bold red]FINDINGS[/]",
                      "", "", "", "", ", ".join(f"{c} {n}" for c, n in sorted(control.findings.items())) or "-",
                      f"{control.total_programs} in {control.total_seconds:.0f} s", end_section=True)
    Console(width=None if sys.stdout.isatty() else 150).print(table)


# The state check's comparison (--state-check-compare): the bugs a stale or wrong dentry makes,
# generated programs only, each bug with several seeds and with the check off and on.
CHECK_BUGS = ("stale_pid", "stale_tid", "stale_sysctl", "sysctl_wrong_netns", "hidepid_wrong_mount")
FOUND_WITHIN = 60.0


def compare_state_check(args, common: dict, bugs: list[str], budget: float, out: Path, stop_all) -> dict:
    """Every (bug, seed, check setting) campaign not already in ``args.json`` (so a long
    comparison can be resumed, or run one column at a time), then the table of both columns."""
    path = Path(args.json) if args.json else None
    previous = json.loads(path.read_text()) if path and path.is_file() else {}
    runs = [r for r in previous.get("runs", []) if r["budget_s"] == budget]
    done = {(r["bug"], r["seed"], r["check"]) for r in runs}
    seeds = [int(s) for s in args.seeds.split(",")]
    for bug in bugs:
        for check in args.checks.split(","):
            for seed in seeds:
                if (bug, seed, check) in done or stop_all.is_set():
                    continue
                result = run_pass(PassResult(bug, False), out=out / bug / f"check-{check}-seed-{seed}",
                                  budget=budget, expected=EXPECTED_CLASSES[bug], leak_every=args.leak_every,
                                  state_check=parse_state_check(check), **{**common, "seed": seed})
                by_check = bool(result.finding) and store.load(Path(result.finding)).divergence.detail == STATE_CHECK
                runs.append({"bug": bug, "seed": seed, "check": check, "budget_s": budget, "by_check": by_check,
                             **asdict(result)})
                print(f"{bug:20} check {check:5} seed {seed}: "
                      + (f"found after {result.seconds} s" if result.detected else f"NOT found in {budget:.0f} s")
                      + f", {result.total_programs} programs", flush=True)
                if path:      # after each campaign: an interrupted comparison keeps what it measured
                    atomic_write(path, json.dumps({**previous, "runs": runs}, indent=1, sort_keys=True))
    return check_table(runs, bugs, args.checks.split(","), budget, common["label"], args.workers)


def check_table(runs: list[dict], bugs: list[str], checks: list[str], budget: float, label: str,
                workers: int) -> dict:
    """bench/render.py's table: per bug and check setting, the median seconds to the first finding
    (a campaign that found nothing counts as never), the campaigns that found it within 60 s and
    the programs run a second; a last row counts the bugs whose median is within 60 s."""
    medians = {(bug, check): _median([r for r in runs if r["bug"] == bug and r["check"] == check])
               for bug in bugs for check in checks}
    columns, rows = ["bug"], []
    for check in checks:
        columns += [f"check {check}: median s", f"check {check}: found in 60 s", f"check {check}: programs/s"]
    for bug in bugs:
        row = [bug]
        for check in checks:
            mine = [r for r in runs if r["bug"] == bug and r["check"] == check]
            rate = sum(r["total_programs"] for r in mine) / max(sum(r["total_seconds"] for r in mine), 1e-9)
            row += [_seconds(medians[bug, check], budget),
                    f"{sum(r['detected'] and r['seconds'] <= FOUND_WITHIN for r in mine)} of {len(mine)}",
                    round(rate, 1)]
        rows.append(row)
    rows.append(["bugs with a median within 60 s"] + [
        cell for check in checks
        for cell in (f"{sum(medians[bug, check] <= FOUND_WITHIN for bug in bugs)} of {len(bugs)}", None, None)])
    # the slower half of the bugs, by their median without the check
    slower = sorted(bugs, key=lambda bug: medians[bug, checks[0]])[len(bugs) // 2:]
    halves = ", ".join(f"check {check} {_seconds(statistics.median(medians[bug, check] for bug in slower), budget)} s"
                       for check in checks)
    by_check = ", ".join(f"{bug} {n} of {sum(r['bug'] == bug and r['detected'] and r['check'] != 'off' for r in runs)}"
                         for bug in bugs if (n := sum(r.get("by_check", False) for r in runs if r["bug"] == bug)))
    return {
        "title": "Bug zoo with and without the state check: generated programs only",
        "command": f"procfuzz bench zoo --state-check-compare --budget-per-bug {budget:.0f}s "
                   f"--workers {workers} --bugs {','.join(bugs)} --checks {','.join(checks)} --json FILE",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "kernel": label,
        "machine": f"{os.cpu_count()} cores (load average {os.getloadavg()[0]:.1f} at the end), QEMU TCG",
        "columns": columns, "rows": rows, "runs": runs,
        "notes": [f"Each cell: campaigns of one bug with seeds {sorted({r['seed'] for r in runs})}, no seed corpus "
                  f"(generated and mutated programs only), {budget:.0f} s each, {workers} worker(s), stopped at the "
                  "first new finding of the bug's class; seconds from the campaign's start, VM boot included; a "
                  "campaign that found nothing counts as never. programs/s: all programs of the cell's campaigns "
                  "over their time (boot included, so short campaigns show less).",
                  "check every: the end-of-program state check (reference/state_check.py) after every program; "
                  "check N: after every Nth; check off: none.",
                  f"The slower half of the bugs with check {checks[0]} ({', '.join(slower)}): the median of their "
                  f"medians is {halves}.",
                  f"First findings made by an op of the state check: {by_check or 'none'}; the others by a generated "
                  "op (the check's ops also change which programs join the corpus)."],
    }


def _median(runs: list[dict]) -> float:
    return statistics.median(r["seconds"] if r["detected"] else float("inf") for r in runs) if runs else float("inf")


def _seconds(value: float, budget: float):
    return round(value, 1) if value != float("inf") else f"> {budget:.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="procfuzz bench zoo", description=__doc__.splitlines()[0])
    parser.add_argument("--budget-per-bug", default="5m", help="budget of each campaign (e.g. 90s, 5m)")
    parser.add_argument("--control-budget", default=None, help="budget of the control campaign "
                        "(default: the budget per bug)")
    parser.add_argument("--kernel", default=None)
    parser.add_argument("--bugs", default=",".join(EXPECTED_CLASSES), help="comma-separated zoo bugs")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, choices=(1, 2), default=2)
    parser.add_argument("--leak-every", type=int, default=DEFAULT_LEAK_EVERY,
                        help="slab counts for every Nth program in every campaign (default: as procfuzz run; "
                             "a leak of one object per program needs a gap of several programs)")
    parser.add_argument("--seeded-only", action="store_true",
                        help="skip the second campaign per bug without the seed corpus")
    parser.add_argument("--kernel-coverage", action="store_true",
                        help="the campaigns with kernel coverage feedback (run --kernel-coverage)")
    parser.add_argument("--no-control", action="store_true", help="skip the control campaign")
    parser.add_argument("--state-check-compare", action="store_true",
                        help="instead: generated programs only, each bug with every --seeds and --checks "
                             "(default bugs: those of a stale or wrong dentry); resumes from --json FILE")
    parser.add_argument("--seeds", default="1,2,3", help="with --state-check-compare: the seeds of each cell")
    parser.add_argument("--checks", default="off,every",
                        help="with --state-check-compare: the settings to compare, each off, every or N")
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    parser.add_argument("--out", default=None, help="findings of every campaign (default: a new temporary directory)")
    args = parser.parse_args(argv)

    from targets.kernels import KernelError, load_profile, resolve
    budget = parse_duration(args.budget_per_bug)
    control_budget = parse_duration(args.control_budget) if args.control_budget else budget
    bugs = [b.strip() for b in args.bugs.split(",") if b.strip()]
    unknown = [b for b in bugs if b not in EXPECTED_CLASSES]
    if unknown or not bugs:
        raise ToolError(f"unknown zoo bug(s) {', '.join(unknown) or '(none given)'}: choose from {', '.join(EXPECTED_CLASSES)}")
    try:
        profile, label = load_profile(args.kernel), resolve(args.kernel).label
    except KernelError as err:
        raise ToolError(str(err)) from None
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="procfuzz-bench-zoo-"))
    known = load_known_issues(KNOWN_ISSUES)
    origins = seed_origins()
    stop_all = multiprocessing.get_context("spawn").Event()

    def interrupt(signum, _frame):
        print(f"\nprocfuzz: {signal.Signals(signum).name}: stopping", file=sys.stderr)
        stop_all.set()
    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    common = dict(kernel=args.kernel, label=label, profile=profile, seed=args.seed, workers=args.workers,
                  known=known, stop_all=stop_all, origins=origins, coverage=args.kernel_coverage)
    started = datetime.datetime.now(datetime.timezone.utc)
    if args.state_check_compare:
        bugs = bugs if args.bugs != parser.get_default("bugs") else list(CHECK_BUGS)
        try:
            report = compare_state_check(args, common, bugs, budget, out, stop_all)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if args.json:
            atomic_write(Path(args.json), json.dumps(report, indent=1, sort_keys=True))
        print(json.dumps({"columns": report["columns"], "rows": report["rows"]}, indent=1))
        return 0
    print(f"bench zoo on {label}: {len(bugs)} bug(s), {budget:.0f} s per campaign, seed {args.seed}, "
          f"{args.workers} worker(s), findings under {out}", flush=True)
    results: list[PassResult] = []
    control = None
    try:
        for bug in bugs:
            for seeded in (True,) if args.seeded_only else (True, False):
                if stop_all.is_set():
                    break
                result = run_pass(PassResult(bug, seeded), out=out / bug / ("seeded" if seeded else "generated"),
                                  budget=budget, expected=EXPECTED_CLASSES[bug], leak_every=args.leak_every,
                                  **common)
                results.append(result)
                print(f"{bug:20} {corpus_name(seeded):18} "
                      + (f"found after {result.seconds} s, {result.programs} programs ({result.origin})"
                         if result.detected else f"NOT found in {result.total_seconds} s, "
                                                 f"{result.total_programs} programs")
                      + (f"; first finding of any class: {'/'.join(result.any_classes)} after "
                         f"{result.any_seconds} s" if result.any_seconds is not None else ""), flush=True)
        if not args.no_control and not stop_all.is_set():
            control = run_pass(PassResult(None, True), out=out / "control", budget=control_budget,
                               expected=(), leak_every=args.leak_every, **common)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    render(results, control)
    errors = [e for r in results + ([control] if control else []) for e in r.errors]
    done = all(r.detected for r in results) and control is not None and not control.findings
    report = {
        "kernel": label, "seed": args.seed, "workers": args.workers, "budget_per_bug_s": budget,
        "control_budget_s": control_budget, "started": started.isoformat(timespec="seconds"),
        "host": {"cpus": os.cpu_count(), "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "leak_every": args.leak_every, "kernel_coverage": args.kernel_coverage,
        "expected_classes": {b: EXPECTED_CLASSES[b] for b in bugs},
        "bugs": [asdict(r) for r in results], "control": asdict(control) if control else None,
        "out": str(out), "done": done, "interrupted": stop_all.is_set(),
    }
    if args.json:
        atomic_write(Path(args.json), json.dumps(report, indent=1, sort_keys=True))
        print(f"results written to {args.json}")
    for error in errors:
        print(f"procfuzz: worker failed: {error}", file=sys.stderr)
    if errors:
        return 2
    return 0 if done else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ToolError as err:
        print(f"procfuzz: {err}", file=sys.stderr)
        sys.exit(2)
