"""Minimisation speed on a real kernel: the stale_pid zoo bug's 6 ops padded with unrelated ops
(fresh processes, threads and fds observed through the same mount) to ~100 ops, minimised under
the kernel with the bug injected.  Goal: <= 2 minutes under TCG for a 100-op finding.

    python bench/bench_minimize.py [--kernel 6.1-cloud] [--blocks 2] [--retries 3]

Prints the program sizes, the kernel runs, the minimisation's wall time (the boot is not in it:
a campaign's minimiser reuses a booted guest) and the mean time of one kernel run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))     # the padded zoo program of tests/test_minimize.py

from fuzz.triage.minimize import minimize, signature_of  # noqa: E402
from fuzz.compare.oracle import compare  # noqa: E402
from reference.program import parse_text  # noqa: E402
from targets.kernels import load_profile  # noqa: E402
from targets.model_target import ModelTarget  # noqa: E402
from targets.qemu import QemuTarget  # noqa: E402
from test_minimize import STALE_PID_CORE, padded  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", default=None)
    parser.add_argument("--blocks", type=int, default=2, help="unrelated 8-op blocks before each core op")
    parser.add_argument("--retries", type=int, default=3)
    args = parser.parse_args()
    program = parse_text(padded(STALE_PID_CORE, args.blocks))
    model = ModelTarget(load_profile(args.kernel))
    expected = model.run(program)
    started = time.monotonic()
    with QemuTarget(args.kernel, zoo="stale_pid") as target:
        booted = time.monotonic()
        actual = target.run(program)
        divergence = compare(program, expected, actual)
        if divergence is None:
            sys.exit("the padded program does not diverge: is the zoo bug injected?")
        signature = signature_of(program, expected, actual, divergence)
        result = minimize(program, signature, target.run, model, retries=args.retries)
        label = target.label
    print(f"kernel            {label} (accel {target.accel})")
    print(f"signature         {signature}")
    print(f"boot              {booted - started:.1f} s (not counted)")
    print(f"original          {len(program)} ops")
    print(f"minimised         {len(result.program)} ops, {result.steps} accepted steps")
    print(f"kernel runs       {result.kernel_runs} (retries {args.retries})")
    print(f"minimisation      {result.seconds:.1f} s  (goal: <= 120 s)")
    print(f"per kernel run    {result.seconds / max(result.kernel_runs, 1) * 1000:.0f} ms (with model runs)")
    sys.stdout.write("".join("    " + line + "\n" for line in result.program.to_text().splitlines()))


if __name__ == "__main__":
    main()
