"""Noise of the leak oracle's slab counts on a stock kernel (no bug injected).

    python bench/bench_leak_noise.py [--kernel 6.1-cloud] [--runs 4] [--seeds corpus/seeds]

Runs every seed program ``--runs`` times in a row (after one warm-up pass over all of them) and,
per cache, compares the post-teardown active counts of consecutive runs of the same program:
how often they move, and by how much (growth = later run minus earlier run). On a correct
kernel every move is noise; fuzz/leaks.py sets its tolerance above what this prints, and the
last column (programs whose runs the leak rule, fuzz/leaks.py leaking, would confirm) must be 0.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz.compare.leaks import leaking  # noqa: E402
from fuzz.record.programs import load_directory  # noqa: E402
from targets.qemu import QemuTarget  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernel", default=None)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--seeds", default="corpus/seeds")
    args = parser.parse_args()
    programs = [program for _, program in load_directory(Path(args.seeds))[0]]
    deltas: dict[str, list[int]] = defaultdict(list)      # cache -> growth between consecutive runs
    confirmed: dict[str, int] = defaultdict(int)          # cache -> programs the leak rule would confirm
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
        kernel = target.label
    pairs = max((len(v) for v in deltas.values()), default=0)
    print(f"kernel {kernel}: {len(programs)} programs x {args.runs} runs, {pairs} consecutive pairs, "
          f"{time.monotonic() - started:.0f} s; per run, wall time outside the agent's total_us (slab "
          f"settling + transport): median {statistics.median(outside_us or [0]) / 1000:.1f} ms")
    print(f"{'cache':<20} {'moved':>7} {'min':>6} {'max':>6} {'mean':>7} {'|d|p95':>7} {'leak-rule':>15}")
    for cache in sorted(deltas):
        d = deltas[cache]
        moved = sum(1 for x in d if x)
        p95 = sorted(abs(x) for x in d)[max(0, int(len(d) * 0.95) - 1)]
        print(f"{cache:<20} {moved:>3}/{len(d):<3} {min(d):>6} {max(d):>6} {statistics.mean(d):>7.1f} "
              f"{p95:>7} {confirmed[cache]:>9}/{len(programs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
