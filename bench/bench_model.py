"""Model throughput: ops per second of the reference model on generated programs.

Target (issue 2): at least 50,000 ops/s on one core.  Run: `python bench/bench_model.py`
(or `procfuzz bench model`).  Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz.generate.source import ProgramSource  # noqa: E402
from reference.model import Kernel  # noqa: E402
from targets.kernels import load_profile  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programs", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--kernel", default=None)
    args = parser.parse_args()
    profile = load_profile(args.kernel)
    source = ProgramSource(profile, [], random.Random(1), max_ops=40)
    started = time.perf_counter()
    programs = [source.next() for _ in range(args.programs)]
    generate_s = time.perf_counter() - started
    ops = sum(len(p) for p in programs) * args.repeat
    started = time.perf_counter()
    for _ in range(args.repeat):
        for program in programs:
            kernel = Kernel(profile)
            for op in program.ops:
                kernel.apply(op)
    model_s = time.perf_counter() - started
    print(f"generation: {args.programs / generate_s:,.0f} programs/s "
          f"({sum(len(p) for p in programs) / generate_s:,.0f} ops/s)")
    print(f"model:      {ops / model_s:,.0f} ops/s over {ops} ops "
          f"({args.programs * args.repeat / model_s:,.0f} programs/s); target >= 50,000 ops/s")


if __name__ == "__main__":
    main()
