"""`procfuzz`: the command line.

Exit codes (CI relies on them): 0 nothing new / no divergence, 1 new findings / the case
reproduces, 2 procfuzz itself failed (bad input, model bug, harness error, no kernel).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from reference.program import Program, ProgramError
from reference.trace import Trace, result_matches

EXIT_OK, EXIT_FOUND, EXIT_TOOL = 0, 1, 2
SEED_DIRS = tuple(Path(__file__).resolve().parent.parent / "corpus" / d for d in ("seeds", "regressions"))
KNOWN_ISSUES = Path(__file__).resolve().parent.parent / "corpus" / "known-issues.toml"
RUNTIME_START_SLACK = 600.0     # image start, kernel boot and seed replay come on top of --budget


class ToolError(Exception):
    """A clear message for the user; exit code 2."""


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_TOOL
    try:
        return args.func(args)
    except (ToolError, ProgramError) as err:
        print(f"procfuzz: {err}", file=sys.stderr)
        return EXIT_TOOL
    except KeyboardInterrupt:
        print("procfuzz: interrupted", file=sys.stderr)
        return EXIT_TOOL


# ---- helpers -------------------------------------------------------------------------------------

def _load_case(path: str) -> tuple[Program, Path | None]:
    """A program file, or a finding directory (its program)."""
    from .findings import load as load_finding
    from .storage import load_program
    target = Path(path)
    if target.is_dir():
        return load_finding(target).program, target
    return load_program(target), None


def _profile(kernel: str | None):
    from targets.kernels import KernelError, load_profile
    try:
        return load_profile(kernel)
    except KernelError as err:
        raise ToolError(str(err)) from None


def target_options(args) -> dict:
    """QemuTarget keyword arguments from --zoo and --load-module."""
    from targets.qemu import ModuleSpec
    try:
        modules = tuple(ModuleSpec.parse(text) for text in getattr(args, "load_module", None) or ())
    except ValueError as err:
        raise ToolError(str(err)) from None
    return {"zoo": getattr(args, "zoo", None), "modules": modules}


@contextmanager
def _qemu(args):
    """A started QemuTarget for the command's --kernel, --zoo and --load-module."""
    from targets.kernels import KernelError
    from targets.qemu import ModuleLoadError, QemuTarget
    from targets.zoo.build import ZooBuildError
    try:
        target = QemuTarget(args.kernel, **target_options(args))
        target.start()
    except (KernelError, ModuleLoadError, ZooBuildError, ValueError) as err:
        raise ToolError(str(err)) from None
    try:
        yield target
    finally:
        target.close()


def _known(path: Path | None) -> dict[str, str]:
    from .known import load_known
    return load_known(path or KNOWN_ISSUES)


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


# ---- commands ------------------------------------------------------------------------------------

def cmd_show(args) -> int:
    program, _ = _load_case(args.case)
    print(f"# program {program.id}, {len(program)} ops")
    sys.stdout.write(program.to_json() + "\n" if args.json else program.to_text())
    return EXIT_OK


def cmd_model(args) -> int:
    from targets.model import ModelTarget
    program, _ = _load_case(args.case)
    trace = ModelTarget(_profile(args.kernel)).run(program)
    print_trace(program, trace)
    return EXIT_OK if trace.outcome == "ok" else EXIT_TOOL


def cmd_exec(args) -> int:
    program, _ = _load_case(args.case)
    with _qemu(args) as target:
        trace = target.run(program)
    print_trace(program, trace)
    return {"ok": EXIT_OK, "crash": EXIT_FOUND, "hang": EXIT_FOUND}.get(trace.outcome, EXIT_TOOL)


def cmd_repro(args) -> int:
    from targets.model import ModelTarget
    from .oracle import compare
    program, _ = _load_case(args.case)
    expected = ModelTarget(_profile(args.kernel)).run(program)
    if expected.outcome != "ok":
        raise ToolError(f"the model failed on this program (a procfuzz bug): {expected.title}")
    with _qemu(args) as target:
        actual = target.run(program)
    divergence = compare(program, expected, actual)
    print_side_by_side(program, expected, actual, divergence.index if divergence else None)
    if divergence is None:
        print("not reproduced: the kernel agrees with the model")
        return EXIT_OK
    print(f"reproduced: {divergence.summary()}")
    return EXIT_TOOL if divergence.cls in ("model-bug", "harness-error") else EXIT_FOUND


def cmd_replay(args) -> int:
    from targets.model import ModelTarget
    from .oracle import compare
    from .storage import load_directory
    programs, errors = load_directory(Path(args.dir))
    for err in errors:
        print(f"skipped: {err}", file=sys.stderr)
    model = ModelTarget(_profile(args.kernel))
    failures = 0
    with _qemu(args) as target:
        for path, program in programs:
            expected = model.run(program)
            actual = target.run(program) if expected.outcome == "ok" else expected
            divergence = compare(program, expected, actual)
            failures += divergence is not None
            print(f"{'DIVERGES' if divergence else 'ok':9} {path}" + (f"  {divergence.summary()}" if divergence else ""))
    print(f"{len(programs)} programs, {failures} divergent, {len(errors)} unreadable")
    return EXIT_FOUND if failures else (EXIT_TOOL if errors else EXIT_OK)


def parse_budget(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smh]?)", text.strip())
    if not match:
        raise ToolError(f"bad budget {text!r}: use e.g. 90s, 10m or 2h")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def _shard(text: str | None):
    from .runtimes import WHOLE, Shard
    try:
        return Shard.parse(text) if text else WHOLE
    except ValueError as err:
        raise ToolError(str(err)) from None


def cmd_run(args) -> int:
    from targets.kernels import KernelError, resolve
    from targets.qemu import kernel_label
    from .campaign import WorkerConfig, guest_cpus_for, run_campaign, write_summary
    from .status import StatusDisplay
    if args.runtime != "local" or args.dry_run:
        return _run_on_runtime(args)
    budget = parse_budget(args.budget)
    shard = _shard(args.shard)
    if args.workers < 1:
        raise ToolError("--workers must be at least 1")
    out = Path(args.out) / shard.dirname if args.shard else Path(args.out)
    corpus = Path(args.corpus) if args.corpus else out / "corpus"
    out.mkdir(parents=True, exist_ok=True)
    corpus.mkdir(parents=True, exist_ok=True)
    profile = _profile(args.kernel)
    options = target_options(args)
    try:
        label = kernel_label(resolve(args.kernel).label, options["zoo"], options["modules"])
    except KernelError as err:
        raise ToolError(str(err)) from None
    known = frozenset(_known(Path(args.known) if args.known else None))
    seed = args.seed if args.seed is not None else int(time.time())
    deadline = time.monotonic() + budget
    configs = [WorkerConfig(stream, seed, profile, label, out, corpus, deadline, args.max_ops, args.max_programs,
                            known=known, seed_dirs=SEED_DIRS, leak_every=args.leak_every,
                            zoo_bug=options["zoo"], modules=options["modules"],
                            guest_cpus=args.guest_cpus or guest_cpus_for(args.workers, os.cpu_count()))
               for stream in shard.streams(args.workers)]
    stop = multiprocessing.get_context("spawn").Event()

    def request_stop(signum, _frame):
        print(f"\nprocfuzz: {signal.Signals(signum).name}: stopping workers, keeping everything",
              file=sys.stderr)
        stop.set()
    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    display = StatusDisplay(label, args.workers, budget)
    started = time.monotonic()
    try:
        with display:
            stats = run_campaign(configs, args.kernel, display.update, stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    elapsed = time.monotonic() - started
    summary = write_summary(out, stats, {"kernel": label, "seed": seed, "workers": args.workers, "shard": str(shard),
                                         "seconds": round(elapsed, 1),
                                         "programs_per_second": round(stats.programs / max(elapsed, 1e-9), 2),
                                         "interrupted": stop.is_set()})
    print(json.dumps(json.loads(summary.read_text()), indent=1, sort_keys=True))
    tool_failed = stats.errors or any(stats.findings.get(c) for c in ("model-bug", "harness-error"))
    if tool_failed:
        return EXIT_TOOL
    return EXIT_FOUND if sum(stats.findings.values()) else EXIT_OK


def _run_on_runtime(args) -> int:
    """`run --runtime docker|kubernetes`: one job (one worker) per shard, merged into --out."""
    from .merge import MergeError
    from .runtimes import WHOLE, Job, RuntimeUnavailable, combined_exit, make_runtime
    if args.shard:
        raise ToolError("--shard runs one shard here; --runtime docker|kubernetes starts every shard "
                        "itself, one per --workers")
    if args.dry_run and args.runtime != "kubernetes":
        raise ToolError("--dry-run prints the Kubernetes manifests: use it with --runtime kubernetes")
    if args.corpus or args.known or args.load_module:
        raise ToolError("--corpus, --known and --load-module name host files, which containers do not "
                        "see: the image's corpus and known issues are used")
    if args.zoo:
        raise ToolError("--zoo builds a module against the kernel's headers, which the worker image "
                        "does not carry: run zoo campaigns with the local runtime")
    if args.workers < 1:
        raise ToolError("--workers must be at least 1")
    budget = int(parse_budget(args.budget))
    seed = args.seed if args.seed is not None else int(time.time())
    extra = ("--max-ops", str(args.max_ops), "--leak-every", str(args.leak_every))
    jobs = [Job(shard, seed, budget, args.kernel, 1, args.max_programs, extra) for shard in WHOLE.split(args.workers)]
    out = Path(args.out)
    runtime = make_runtime(args.runtime, out, image=args.image, namespace=args.namespace, claim=args.claim)
    if args.dry_run:
        sys.stdout.write(runtime.manifest_yaml(jobs))
        return EXIT_OK
    try:
        runtime.prepare()
        handles = runtime.submit(jobs)
        print(f"procfuzz: {len(handles)} {args.runtime} workers started (seed {seed})", file=sys.stderr)
        try:
            codes = runtime.wait(handles, time.monotonic() + budget + RUNTIME_START_SLACK)
        except KeyboardInterrupt:
            print("\nprocfuzz: interrupted: stopping the workers, keeping everything", file=sys.stderr)
            codes = runtime.wait(handles, time.monotonic())
        runtime.collect(handles, out)
    except (RuntimeUnavailable, MergeError) as err:
        raise ToolError(str(err)) from None
    print(json.dumps(json.loads((out / "summary.json").read_text()), indent=1, sort_keys=True))
    return combined_exit(codes)


def cmd_merge(args) -> int:
    from .merge import MergeError, merge
    try:
        summary = merge(Path(args.out), [Path(source) for source in args.sources])
    except (MergeError, OSError) as err:
        raise ToolError(f"merge: {err}") from None
    print(f"merged {len(summary['runs'])} runs into {args.out}: {summary['distinct_findings']} findings, "
          f"{summary['corpus_programs']} corpus programs")
    return EXIT_OK


def cmd_triage(args) -> int:
    from .known import load_known_issues
    from .report import clean, write_reports
    from .triage import collect
    dirs = [Path(d) for d in args.dirs]
    missing = [str(d) for d in dirs if not d.is_dir()]
    if missing:
        raise ToolError(f"not a directory: {', '.join(missing)}")
    if args.known and not Path(args.known).is_file():
        raise ToolError(f"no known-issues file {args.known}")
    known_file = Path(args.known) if args.known else KNOWN_ISSUES
    bugs = collect(dirs, load_known_issues(known_file))
    if args.minimize or args.kernels:
        bugs = [_follow_up(bug, args) for bug in bugs]
    out = Path(args.report) if args.report else dirs[0] / "report"
    meta = {"generated": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "sources": [str(d) for d in dirs], "known_issues": str(known_file)}
    try:
        write_reports(bugs, out, meta, source_root=Path.cwd())
    except OSError as err:
        raise ToolError(f"cannot write the reports to {out}: {err.strerror or err}") from None
    for bug in bugs:
        partly_known = f"  (known on {', '.join(bug.known_on)})" if bug.is_new and bug.known_on else ""
        print(clean(f"{'new' if bug.is_new else 'known':5} {bug.count:5}x  {bug.signature}  "
                    f"[{', '.join(bug.kernels)}]{partly_known}"))
    new = sum(bug.is_new for bug in bugs)
    print(f"{len(bugs)} bugs, {new} new; reports in {out}")
    return EXIT_FOUND if new else EXIT_OK


def _follow_up(bug, args):
    """`triage --minimize/--kernels`: a new bug's representative finding is minimised, re-run
    on the kernels and exported as C, exactly as `procfuzz minimize`, `reproduce` and
    `export-c` would do it; a step that fails is reported and the row keeps what it has."""
    from .minimize import DEFAULT_RETRIES
    from .triage import with_artifacts
    if not bug.is_new or bug.cls in ("model-bug", "harness-error"):
        return bug
    print(f"# following up: {bug.signature}")
    common = {"finding": str(bug.directory), "kernel": None, "zoo": None, "load_module": []}
    try:
        recorded = _as_recorded(argparse.Namespace(**common), bug.representative)
        if args.minimize and bug.minimized is None and \
                cmd_minimize(argparse.Namespace(**vars(recorded), retries=DEFAULT_RETRIES)) != EXIT_OK:
            return with_artifacts(bug)
        if args.kernels:
            cmd_reproduce(argparse.Namespace(**vars(recorded), kernels=args.kernels, runs=args.runs))
        if args.minimize:
            cmd_export_c(argparse.Namespace(**common, output=None))
    except ToolError as err:
        print(f"procfuzz: {bug.signature}: {err}", file=sys.stderr)
    return with_artifacts(bug)


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


def cmd_atheris(args) -> int:
    from .atheris_driver import grow_corpus
    added = grow_corpus(_profile(args.kernel), Path(args.corpus), args.runs, args.max_ops, args.kernel)
    print(f"{added} programs with new model coverage saved to {args.corpus}")
    return EXIT_OK


# ---- minimize, reproduce, export-c -------------------------------------------------------------
# minimize: 0 minimised (minimized.prog + minimize.json written), 1 the finding does not reproduce,
# 2 tool error.  reproduce: 1 it reproduces on at least one kernel, 0 on none, 2 tool error.
# export-c: 0 written, 2 tool error (an op export-c does not support is named).

def _kernel_finding(directory: Path):
    """A finding whose class a re-run can show again (divergence, inconsistency, crash, hang, leak)."""
    from .findings import load as load_finding
    from .oracle import KERNEL_CLASSES
    finding = load_finding(directory)
    if finding.divergence.cls not in KERNEL_CLASSES:
        raise ToolError(f"{directory}: a {finding.divergence.cls!r} finding is procfuzz's own failure, "
                        "not the kernel's: nothing to re-run")
    return finding


def _as_recorded(args, finding) -> argparse.Namespace:
    """args with --kernel and --zoo defaulting to the kernel the finding ran on (its label names
    the package and any injected zoo bug)."""
    from targets.kernels import load_pins
    from targets.qemu import injected_zoo_bug, stock_label
    package = stock_label(finding.kernel).split("=", 1)[0]
    kernel = args.kernel or next((name for name, pin in load_pins()[1].items() if pin.package == package), None)
    zoo = args.zoo or injected_zoo_bug(finding.kernel)
    if (kernel, zoo) != (args.kernel, args.zoo):
        print(f"# as recorded: kernel {kernel or 'default'}" + (f", zoo bug {zoo}" if zoo else ""))
    return argparse.Namespace(**{**vars(args), "kernel": kernel, "zoo": zoo})


def _finding_program(directory: Path, finding) -> tuple[Program, str]:
    """The minimised program when the finding has one, else its own; with a word saying which."""
    from .storage import load_program
    minimized = directory / "minimized.prog"
    if minimized.is_file():
        return load_program(minimized), "minimised"
    return finding.program, "original"


def cmd_minimize(args) -> int:
    from targets.model import ModelTarget
    from .minimize import NotReproduced, kernel_runner, minimize
    from .storage import atomic_write
    directory = Path(args.finding)
    finding = _kernel_finding(directory)
    if args.retries < 1:
        raise ToolError("--retries must be at least 1")
    args = _as_recorded(args, finding)
    model = ModelTarget(_profile(args.kernel))
    with _qemu(args) as target:
        try:
            result = minimize(finding.program, finding.signature, kernel_runner(target, finding.signature), model,
                              retries=args.retries)
        except NotReproduced as err:
            print(f"not minimised: {err} ({err.kernel_runs} kernel runs)")
            return EXIT_FOUND
    atomic_write(directory / "minimized.prog", result.program.to_text())
    summary = {"signature": finding.signature, "kernel": target.label,
               "original_ops": [op.to_text() for op in finding.program.ops],
               "minimized_ops": [op.to_text() for op in result.program.ops],
               "kernel_runs": result.kernel_runs, "seconds": round(result.seconds, 2),
               "steps": result.steps, "retries": args.retries}
    atomic_write(directory / "minimize.json", json.dumps(summary, indent=1, sort_keys=True) + "\n")
    print(f"# {finding.signature}: {len(finding.program)} -> {len(result.program)} ops, "
          f"{result.kernel_runs} kernel runs, {result.seconds:.1f} s")
    sys.stdout.write(result.program.to_text())
    return EXIT_OK


def cmd_reproduce(args) -> int:
    from .reproduce import reproducibility, verdict
    from .storage import atomic_write
    directory = Path(args.finding)
    finding = _kernel_finding(directory)
    kernels = [name.strip() for name in args.kernels.split(",") if name.strip()]
    if not kernels or args.runs < 1:
        raise ToolError("--kernels needs at least one kernel name and --runs at least 1")
    program, which = _finding_program(directory, finding)
    try:
        counts = reproducibility(program, finding.signature, kernels, args.runs,
                                 open_target=lambda name: _qemu(argparse.Namespace(**{**vars(args), "kernel": name})),
                                 model_for=_profile_model)
    except ValueError as err:
        raise ToolError(str(err)) from None
    doc = {kernel: {"diverged": diverged, "runs": runs} for kernel, (diverged, runs) in counts.items()}
    atomic_write(directory / "reproducibility.json", json.dumps(doc, indent=1, sort_keys=True) + "\n")
    print(f"# {finding.signature} ({which} program, {len(program)} ops)")
    for kernel, (diverged, runs) in counts.items():
        print(f"{verdict(diverged, runs):28} {kernel}")
    return EXIT_FOUND if any(diverged for diverged, _ in counts.values()) else EXIT_OK


def _profile_model(kernel: str | None):
    from targets.model import ModelTarget
    return ModelTarget(_profile(kernel))


def cmd_export_c(args) -> int:
    from targets.qemu import stock_label
    from .export_c import ExportError, export_c
    from .findings import load as load_finding
    from .storage import atomic_write
    directory = Path(args.finding)
    finding = load_finding(directory)
    program, which = _finding_program(directory, finding)
    expected = _profile_model(args.kernel or stock_label(finding.kernel) or None).run(program)
    summary = f"{finding.signature} (first seen as: {finding.divergence.summary()})"
    if finding.divergence.cls == "inconsistent":
        print("note: the reproducer compares each result with the model's; it does not check this "
              "'inconsistent' finding's own condition", file=sys.stderr)
    try:
        source = export_c(program, expected, kernel=finding.kernel or "unknown", summary=summary,
                          leaked=tuple(finding.leaked_caches))
    except ExportError as err:
        raise ToolError(str(err)) from None
    out = Path(args.output) if args.output else directory / "repro.c"
    atomic_write(out, source)
    print(f"{out}: C reproducer of the {which} program ({len(program)} ops); "
          f"build: gcc -static -O2 -Wall -o repro {out}")
    return EXIT_OK


def cmd_bench(args) -> int:
    import runpy
    bench = Path(__file__).resolve().parent.parent / "bench" / f"bench_{args.what}.py"
    if not bench.exists():
        raise ToolError(f"no benchmark {args.what!r} ({bench})")
    sys.argv = [str(bench)] + args.rest
    runpy.run_path(str(bench), run_name="__main__")
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="procfuzz", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers()

    def command(name, func, help_text):
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(func=func)
        return p

    def kernel_option(p):
        p.add_argument("--kernel", default=None, help="kernel pin name (default: the pins file's default)")

    def module_options(p):
        p.add_argument("--zoo", default=None, metavar="BUG",
                       help="inject a bug-zoo bug (targets/zoo/README.md) into the guest kernel")
        p.add_argument("--load-module", action="append", default=[], metavar="PATH.ko[:params]",
                       help="load an out-of-tree module into the guest after every boot (repeatable)")

    p = command("show", cmd_show, "pretty-print a program or finding")
    p.add_argument("case")
    p.add_argument("--json", action="store_true", help="canonical JSON instead of text")
    for name, func, help_text, operand in (
            ("model", cmd_model, "print the reference model's trace for a program", "case"),
            ("exec", cmd_exec, "run one program on the real kernel and print its trace", "case"),
            ("repro", cmd_repro, "run a finding or program on model and kernel, side by side", "case"),
            ("replay", cmd_replay, "run every program of a directory on both targets", "dir")):
        p = command(name, func, help_text)
        p.add_argument(operand)
        kernel_option(p)
        if name != "model":
            module_options(p)
    p = command("run", cmd_run, "a fuzzing campaign")
    kernel_option(p)
    module_options(p)
    p.add_argument("--budget", default="10m")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--guest-cpus", type=int, choices=(1, 2, 4), default=None,
                   help="vCPUs per guest (default: 2, or 1 when the workers would oversubscribe the host)")
    p.add_argument("--corpus", default=None,
                   help="working corpus, grown by the run (default OUT/corpus); corpus/seeds and "
                        "corpus/regressions are always replayed first")
    p.add_argument("--out", default="out")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--max-ops", type=int, default=40)
    p.add_argument("--leak-every", type=int, default=10,
                   help="measure slab counts after every Nth program for the leak oracle (0: never)")
    p.add_argument("--known", default=None, help="known-issues file (default corpus/known-issues.toml)")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="run shard I of N (0-based: I is 0..N-1) of a campaign: its own random streams, "
                        "output in OUT/shard-I-of-N/; give every shard the same --seed and --workers")
    p.add_argument("--max-programs", type=int, default=None,
                   help="stop each worker after this many programs (with --seed: a reproducible campaign)")
    p.add_argument("--runtime", choices=("local", "docker", "kubernetes"), default="local",
                   help="where workers run: here (default), one docker container per worker, or one pod "
                        "per worker of a Kubernetes Indexed Job")
    p.add_argument("--image", default=None,
                   help="docker/kubernetes worker image (default procfuzz-worker:latest, which the docker "
                        "runtime builds from this checkout's ci/Dockerfile)")
    p.add_argument("--dry-run", action="store_true", help="with --runtime kubernetes: print the manifests")
    p.add_argument("--namespace", default="default", help="kubernetes namespace")
    p.add_argument("--claim", default="procfuzz-findings",
                   help="kubernetes PersistentVolumeClaim (ReadWriteMany) the pods write findings to")
    p = command("merge", cmd_merge, "fold run outputs (shards, nights, kernels) into one directory")
    p.add_argument("out", help="the merged output directory (may be one of the sources)")
    p.add_argument("sources", nargs="+",
                   help="run outputs, or directories holding them (e.g. OUT of sharded runs)")
    p = command("triage", cmd_triage, "one row per bug from run directories; Markdown, HTML, JSON, JUnit, SARIF reports")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="run output directories (every findings/ below them)")
    p.add_argument("--known", default=None, help="known-issues file (default corpus/known-issues.toml)")
    p.add_argument("--report", default=None, help="report directory (default DIR/report of the first DIR)")
    p.add_argument("--minimize", action="store_true",
                   help="minimise each new bug's representative and export its C reproducer")
    p.add_argument("--kernels", default=None, metavar="K1,K2",
                   help="re-run each new bug on these kernel pins (with its zoo bug, if any)")
    p.add_argument("--runs", type=int, default=5, help="re-runs per kernel for --kernels")
    p = command("kernels", cmd_kernels, "list, fetch or profile pinned kernels")
    p.add_argument("action", choices=("list", "fetch", "profile"))
    p.add_argument("name", nargs="?", default=None)
    p = command("atheris", cmd_atheris, "grow the corpus with atheris over the instrumented model")
    kernel_option(p)
    p.add_argument("--corpus", default="out/corpus", help="working corpus to grow")
    p.add_argument("--runs", type=int, default=20000)
    p.add_argument("--max-ops", type=int, default=40)
    p = command("bench", cmd_bench, "benchmarks: model, target, scaling or zoo")
    p.add_argument("what", choices=("model", "target", "scaling", "zoo"))
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p = command("minimize", cmd_minimize, "shrink a finding to a 1-minimal program with the same signature "
                "(exit 0 minimised, 1 it does not reproduce, 2 error)")
    p.add_argument("finding", help="finding directory")
    kernel_option(p)
    module_options(p)
    p.epilog = "--kernel and --zoo default to what the finding's kernel label names"
    from .minimize import DEFAULT_RETRIES
    p.add_argument("--retries", type=int, default=DEFAULT_RETRIES,
                   help="kernel runs per candidate before it counts as not reproducing (flaky bugs)")
    p = command("reproduce", cmd_reproduce, "re-run a finding N times on each kernel: reliable, flaky or not "
                "(exit 1 it reproduces somewhere, 0 nowhere, 2 error)")
    p.add_argument("finding", help="finding directory")
    p.add_argument("--kernels", required=True, help="comma-separated kernel pin names, e.g. 6.1-cloud,6.12-cloud")
    p.add_argument("--runs", type=int, default=10)
    module_options(p)
    p = command("export-c", cmd_export_c, "write a standalone C reproducer of a finding")
    p.add_argument("finding", help="finding directory")
    p.add_argument("--kernel", default=None,
                   help="kernel whose profile gives the expected results (default: the finding's)")
    p.add_argument("-o", "--output", default=None, help="output file (default FINDING/repro.c)")
    return parser


if __name__ == "__main__":
    sys.exit(main())
