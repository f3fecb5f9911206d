"""`procfuzz`: the command line.  It parses arguments, calls the library and prints: every
command is a call that tests, benchmarks and the service make too.  Exit codes: fuzz/errors.py.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from reference.program import ProgramError
from targets.base import Target

from fuzz.errors import EXIT_TOOL, ToolError
from fuzz.execute.kernels import TargetOpener, model_for, open_qemu
from fuzz.triage.minimize import DEFAULT_RETRIES

from . import commands as c
from . import kcov, service


def main(argv: list[str] | None = None, *, open_target: TargetOpener = open_qemu,
         model_for: Callable[[str | None], Target] = model_for) -> int:
    """``open_target`` boots the kernels and ``model_for`` gives the model of a kernel: tests
    pass fake kernels here."""
    parser = _parser()
    args = parser.parse_args(argv)
    args.open_target, args.model_for = open_target, model_for
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


class _Commands:
    """The subcommand table, with the options several commands share."""

    def __init__(self, sub):
        self.sub = sub

    def command(self, name, func, help_text):
        p = self.sub.add_parser(name, help=help_text)
        p.set_defaults(func=func)
        return p

    @staticmethod
    def kernel_option(p):
        p.add_argument("--kernel", default=None, help="kernel pin name (default: the pins file's default)")

    @staticmethod
    def module_options(p):
        p.add_argument("--zoo", default=None, metavar="BUG",
                       help="inject a bug-zoo bug (targets/zoo/README.md) into the guest kernel")
        p.add_argument("--load-module", action="append", default=[], metavar="PATH.ko[:params]",
                       help="load an out-of-tree module into the guest after every boot (repeatable)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="procfuzz", description=__doc__.splitlines()[0])
    commands = _Commands(parser.add_subparsers())
    for add in (_case_commands, _run_command, _output_commands, _tool_commands, _follow_up_commands,
                _service_commands, _coverage_command):
        add(commands)
    return parser


def _case_commands(t: _Commands) -> None:
    command, kernel_option, module_options = t.command, t.kernel_option, t.module_options
    p = command("show", c.cmd_show, "pretty-print a program or finding")
    p.add_argument("case")
    p.add_argument("--json", action="store_true", help="canonical JSON instead of text")
    for name, func, help_text, operand in (
            ("model", c.cmd_model, "print the reference model's trace for a program", "case"),
            ("exec", c.cmd_exec, "run one program on the real kernel and print its trace", "case"),
            ("repro", c.cmd_repro, "run a finding or program on model and kernel, side by side", "case"),
            ("replay", c.cmd_replay, "run every program of a directory on both targets", "dir")):
        p = command(name, func, help_text)
        p.add_argument(operand)
        kernel_option(p)
        if name != "model":
            module_options(p)
        if name in ("repro", "replay"):
            p.add_argument("--known", default=None, help="known-issues file (default corpus/known-issues.toml)")


def _run_command(t: _Commands) -> None:
    command, kernel_option, module_options = t.command, t.kernel_option, t.module_options
    p = command("run", c.cmd_run, "a fuzzing campaign")
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
    p.add_argument("--state-check", default="every", metavar="every|N|off",
                   help="after the program, look again at everything it touched (docs/oracle.md): after "
                        "every program (default), every Nth, or never")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="run shard I of N (0-based: I is 0..N-1) of a campaign: its own random streams, "
                        "output in OUT/shard-I-of-N/; give every shard the same --seed and --workers")
    p.add_argument("--replay-programs", type=int, default=1000, metavar="N",
                   help="replay at most N programs of the working corpus on the kernel at start (after "
                        "the seeds and regressions, which always replay); all of them serve as parents")
    p.add_argument("--replay-seconds", type=float, default=90.0, metavar="S",
                   help="stop replaying the working corpus S seconds after the first program")
    p.add_argument("--no-distill", action="store_true",
                   help="keep every program of the working corpus (default: distill it when the campaign ends)")
    p.add_argument("--kernel-coverage", action="store_true",
                   help="load the kernel coverage probe: a program that reaches new kernel proc code "
                        "(a function, or a new hit-count class of one) joins the corpus too")
    p.add_argument("--max-programs", type=int, default=None,
                   help="stop each worker after this many programs (with --seed: a reproducible campaign)")
    p.add_argument("--report-to", default=None, metavar="URL",
                   help="also report to a procfuzz serve as the campaign goes: counters every few seconds, "
                        "each finding as it is recorded (OUT is written all the same)")
    p.add_argument("--token-file", default=None, help="with --report-to: file holding the service's write token")
    p.add_argument("--worker-name", default=None,
                   help="with --report-to: this campaign's name on the service (default: host name and shard)")
    p.add_argument("--runtime", choices=("local", "docker", "kubernetes"), default="local",
                   help="where workers run: here (default), one docker container per worker, or one pod "
                        "per worker of a Kubernetes Indexed Job")
    p.add_argument("--image", default=None,
                   help="docker/kubernetes worker image (default procfuzz-worker:latest, which the docker "
                        "runtime builds from this checkout's ci/Dockerfile)")
    p.add_argument("--dry-run", action="store_true", help="with --runtime kubernetes: print the manifests")
    p.add_argument("--namespace", default="default", help="kubernetes namespace")
    p.add_argument("--with-service", action="store_true",
                   help="with --runtime kubernetes: procfuzz serve as a Deployment and Service beside the Job, "
                        "which the workers report to (the token from the Secret procfuzz-token)")
    p.add_argument("--claim", default="procfuzz-findings",
                   help="kubernetes PersistentVolumeClaim (ReadWriteMany) the pods write findings to")


def _output_commands(t: _Commands) -> None:
    command = t.command
    p = command("merge", c.cmd_merge, "fold run outputs (shards, nights, kernels) into one directory")
    p.add_argument("out", help="the merged output directory (may be one of the sources)")
    p.add_argument("sources", nargs="+",
                   help="run outputs, or directories holding them (e.g. OUT of sharded runs)")
    t.kernel_option(p)
    p.add_argument("--no-distill", action="store_true",
                   help="keep every corpus program (default: distill the merged corpus by model coverage)")
    p = command("corpus", c.cmd_corpus, "corpus maintenance: distill DIR keeps the smallest programs "
                "that cover every model-coverage feature")
    p.add_argument("action", choices=("distill",))
    p.add_argument("dir")
    t.kernel_option(p)
    p = command("triage", c.cmd_triage, "one row per bug from run directories; Markdown, HTML, JSON, JUnit, SARIF reports")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="run output directories (every findings/ below them)")
    p.add_argument("--known", default=None, help="known-issues file (default corpus/known-issues.toml)")
    p.add_argument("--report", default=None, help="report directory (default DIR/report of the first DIR)")
    p.add_argument("--minimize", action="store_true",
                   help="minimise each new bug's representative and export its C reproducer")
    p.add_argument("--kernels", default=None, metavar="K1,K2",
                   help="re-run each new bug on these kernel pins (with its zoo bug, if any)")
    p.add_argument("--runs", type=int, default=5, help="re-runs per kernel for --kernels")


def _tool_commands(t: _Commands) -> None:
    command, kernel_option = t.command, t.kernel_option
    p = command("kernels", c.cmd_kernels, "list, fetch or profile pinned kernels")
    p.add_argument("action", choices=("list", "fetch", "profile"))
    p.add_argument("name", nargs="?", default=None)
    p = command("atheris", c.cmd_atheris, "grow the corpus with atheris over the instrumented model")
    kernel_option(p)
    p.add_argument("--corpus", default="out/corpus", help="working corpus to grow")
    p.add_argument("--runs", type=int, default=20000)
    p.add_argument("--max-ops", type=int, default=40)
    p = command("bench", c.cmd_bench, "benchmarks: " + ", ".join(c.BENCHMARKS))
    p.add_argument("what", choices=c.BENCHMARKS)
    p.add_argument("rest", nargs=argparse.REMAINDER)


def _follow_up_commands(t: _Commands) -> None:
    command, kernel_option, module_options = t.command, t.kernel_option, t.module_options
    p = command("minimize", c.cmd_minimize, "shrink a finding to a 1-minimal program with the same signature "
                "(exit 0 minimised, 1 it does not reproduce, 2 error)")
    p.add_argument("finding", help="finding directory")
    kernel_option(p)
    module_options(p)
    p.epilog = "--kernel and --zoo default to what the finding's kernel label names"
    p.add_argument("--retries", type=int, default=DEFAULT_RETRIES,
                   help="kernel runs per candidate before it counts as not reproducing (flaky bugs)")
    p = command("reproduce", c.cmd_reproduce, "re-run a finding N times on each kernel: reliable, flaky or not "
                "(exit 1 it reproduces somewhere, 0 nowhere, 2 error)")
    p.add_argument("finding", help="finding directory")
    p.add_argument("--kernels", required=True, help="comma-separated kernel pin names, e.g. 6.1-cloud,6.12-cloud")
    p.add_argument("--runs", type=int, default=10)
    module_options(p)
    p = command("export-c", c.cmd_export_c, "write a standalone C reproducer of a finding")
    p.add_argument("finding", help="finding directory")
    p.add_argument("--kernel", default=None,
                   help="kernel whose profile gives the expected results (default: the finding's)")
    p.add_argument("-o", "--output", default=None, help="output file (default FINDING/repro.c)")


def _service_commands(t: _Commands) -> None:
    p = t.command("serve", service.cmd_serve, "the fuzzing service: campaigns without pause, a bug database, "
                  "follow-ups, a dashboard (docs/serve.md)")
    p.add_argument("--config", default=None, help="procfuzz.toml (default: one worker on the default kernel)")
    p.add_argument("--state", default="procfuzz-state", help="state directory: database, campaigns, uploads")
    p.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT of the dashboard and API")
    p.add_argument("--token-file", default=None,
                   help="file holding the token write endpoints need (required beyond loopback)")
    p = t.command("push", service.cmd_push, "upload the finding directories below DIR to a service's /api/import")
    p.add_argument("url", help="the service, e.g. http://fuzz.example:8080")
    p.add_argument("dir", help="a run output or any directory holding findings/ directories")
    p.add_argument("--token-file", default=None, help="file holding the service's write token")


def _coverage_command(t: _Commands) -> None:
    p = t.command("coverage", kcov.cmd_coverage, "run a corpus on a kernel with the coverage probe: the "
                  "probed proc/sysctl functions it reaches, per file and function, and those it never does")
    p.add_argument("corpus", nargs="?", default=None, metavar="CORPUS_DIR",
                   help="programs to run (default: corpus/seeds and corpus/regressions)")
    t.kernel_option(p)
    p.add_argument("--report", default=None,
                   help="where kcov-<kernel>.html and .json go (default: report/ next to CORPUS_DIR, "
                        "i.e. a run's triage report directory)")
