"""The commands of `procfuzz`: each parses nothing, calls the library and prints."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import corpus
from reference.program import Program
from reference.trace import Trace, result_matches

from fuzz.campaign.run import parse_duration
from fuzz.errors import EXIT_FOUND, EXIT_OK, EXIT_TOOL, ToolError
from fuzz.execute.kernels import KernelSpec

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"
BENCHMARKS = tuple(sorted(p.stem.removeprefix("bench_") for p in BENCH_DIR.glob("bench_*.py"))) \
    if BENCH_DIR.is_dir() else ()


# ---- helpers -------------------------------------------------------------------------------------

def _load_case(path: str) -> tuple[Program, Path | None]:
    """A program file, or a finding directory (its program)."""
    from fuzz.record import store
    from fuzz.record.programs import load_program
    target = Path(path)
    if target.is_dir():
        return store.load(target).program, target
    return load_program(target), None


def _spec(args) -> KernelSpec:
    """The kernel of --kernel, --zoo, --load-module and --kernel-coverage."""
    spec = KernelSpec.from_options(getattr(args, "kernel", None), getattr(args, "zoo", None),
                                   getattr(args, "load_module", None) or ())
    from targets.coverage import FEEDBACK
    return replace(spec, coverage=FEEDBACK if getattr(args, "kernel_coverage", False) else None)


def _known(args):
    """The known issues of --known (default corpus/known-issues.toml)."""
    from fuzz.record.known import load_known_issues
    path = Path(args.known) if getattr(args, "known", None) else corpus.KNOWN_ISSUES
    if getattr(args, "known", None) and not path.is_file():
        raise ToolError(f"no known-issues file {path}")
    return load_known_issues(path)


def _say(text: str) -> None:
    print(text, file=sys.stderr)


def print_trace(program: Program, trace: Trace) -> None:
    for index, (op, result) in enumerate(zip(program.ops, trace.results)):
        print(f"{index:3}  {op.to_text():55}  {result}")
    if trace.outcome != "ok":
        print(f"-- {trace.outcome}: {trace.title}")


def print_side_by_side(program: Program, expected: Trace, actual: Trace, first: int | None) -> None:
    from rich.console import Console
    from rich.table import Table
    table = Table(show_lines=False, title=f"program {program.id}  model vs {actual.kernel}")
    for column in ("#", "op", "model", "kernel", ""):
        table.add_column(column, overflow="fold")
    for index, op in enumerate(program.ops):
        want = expected.results[index] if index < len(expected.results) else ""
        got = actual.results[index] if index < len(actual.results) else ""
        same = index < len(actual.results) and result_matches(want, got)
        style = "bold red" if index == first else ("" if same else "yellow")
        table.add_row(str(index), op.to_text(), want, got, "" if same else "<<", style=style)
    Console().print(table)
    if actual.outcome != "ok":
        print(f"kernel outcome: {actual.outcome}: {actual.title}")


def _kernel_list(text: str) -> list[KernelSpec]:
    return [KernelSpec(name.strip()) for name in text.split(",") if name.strip()]


# ---- one case ------------------------------------------------------------------------------------

def cmd_show(args) -> int:
    program, _ = _load_case(args.case)
    print(f"# program {program.id}, {len(program)} ops")
    sys.stdout.write(program.to_json() + "\n" if args.json else program.to_text())
    return EXIT_OK


def cmd_model(args) -> int:
    program, _ = _load_case(args.case)
    trace = args.model_for(args.kernel).run(program)
    print_trace(program, trace)
    return EXIT_OK if trace.outcome == "ok" else EXIT_TOOL


def cmd_exec(args) -> int:
    program, _ = _load_case(args.case)
    with args.open_target(_spec(args)) as target:
        trace = target.run(program)
    print_trace(program, trace)
    return {"ok": EXIT_OK, "crash": EXIT_FOUND, "hang": EXIT_FOUND}.get(trace.outcome, EXIT_TOOL)


def cmd_repro(args) -> int:
    from fuzz.compare.classes import is_tool_failure
    from fuzz.triage.replay import run_case
    program, _ = _load_case(args.case)
    model = args.model_for(args.kernel)
    if (expected := model.run(program)).outcome != "ok":
        raise ToolError(f"the model failed on this program (a procfuzz bug): {expected.title}")
    with args.open_target(_spec(args)) as target:
        case = run_case(program, model, target, _known(args))
    divergence = case.divergence
    first = case.comparison.primary
    print_side_by_side(program, case.expected, case.actual, first.index if first else None)
    for other in case.comparison.divergences:
        print(f"{other.role or 'divergence':11} {other.summary()}")
    if divergence is None:
        print("known issue: every divergence is explained by the known-issues file" if case.comparison.all_known
              else "not reproduced: the kernel agrees with the model")
        return EXIT_OK
    print(f"reproduced: {divergence.summary()}")
    return EXIT_TOOL if is_tool_failure(divergence.cls) else EXIT_FOUND


def cmd_replay(args) -> int:
    from fuzz.record.programs import load_directory
    from fuzz.triage.replay import replay
    programs, errors = load_directory(Path(args.dir))
    for err in errors:
        print(f"skipped: {err}", file=sys.stderr)
    failures = known = 0
    with args.open_target(_spec(args)) as target:
        for case in replay(programs, args.model_for(args.kernel), target, _known(args)):
            failures += case.divergence is not None
            known += case.verdict() == "known"
            shown = case.divergence or case.comparison.primary
            print(f"{case.verdict():9} {case.path}" + (f"  {shown.summary()}" if shown else ""))
    print(f"{len(programs)} programs, {failures} divergent, {known} known issues, {len(errors)} unreadable")
    return EXIT_FOUND if failures else (EXIT_TOOL if errors else EXIT_OK)


# ---- campaigns -----------------------------------------------------------------------------------

def cmd_run(args) -> int:
    from fuzz.campaign.run import RunOptions, new_stop_event, parse_state_check, run, stop_on_signals
    from fuzz.campaign.startup import ReplayLimits
    from fuzz.campaign.status import StatusDisplay
    from fuzz.record.programs import is_disk_full
    if args.runtime != "local" or args.dry_run:
        return _run_on_runtime(args)
    stop = new_stop_event()
    with stop_on_signals(stop, _say) as signals:        # from the start: a stop is never exit 2
        options = RunOptions(_spec(args), parse_duration(args.budget), args.workers, Path(args.out),
                             Path(args.corpus) if args.corpus else None, args.seed, _shard(args.shard),
                             args.max_ops, args.max_programs, args.leak_every,
                             Path(args.known) if args.known else None, args.guest_cpus,
                             replay=ReplayLimits(args.replay_programs, args.replay_seconds),
                             distill=not args.no_distill, state_check=parse_state_check(args.state_check))
        reporter = None
        if args.report_to:
            from fuzz.serve.report_to import reporting_campaign
            from fuzz.serve.service import read_token
            options, reporter = reporting_campaign(args.report_to, options, read_token(args.token_file),
                                                   args.worker_name)
        try:
            with StatusDisplay(options.kernel.label, args.workers, options.budget) as display, \
                    reporter or contextlib.nullcontext():
                on_update = display.update if reporter is None else _both(display.update, reporter.update)
                result = run(options, on_update, stop, args.open_target, lambda: signals.kill)
        except OSError as err:
            if not is_disk_full(err):
                raise
            raise ToolError(f"no space left on device under {args.out}: {err.strerror}") from None
        print(json.dumps(result.summary, indent=1, sort_keys=True))
        if reporter is not None:
            _say(reporter.describe())
    if result.failure:
        raise ToolError(result.failure)
    return result.exit_code


def _both(*callbacks):
    def call(value):
        for callback in callbacks:
            callback(value)
    return call


def _shard(text: str | None):
    from fuzz.campaign.shards import Shard
    try:
        return Shard.parse(text) if text else None
    except ValueError as err:
        raise ToolError(str(err)) from None


def _run_on_runtime(args) -> int:
    """`run --runtime docker|kubernetes`: one job (one worker) per shard, merged into --out."""
    from fuzz.campaign.shards import WHOLE
    from fuzz.scale.launch import make_runtime, run_on_runtime
    from fuzz.scale.runtimes import Job, ReportTo, RuntimeUnavailable
    if args.shard:
        raise ToolError("--shard runs one shard here; --runtime docker|kubernetes starts every shard "
                        "itself, one per --workers")
    if args.dry_run and args.runtime != "kubernetes":
        raise ToolError("--dry-run prints the Kubernetes manifests: use it with --runtime kubernetes")
    if args.corpus or args.known or args.load_module:
        raise ToolError("--corpus, --known and --load-module name host files, which containers do not "
                        "see: the image's corpus, known issues and prebuilt zoo are used")
    if args.with_service and args.runtime != "kubernetes":
        raise ToolError("--with-service adds the service to the Kubernetes manifests: use it with --runtime kubernetes")
    if args.workers < 1:
        raise ToolError("--workers must be at least 1")
    seed = args.seed if args.seed is not None else int(time.time())
    extra = ("--max-ops", str(args.max_ops), "--leak-every", str(args.leak_every), "--state-check", args.state_check) \
        + (("--kernel-coverage",) if args.kernel_coverage else ()) \
        + (("--zoo", args.zoo) if args.zoo else ())     # the image has the probe and the zoo prebuilt
    jobs = [Job(shard, seed, int(parse_duration(args.budget)), args.kernel, 1, args.max_programs, extra)
            for shard in WHOLE.split(args.workers)]
    options = {"image": args.image, "namespace": args.namespace, "claim": args.claim,
               "with_service": args.with_service}
    report_to = None
    if args.report_to:
        from fuzz.serve.service import read_token
        report_to = ReportTo(args.report_to, read_token(args.token_file))
    try:
        if args.dry_run:
            runtime = make_runtime(args.runtime, Path(args.out), report_to, **options)
            sys.stdout.write(runtime.manifest_yaml(jobs))
            if runtime.missing_secret_hint():
                _say(f"procfuzz: {runtime.missing_secret_hint()}")
            return EXIT_OK
        code, summary = run_on_runtime(args.runtime, jobs, Path(args.out), _say, report_to, **options)
    except (RuntimeUnavailable, OSError, ValueError) as err:
        raise ToolError(str(err)) from None
    print(json.dumps(summary, indent=1, sort_keys=True))
    return code


def cmd_merge(args) -> int:
    from fuzz.execute.kernels import model_for
    from fuzz.scale.merge import MergeError, merge
    try:
        summary = merge(Path(args.out), [Path(source) for source in args.sources],
                        None if args.no_distill else model_for(args.kernel))
    except (MergeError, OSError) as err:
        raise ToolError(f"merge: {err}") from None
    print(f"merged {len(summary['runs'])} runs into {args.out}: {summary['distinct_findings']} findings, "
          f"{summary['corpus_programs']} corpus programs")
    return EXIT_OK


def cmd_corpus(args) -> int:
    from fuzz.execute.kernels import model_for
    from fuzz.record.corpus import distill_directory
    directory = Path(args.dir)
    if not directory.is_dir():
        raise ToolError(f"not a directory: {directory}")
    try:
        report = distill_directory(directory, model_for(args.kernel))
    except OSError as err:
        raise ToolError(f"corpus distill: {directory}: {err.strerror or err}") from None
    print(f"{directory}: {report.before} -> {report.after} programs, all {report.features} features kept"
          + (f"; {report.unreadable} unreadable files left alone" if report.unreadable else ""))
    return EXIT_OK


def cmd_atheris(args) -> int:
    from fuzz.execute.kernels import profile_for
    from fuzz.campaign.atheris_driver import grow_corpus
    added = grow_corpus(profile_for(args.kernel), Path(args.corpus), args.runs, args.max_ops, args.kernel)
    print(f"{added} programs with new model coverage saved to {args.corpus}")
    return EXIT_OK


# ---- triage --------------------------------------------------------------------------------------

def cmd_triage(args) -> int:
    from fuzz.report.reports import clean, write_reports
    from fuzz.triage.bugs import collect
    from fuzz.triage.follow_up import follow_up
    dirs = [Path(d) for d in args.dirs]
    missing = [str(d) for d in dirs if not d.is_dir()]
    if missing:
        raise ToolError(f"not a directory: {', '.join(missing)}")
    known_file = Path(args.known) if args.known else corpus.KNOWN_ISSUES
    bugs = collect(dirs, _known(args))
    if args.minimize or args.kernels:
        kernels = _kernel_list(args.kernels or "")
        bugs = [follow_up(bug, args.minimize, kernels, args.runs, print, args.open_target, args.model_for) for bug in bugs]
    out = Path(args.report) if args.report else dirs[0] / "report"
    meta = {"generated": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "sources": [str(d) for d in dirs], "known_issues": str(known_file)}
    try:
        write_reports(bugs, out, meta, source_root=Path.cwd())
    except OSError as err:
        raise ToolError(f"cannot write the reports to {out}: {err.strerror or err}") from None
    for bug in bugs:
        partly_known = f"  (known on {', '.join(bug.known_on)})" if bug.is_new and bug.known_on else ""
        why = f"  ({bug.unconfirmed})" if bug.unconfirmed else ""
        print(clean(f"{bug.status().split()[0]:11} {bug.count:5}x  {bug.signature}  "
                    f"[{', '.join(bug.kernels)}]{partly_known}{why}"))
    new = sum(bug.is_new for bug in bugs)
    unconfirmed = sum(bool(bug.unconfirmed) and not bug.is_known for bug in bugs)
    print(f"{len(bugs)} bugs, {new} new, {unconfirmed} unconfirmed; reports in {out}")
    return EXIT_FOUND if new else EXIT_OK


def _as_recorded(args, finding) -> KernelSpec:
    from fuzz.triage.follow_up import as_recorded
    spec = _spec(args)
    recorded = as_recorded(finding, spec)
    if (recorded.pin, recorded.zoo) != (spec.pin, spec.zoo):
        print(f"# as recorded: kernel {recorded.pin or 'default'}" + (f", zoo bug {recorded.zoo}" if recorded.zoo else ""))
    return recorded


def cmd_minimize(args) -> int:
    from fuzz.triage.follow_up import kernel_finding, minimize_finding
    from fuzz.triage.minimize import NotReproduced
    directory = Path(args.finding)
    finding = kernel_finding(directory)
    try:
        result = minimize_finding(directory, _as_recorded(args, finding), args.retries, args.open_target,
                                  args.model_for)
    except NotReproduced as err:
        print(f"not minimised: {err} ({err.kernel_runs} kernel runs)")
        return EXIT_FOUND
    print(f"# {finding.signature}: {len(finding.program)} -> {len(result.program)} ops, "
          f"{result.kernel_runs} kernel runs, {result.seconds:.1f} s")
    sys.stdout.write(result.program.to_text())
    return EXIT_OK


def cmd_reproduce(args) -> int:
    from fuzz.triage.follow_up import kernel_finding, reproduce_finding
    from fuzz.triage.reproduce import verdict
    directory = Path(args.finding)
    finding = kernel_finding(directory)
    spec = _spec(args)
    kernels = [KernelSpec(k.pin, spec.zoo, spec.modules) for k in _kernel_list(args.kernels)]
    result = reproduce_finding(directory, kernels, args.runs, args.open_target, args.model_for)
    print(f"# {finding.signature} ({result.which} program, {len(result.program)} ops)")
    for kernel, (diverged, runs) in result.counts.items():
        print(f"{verdict(diverged, runs):28} {kernel}")
    return EXIT_FOUND if result.reproduces else EXIT_OK


def cmd_export_c(args) -> int:
    from fuzz.triage.follow_up import export_finding
    export = export_finding(Path(args.finding), args.kernel, Path(args.output) if args.output else None,
                           args.model_for)
    if export.note:
        print(f"note: {export.note}", file=sys.stderr)
    print(f"{export.path}: C reproducer of the {export.which} program ({len(export.program)} ops); "
          f"build: gcc -static -O2 -Wall -o repro {export.path}")
    return EXIT_OK


# ---- kernels and benchmarks ----------------------------------------------------------------------

def cmd_kernels(args) -> int:
    from targets.kernels import KernelError, load_pins, resolve
    try:
        if args.action == "list":
            default, pins = load_pins()
            for name, pin in pins.items():
                mark = "*" if name == default else " "
                print(f"{mark} {name:14} {pin.package}={pin.version}")
            return EXIT_OK
        image = resolve(args.name)
        print(f"{image.label}  {image.vmlinuz}")
        if args.action == "profile":
            from targets.profile_capture import capture_and_store
            print(f"profile written to {capture_and_store(args.name)}")
        return EXIT_OK
    except KernelError as err:
        raise ToolError(str(err)) from None


def cmd_bench(args) -> int:
    import runpy
    bench = BENCH_DIR / f"bench_{args.what}.py"
    if not bench.exists():
        raise ToolError(f"no benchmark {args.what!r} ({bench})")
    sys.argv = [str(bench)] + args.rest
    runpy.run_path(str(bench), run_name="__main__")
    return EXIT_OK
