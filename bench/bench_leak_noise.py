"""Noise of the leak oracle's slab counts on a stock kernel (no bug injected).

    python bench/bench_leak_noise.py [--kernel 6.1-cloud] [--runs 4] [--seeds corpus/seeds]

Runs every seed program ``--runs`` times in a row (after one warm-up pass over all of them) and,
per cache, compares the post-teardown active counts of consecutive runs of the same program:
how often they move, and by how much (growth = later run minus earlier run). On a correct
kernel every move is noise; fuzz/compare/leaks.py sets its tolerance above what this prints, and
the leak-rule column (programs whose runs the rule, leaking, would call a leak of that cache)
must be 0.  With ``--confirm`` every program then goes through the campaign's fresh-VM
confirmation (confirm_leak against empty-program controls) for every cache: the confirm column
counts programs it would confirm, the false-positive rate of the whole rule on a stock kernel.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz.campaign.worker import CONTROL  # noqa: E402
from fuzz.compare.leaks import CONFIRM_ROUNDS, Leak, confirm_leak, leaking  # noqa: E402
from fuzz.record.programs import load_directory  # noqa: E402
from targets.qemu import QemuTarget  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernel", default=None)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--seeds", default="corpus/seeds")
    parser.add_argument("--confirm", action="store_true", help="also run the fresh-VM confirmation per program")
    args = parser.parse_args()
    programs = [program for _, program in load_directory(Path(args.seeds))[0]]
    deltas: dict[str, list[int]] = defaultdict(list)      # cache -> growth between consecutive runs
    confirmed: dict[str, int] = defaultdict(int)          # cache -> programs the leak rule would confirm
    false_positives: dict[str, int] = defaultdict(int)    # cache -> programs the fresh-VM confirmation would confirm
    outside_us: list[int] = []                           # wall time not in total_us: slab line + transport
    started = time.monotonic()
    with QemuTarget(args.kernel) as target:
        target.measure_leaks = True
        for program in programs:                          # warm-up: first-use allocations
            target.run(program)
        for program in programs:
            counts = []
            for _ in range(args.runs):
                trace = target.run(program)
                if trace.outcome != "ok":
                    print(f"{program.id}: {trace.outcome} {trace.title}", file=sys.stderr)
                    break
                counts.append(trace.extra["slab"])
                outside_us.append(trace.extra["wall_us"] - trace.extra["total_us"])
            for before, after in zip(counts, counts[1:]):
                for cache in after:
                    deltas[cache].append(after[cache] - before.get(cache, 0))
            for cache in leaking(counts):
                confirmed[cache] += 1
            if args.confirm:
                for cache in _confirmed_caches(target, program, counts[-1]):
                    false_positives[cache] += 1
        kernel = target.label
    pairs = max((len(v) for v in deltas.values()), default=0)
    print(f"kernel {kernel}: {len(programs)} programs x {args.runs} runs, {pairs} consecutive pairs, "
          f"{time.monotonic() - started:.0f} s; per run, wall time outside the agent's total_us (slab "
          f"settling + transport): median {statistics.median(outside_us or [0]) / 1000:.1f} ms")
    print(f"{'cache':<20} {'moved':>7} {'min':>6} {'max':>6} {'mean':>7} {'|d|p95':>7} {'leak-rule':>15}"
          + (f" {'confirm':>11}" if args.confirm else ""))
    for cache in sorted(deltas):
        d = deltas[cache]
        moved = sum(1 for x in d if x)
        p95 = sorted(abs(x) for x in d)[max(0, int(len(d) * 0.95) - 1)]
        print(f"{cache:<20} {moved:>3}/{len(d):<3} {min(d):>6} {max(d):>6} {statistics.mean(d):>7.1f} "
              f"{p95:>7} {confirmed[cache]:>9}/{len(programs)}"
              + (f" {false_positives[cache]:>7}/{len(programs)}" if args.confirm else ""))
    return 0


def _confirmed_caches(target, program, counts: dict) -> list[str]:
    """The caches the campaign's confirmation would confirm for this program, each tried as a
    one-cache leak (a suspect of that cache), after a reboot as in the campaign."""
    target.restart()
    target.measure_leaks = True
    runs = {"program": [], "control": []}

    def run(which, prog):
        trace = target.run(prog)
        runs[which].append(trace.extra.get("slab"))
        return runs[which][-1]
    confirm_leak(Leak.of({cache: [0] for cache in counts}), lambda: run("program", program),
                 lambda: run("control", CONTROL), rounds=CONFIRM_ROUNDS)
    found = []
    for cache in counts:       # the same measured series, judged per cache
        replay = {key: iter(values) for key, values in runs.items()}
        if confirm_leak(Leak.of({cache: [0]}), lambda: next(replay["program"], None),
                        lambda: next(replay["control"], None)) == CONFIRM_ROUNDS:
            found.append(cache)
    return found


if __name__ == "__main__":
    sys.exit(main())
