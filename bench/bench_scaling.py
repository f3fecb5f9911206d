"""Scaling of the local runtime: campaign programs/s with 1 and 2 workers (one VM each).

    procfuzz bench scaling [--kernel 6.1-cloud] [--budget 90] [--seed 1] [--workers 1 2] [--json FILE]

Each configuration is one `procfuzz run` job (fuzz.runtimes.LocalRuntime) with the same seed and
budget and no leak measurements; programs/s is the campaign's own figure (programs over its wall
time, VM boot included). The goal: 2 workers >= 1.6x one worker on a machine with 2 free cores.
The 1-minute load average before each run is printed: on a shared machine it explains a miss.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz.campaign.shards import WHOLE  # noqa: E402
from fuzz.scale.runtimes import Job, LocalRuntime  # noqa: E402

GOAL = 1.6


def measure(workers: int, args, scratch: Path) -> dict:
    runtime = LocalRuntime(scratch / f"workers-{workers}")
    runtime.prepare()
    load = os.getloadavg()[0]
    handles = runtime.submit([Job(WHOLE, args.seed, args.budget, args.kernel, workers,
                                  extra_args=("--leak-every", "0"))])
    codes = runtime.wait(handles, time.monotonic() + args.budget + 600)
    summary_path = runtime.work / WHOLE.dirname / "summary.json"
    if codes[0] not in (0, 1) or not summary_path.exists():
        log = (runtime.work / WHOLE.dirname / "run.log").read_text(errors="replace")[-2000:]
        raise SystemExit(f"bench scaling: the {workers}-worker run failed (exit {codes[0]}):\n{log}")
    summary = json.loads(summary_path.read_text())
    return {"workers": workers, "programs": summary["programs"], "seconds": summary["seconds"],
            "programs_per_second": summary["programs_per_second"], "load_before": round(load, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", default=None)
    parser.add_argument("--budget", type=int, default=90, help="seconds per configuration")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="procfuzz-bench-scaling-") as scratch:
        rows = [measure(workers, args, Path(scratch)) for workers in args.workers]
    base = rows[0]["programs_per_second"] or float("nan")
    for row in rows:
        row["speedup"] = round(row["programs_per_second"] / base, 2)
    print(f"{'workers':>7} {'programs':>9} {'seconds':>8} {'programs/s':>11} {'speed-up':>9} {'load before':>12}")
    for row in rows:
        print(f"{row['workers']:>7} {row['programs']:>9} {row['seconds']:>8} {row['programs_per_second']:>11} "
              f"{row['speedup']:>8}x {row['load_before']:>12}")
    two = next((row for row in rows if row["workers"] == 2), None)
    result = {"cores": os.cpu_count(), "budget_seconds": args.budget, "seed": args.seed, "rows": rows,
              "goal_two_workers_speedup": GOAL,
              "goal_met": None if two is None else two["speedup"] >= GOAL}
    if two is not None:
        print(f"2 workers: {two['speedup']}x one worker (goal >= {GOAL}x with 2 free cores): "
              f"{'met' if result['goal_met'] else 'not met'}")
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
