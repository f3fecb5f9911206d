"""What the kernel coverage probe costs: the same programs on one kernel without the probe, with
its ftrace and its kprobe mode, and with each way of settling, side by side.

    python bench/bench_kcov_probe.py [--kernel 6.1-cloud] [--rounds 3] [--json]

One VM per mode, booted first; every round runs the corpus (corpus/seeds + corpus/regressions),
each program on every mode's VM in a row. settle=0 counts what the probe itself costs; settle=1
(the default) adds the wait for the program's netns teardown, settle=2 the RCU callbacks too. Prints programs/s (host wall clock), the guest's own
time per program (the agent's total_us: sandbox, ops and teardown), each probe mode's overhead on
that guest time, and the probe's hits (counted calls) per program. --json writes
bench/results/kcov-probe-<kernel>-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from reference.program import parse  # noqa: E402
from targets.qemu import QemuTarget  # noqa: E402

# mode -> QemuTarget(coverage=...): the probe module's parameters
MODES = {"off": False, "ftrace settle=0": "mode=ftrace settle=0", "kprobe settle=0": "mode=kprobe settle=0",
         "ftrace settle=0 async=0 (campaigns)": "mode=ftrace settle=0 async=0",
         "ftrace settle=1 (procfuzz coverage)": "mode=ftrace settle=1", "ftrace settle=2": "mode=ftrace settle=2"}
CORPUS = ("corpus/seeds", "corpus/regressions")


def write_result(stem: str, doc: dict) -> Path:
    """bench/results/<stem>-<date>.json, dated today (the doc's date)."""
    out = ROOT / "bench" / "results" / f"{stem}-{doc['date']}.json"
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return out


def corpus_programs() -> list:
    return [parse(path.read_text(), str(path)) for folder in CORPUS
            for path in sorted((ROOT / folder).glob("*.prog"))]


def measure(kernel: str | None, rounds: int, modes: dict = MODES) -> dict:
    """Each program runs on every mode's VM in a row (the modes' order turning from program to
    program), so load that comes and goes on the machine hits every mode alike."""
    programs = corpus_programs()
    targets = {mode: QemuTarget(kernel, coverage=parameters) for mode, parameters in modes.items()}
    figures = {mode: {"wall_s": 0.0, "guest_us": [], "hits": [], "failures": 0} for mode in modes}
    try:
        for target in targets.values():
            target.start()
        turn = 0
        for _ in range(rounds):
            for program in programs:
                turn += 1
                order = list(modes)
                for mode in order[turn % len(order):] + order[:turn % len(order)]:
                    started = time.monotonic()
                    trace = targets[mode].run(program)
                    figures[mode]["wall_s"] += time.monotonic() - started
                    ok = trace.outcome == "ok"
                    figures[mode]["failures"] += not ok
                    figures[mode]["guest_us"].append(trace.extra["total_us"] if ok else None)
                    figures[mode]["hits"].append(sum(trace.extra.get("kcov", {}).values()))
        label = targets["off"].image.label
    finally:
        for target in targets.values():
            target.close()
    runs = rounds * len(programs)
    base = figures["off"]["guest_us"]
    return {"label": label, "programs": runs, "modes": {
        mode: {"programs/s": runs / f["wall_s"],
               "guest ms/program": statistics.mean(us for us in f["guest_us"] if us) / 1e3,
               # the same program's run right before or after on the probe-less VM: the machine's
               # load moves both alike, so the median of these ratios is steadier than the means'
               "vs off": statistics.median(us / off for us, off in zip(f["guest_us"], base) if us and off) - 1,
               "hits/program": statistics.mean(f["hits"]), "failures": f["failures"]}
        for mode, f in figures.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", default=None, metavar="A,B",
                        help="only the modes whose names start with these (e.g. 'off,ftrace settle=0 async'); "
                             "off is always measured")
    parser.add_argument("--json", action="store_true", help="write the figures to bench/results/")
    args = parser.parse_args()
    prefixes = [text.strip() for text in args.modes.split(",")] if args.modes else None
    modes = {mode: parameters for mode, parameters in MODES.items()
             if prefixes is None or mode == "off" or any(mode.startswith(p) for p in prefixes if p)}
    result = measure(args.kernel, args.rounds, modes)
    rows = []
    for mode, f in result["modes"].items():
        rows.append([mode, round(f["programs/s"], 2), round(f["guest ms/program"], 1),
                     "baseline" if mode == "off" else f"{f['vs off']:+.1%}", round(f["hits/program"]), f["failures"]])
        print(f"{mode:16} {f['programs/s']:6.2f} programs/s  guest {f['guest ms/program']:7.1f} ms/program  "
              f"{rows[-1][3]:>9}  {f['hits/program']:7.0f} hits/program  failures {f['failures']}")
    if args.json:
        today = datetime.date.today().isoformat()
        version = result["label"].split("=", 1)[1].split("-")[0]
        doc = {"title": "Kernel coverage probe: cost per mode", "command":
               f"python bench/bench_kcov_probe.py --kernel {args.kernel or 'default'} --rounds {args.rounds}"
               + (f" --modes '{args.modes}'" if args.modes else "") + " --json",
               "date": today, "kernel": f"{version} ({result['label']})",
               "machine": f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end, QEMU TCG",
               "columns": ["probe", "programs/s", "guest ms/program", "guest time vs off (median of pairs)", "hits/program",
                           "failed runs"],
               "rows": rows,
               "notes": [f"{result['programs']} runs per mode: corpus/seeds + corpus/regressions, "
                         f"{args.rounds} rounds, each program on every mode's VM in a row.",
                         "settle=0: the probe alone; settle=1 (default): also waits for the program's "
                         "netns teardown; settle=2: and for RCU callbacks."]}
        write_result(f"kcov-probe-{version}", doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
