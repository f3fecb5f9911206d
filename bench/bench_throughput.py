"""Throughput of the main job, and where a program's time goes.

    procfuzz bench throughput [--programs 400] [--workers 2] [--seed 1] [--rounds 1]
                              [--kernel PIN] [--compare REV] [--state-checks off,every] [--save]

Runs the same seeded campaign (`procfuzz run --seed S --max-programs N --workers W`, a fresh
output and corpus each time) and prints programs/s, the guest's share of the workers' wall time
and, per program, each phase of the worker's loop in wall milliseconds and in CPU milliseconds
of the worker process and of QEMU (summary.json's "breakdown").  With `--compare REV`, the
campaign of git revision REV (checked out in a temporary worktree) runs too, alternating with
this checkout's, never concurrently, so that both see the same machine.  `--state-checks off,every`
runs this checkout once per `--state-check` setting (each round alternating), so the state check's
cost shows as programs/s and ops per program.  Prints figures only;
`--save` writes them to bench/results/ (then `python bench/render.py`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fuzz.errors import ToolError  # noqa: E402
from fuzz.record.summary import PHASES, read_summary  # noqa: E402
from targets.kernels import resolve  # noqa: E402


def campaign(tree: Path, args, out: Path, extra: tuple = ()) -> dict:
    """One run of `procfuzz run` from the checkout ``tree`` (with the options ``extra``); its summary.json."""
    command = [sys.executable, "-m", "fuzz.cli", "run", "--seed", str(args.seed), "--workers", str(args.workers),
               "--max-programs", str(args.programs), "--budget", "1h", "--out", str(out),
               "--corpus", str(out / "corpus"), "--no-distill", *extra]
    if args.kernel:
        command += ["--kernel", args.kernel]
    # Its own tree first on the path: an installed procfuzz must not stand in for the revision.
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(command, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, check=False, timeout=3600)
    summary = read_summary(out)
    if summary.get("errors") or not summary.get("programs"):
        # A campaign that failed measures nothing: say why rather than print a zero.
        why = (summary.get("errors") or [done.stderr.strip()[-2000:]])[0]
        raise ToolError(f"the campaign of {tree} ran no program or failed: {why}")
    return summary


def figures(summary: dict) -> dict:
    programs = max(int(summary["programs"]), 1)
    worker_seconds = float(summary["seconds"]) * int(summary["workers"])
    row = {"programs": int(summary["programs"]),
           "programs/s": round(int(summary["programs"]) / float(summary["seconds"]), 2),
           "ops/program": round(int(summary["ops"]) / programs, 1),
           "guest share": round(float(summary["guest_seconds"]) / worker_seconds, 3)}
    if breakdown := summary.get("breakdown"):
        for phase in PHASES:
            row[f"{phase} wall ms"] = round(1000 * breakdown["wall_seconds"][phase] / programs, 2)
            row[f"{phase} cpu ms"] = round(1000 * breakdown["cpu_seconds"][phase] / programs, 2)
        row["qemu cpu ms"] = round(1000 * breakdown["qemu_cpu_seconds"] / programs, 2)
    return row


def checkout(rev: str, into: Path) -> Path:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(into), rev],
                   check=True, capture_output=True)
    return into


def measure(args) -> dict[str, list[dict]]:
    """Rounds of each tree's campaign, alternating: name -> one figures row per round."""
    scratch = Path(tempfile.mkdtemp(prefix="pfz-throughput-"))
    # name -> (tree, extra options of its `procfuzz run`)
    runs = {"this checkout": (ROOT, ())}
    if args.state_checks:
        runs = {f"this checkout, --state-check {check}": (ROOT, ("--state-check", check))
                for check in args.state_checks.split(",")}
    try:
        if args.compare:
            runs = {args.compare: (checkout(args.compare, scratch / "rev"), ()), **runs}
        rows: dict[str, list[dict]] = {name: [] for name in runs}
        for round_ in range(args.rounds):
            for name, (tree, extra) in runs.items():
                out = scratch / f"run-{round_}-{len(rows[name])}-{name.replace(' ', '-').replace(',', '')}"
                rows[name].append(figures(campaign(tree, args, out, extra)))
                shutil.rmtree(out, ignore_errors=True)
                print(f"round {round_ + 1} {name}: {rows[name][-1]['programs/s']} programs/s, "
                      f"guest share {rows[name][-1]['guest share']:.0%}", flush=True)
        return rows
    finally:
        if args.compare:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(scratch / "rev")],
                           check=False, capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)


def median_row(rows: list[dict]) -> dict:
    return {key: round(statistics.median(row[key] for row in rows), 3)
            for key in rows[0] if all(key in row for row in rows)}


def result_document(rows: dict[str, list[dict]], args) -> dict:
    medians = {name: median_row(runs) for name, runs in rows.items()}
    keys = [key for key in next(iter(medians.values()))]
    for runs in medians.values():
        keys += [key for key in runs if key not in keys]
    names = list(medians)
    table = [[key] + [medians[name].get(key, "") for name in names] for key in keys]
    compare = f" --compare {args.compare}" if args.compare else ""
    compare += f" --state-checks {args.state_checks}" if args.state_checks else ""
    return {"title": "Throughput of the main job and where a program's time goes",
            "command": f"procfuzz bench throughput --programs {args.programs} --workers {args.workers} "
                       f"--seed {args.seed} --rounds {args.rounds}{compare}",
            "date": time.strftime("%Y-%m-%d"), "kernel": resolve(args.kernel).label,
            "machine": f"{platform.system()} {platform.release()}, {os.cpu_count()} cores (load average "
                       f"{os.getloadavg()[0]:.1f} at the end), TCG",
            "columns": ["figure (median of rounds; ms are per program)"] + names,
            "rows": table,
            "notes": [f"{args.rounds} rounds, alternating; each worker ran {args.programs} programs.",
                      "Phases: generate, model, guest ops/sandbox (the agent's clocks), transport (the "
                      "rest of a kernel run: channel, host side), compare, reruns (of divergent "
                      "programs), leak (slab settling, re-runs, confirmation), record."]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programs", type=int, default=400, help="programs per worker")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--kernel", default=None)
    parser.add_argument("--compare", metavar="REV", help="also run git revision REV, alternating")
    parser.add_argument("--state-checks", default=None, metavar="off,every",
                        help="run this checkout once per --state-check setting (e.g. off,every)")
    parser.add_argument("--save", action="store_true", help="write the result to bench/results/")
    args = parser.parse_args()
    doc = result_document(measure(args), args)
    print("  ".join(str(c).ljust(24) for c in doc["columns"]))
    for row in doc["rows"]:
        print("  ".join(str(v).ljust(24) for v in row))
    if args.save:
        kind = f"-state-check-{args.state_checks.replace(',', '-')}" if args.state_checks else ""
        path = ROOT / "bench" / "results" / f"throughput{kind}-{doc['date']}.json"
        path.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"saved {path}")


if __name__ == "__main__":
    main()
