"""Does kernel coverage feedback pay for its cost?  The same seeded campaign with and without it.

    procfuzz bench coverage [--budget 10m] [--kernel PIN] [--seed 1] [--every 60] [--save]

Runs two campaigns of the default configuration side by side, at the same time (one worker
each, so both see the same machine): one with `--kernel-coverage` (kernel features join the
model's as corpus feedback), one without.  While they run it samples each one's programs,
features and corpus additions, so the growth curves can be compared; the features column counts
what each campaign's feedback counts (model features, plus kernel features with coverage).
Afterwards both working corpora run on one kernel with the probe: the probed functions each
corpus reaches is the figure that says whether the feedback found kernel code the model alone
did not lead to.  Prints the figures; `--save` writes bench/results/coverage-<kernel>-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fuzz.campaign.parallel import guest_cpus_for  # noqa: E402
from fuzz.campaign.run import RunOptions, new_stop_event, parse_duration, run  # noqa: E402
from fuzz.errors import ToolError  # noqa: E402
from fuzz.execute.kernels import KernelSpec, open_qemu  # noqa: E402
from fuzz.record.programs import load_directory  # noqa: E402
from fuzz.triage.kernel_coverage import measure  # noqa: E402
from targets.coverage import EXACT, FEEDBACK  # noqa: E402
from targets.coverage.lists import load_probe_list  # noqa: E402
from targets.kernels import find_pin  # noqa: E402

SIDES = {"without kernel coverage": False, "with --kernel-coverage": True}


class Curve:
    """(seconds, programs, features, corpus added) samples of one campaign, at most one per ``every`` s."""

    def __init__(self, every: float):
        self.every, self.started, self.points = every, time.monotonic(), []

    def __call__(self, stats) -> None:
        elapsed = time.monotonic() - self.started
        if not self.points or elapsed - self.points[-1][0] >= self.every:
            self.points.append((round(elapsed), stats.programs, stats.features, stats.corpus_added))


def side_by_side(args, scratch: Path) -> dict[str, tuple[dict, Curve, Path]]:
    """Both campaigns at once, each in its own thread (its workers are processes)."""
    spec = KernelSpec(args.kernel)
    results: dict[str, tuple] = {}
    errors: list[str] = []

    def campaign(name: str, coverage: bool) -> None:
        curve = Curve(args.every)
        out = scratch / ("coverage" if coverage else "plain")
        # The two campaigns share the host as the main job's two workers do: one vCPU a guest.
        options = RunOptions(kernel=replace(spec, coverage=FEEDBACK if coverage else None), budget=parse_duration(args.budget),
                             workers=1, out=out, seed=args.seed, distill=False,
                             guest_cpus=guest_cpus_for(len(SIDES), os.cpu_count()))
        try:
            result = run(options, curve, new_stop_event())
        except ToolError as err:
            errors.append(f"{name}: {err}")
            return
        if result.failure or result.stats.errors or not result.stats.programs:
            errors.append(f"{name}: {result.failure or result.stats.errors or 'no program ran'}")
        curve(result.stats)
        results[name] = (result.summary, curve, out / "corpus")

    threads = [threading.Thread(target=campaign, args=item) for item in SIDES.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise ToolError("; ".join(errors))
    return results


def corpus_coverage(args, corpora: dict[str, Path]) -> dict[str, dict]:
    """name -> KernelCoverage.to_json() of that corpus, on one VM with the probe."""
    probes = load_probe_list(find_pin(args.kernel).name)
    found = {}
    with open_qemu(KernelSpec(args.kernel, coverage=EXACT)) as target:
        for name, directory in corpora.items():
            programs, _unreadable = load_directory(directory)
            found[name] = measure(programs, target, probes).to_json()
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="procfuzz bench coverage", description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="10m")
    parser.add_argument("--kernel", default=None, help="kernel pin (default: the default pin)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--every", type=float, default=60.0, help="seconds between curve samples")
    parser.add_argument("--save", action="store_true")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="pfz-bench-coverage-") as scratch:
        runs = side_by_side(args, Path(scratch))
        reached = corpus_coverage(args, {name: corpus for name, (_, _, corpus) in runs.items()})
    rows = [[name, summary["programs"], summary["programs_per_second"], summary["model_features"],
             curve.points[-1][3], f"{reached[name]['reached']}/{reached[name]['probed']}",
             sum(summary.get("findings", {}).values())]
            for name, (summary, curve, _) in ((name, runs[name]) for name in SIDES)]
    columns = ["campaign", "programs", "programs/s", "features", "corpus added", "kernel functions its corpus reaches",
               "findings"]
    print("  ".join(f"{c:>18}" for c in columns))
    for row in rows:
        print("  ".join(f"{str(c):>18}" for c in row))
    curves = {name: runs[name][1].points for name in SIDES}
    for name, points in curves.items():
        print(f"{name}: (s, programs, features, corpus added) " + " ".join(map(str, points)))
    only = {name: sorted(set(f.split()[1] for f in reached[other]["unreached"])
                         - set(f.split()[1] for f in reached[name]["unreached"]))
            for name, other in zip(SIDES, reversed(list(SIDES)))}
    for name, functions in only.items():
        print(f"reached only by the corpus {name}: {', '.join(functions) or 'none'}")
    if args.save:
        save(args, rows, columns, curves, only, load_before)
    return 0


def save(args, rows, columns, curves, only, load_before) -> None:
    today = datetime.date.today().isoformat()
    pin = find_pin(args.kernel)
    doc = {"title": "Kernel coverage feedback: the same campaign with and without it",
           "command": f"procfuzz bench coverage --budget {args.budget} --seed {args.seed}"
                      + (f" --kernel {args.kernel}" if args.kernel else "") + " --save",
           "date": today, "kernel": f"{pin.name}: {pin.package}={pin.version}",
           "machine": f"{os.cpu_count()} cores, QEMU TCG, load average {load_before:.1f} before the run",
           "columns": columns, "rows": rows,
           "notes": ["Both campaigns ran at the same time, one worker each, the same seed, no seed-corpus "
                     "distillation; one vCPU a guest, as the main job's two workers have.",
                     "features: what each campaign's corpus feedback counts (model features; with "
                     "--kernel-coverage also ('kernel', function) and its hit-count class)."]
                    + [f"curve {name} (s, programs, features, corpus added): "
                       + " ".join(f"{p[0]}:{p[1]}/{p[2]}/{p[3]}" for p in points) for name, points in curves.items()]
                    + [f"reached only by the corpus {name}: {', '.join(functions) or 'none'}"
                       for name, functions in only.items()]}
    out = ROOT / "bench" / "results" / f"coverage-{pin.name}-{today}.json"
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
