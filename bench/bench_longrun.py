"""A long campaign's footprint: RSS of the parent, each worker and each QEMU over the run, the
corpus's size before and after distillation, and the start-up of a second campaign on that
corpus (how long until it generates new programs, and whether it has the corpus's coverage).

    procfuzz bench longrun [--budget 10m] [--workers 2] [--kernel PIN] [--every 30] [--restart 150s]
                           [--out DIR] [--json FILE]

The campaign is the real command (`python3 -m fuzz.cli run`, from this checkout) on the real
kernel; processes are found under it through /proc.  The figures go to
bench/results/longrun-<date>.json (or --json) with the command, date, kernel and machine.
Goals (issue 15): each process's RSS at the end within 1.5x of its RSS after 5 minutes; the
distilled corpus covering every feature the campaign saw; the restart generating new programs
within 2 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from corpus import SEED_DIRS  # noqa: E402
from fuzz.campaign.run import parse_duration  # noqa: E402
from fuzz.execute.kernels import model_for  # noqa: E402
from fuzz.record.corpus import program_features  # noqa: E402
from fuzz.record.programs import load_directory  # noqa: E402

RSS_GROWTH_GOAL = 1.5
RESTART_GOAL_SECONDS = 120


def processes() -> dict[int, tuple[int, str, int]]:
    """pid -> (parent pid, command line, RSS in KiB) of every process."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        rss = int(fields.get("VmRSS", "0 kB").split()[0])
        found[int(entry.name)] = (int(fields["PPid"]), cmdline, rss)
    return found


def sample(parent: int) -> dict:
    """RSS (MiB) of the campaign's parent, its workers and their QEMUs."""
    table = processes()
    children = {pid: info for pid, info in table.items() if info[0] == parent}
    workers = {pid: info for pid, info in children.items() if "spawn_main" in info[1]}
    qemus = {pid: info for pid, info in table.items() if info[0] in workers and "qemu-system" in info[1]}
    mib = lambda info: round(info[2] / 1024, 1)  # noqa: E731
    return {"parent": mib(table[parent]) if parent in table else None,
            "workers": {str(pid): mib(info) for pid, info in sorted(workers.items())},
            "qemus": {str(pid): mib(info) for pid, info in sorted(qemus.items())}}


def corpus_size(directory: Path) -> dict:
    files = [p for p in directory.glob("*.prog")] if directory.is_dir() else []
    return {"programs": len(files), "bytes": sum(p.stat().st_size for p in files)}


def campaign(args, out: Path, budget: str, every: float, corpus: Path | None = None, watch_new: bool = False) -> dict:
    command = [sys.executable, "-m", "fuzz.cli", "run", "--budget", budget, "--workers", str(args.workers),
               "--out", str(out), "--seed", str(args.seed)] + (["--kernel", args.kernel] if args.kernel else []) \
        + (["--corpus", str(corpus)] if corpus else [])
    corpus_dir = corpus or out / "corpus"
    # Not new: what the corpus had, and the seeds (a run copies those it replays into it).
    before = {p.name for p in corpus_dir.glob("*.prog")} if corpus_dir.is_dir() else set()
    before |= {f"{p.id}.prog" for directory in SEED_DIRS if Path(directory).is_dir()
               for _, p in load_directory(directory)[0]}
    started = time.monotonic()
    with open(out.parent / f"{out.name}.log", "w") as log:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        samples, first_new, next_sample = [], None, started
        while proc.poll() is None:
            now = time.monotonic()
            if watch_new and first_new is None and corpus_dir.is_dir() and \
                    any(p.name not in before for p in corpus_dir.glob("*.prog")):
                first_new = round(now - started, 1)
            if now >= next_sample:
                samples.append({"t": round(now - started), **sample(proc.pid), "corpus": corpus_size(corpus_dir),
                                "load": round(os.getloadavg()[0], 2)})
                print(json.dumps(samples[-1]), flush=True)
                next_sample += every
            time.sleep(0.5)
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    return {"command": " ".join(command), "exit": proc.returncode, "samples": samples, "summary": summary,
            "first_new_program_seconds": first_new}


def growth(samples: list[dict], at: float) -> dict:
    """Each role's RSS at the end over its RSS at ``at`` seconds (the first sample from then on)."""
    later = [s for s in samples if s["t"] >= at]
    if len(later) < 2:
        return {}
    first, last = later[0], later[-1]
    ratios = {"parent": round(last["parent"] / first["parent"], 2) if first["parent"] and last["parent"] else None}
    for role in ("workers", "qemus"):
        # QEMUs restart with their guest: compare the sums of a role, not pids.
        a, b = sum(first[role].values()), sum(last[role].values())
        ratios[role] = round(b / a, 2) if a and b else None
    return {"from_seconds": first["t"], "to_seconds": last["t"], "ratio": ratios}


def coverage(corpus: Path, kernel: str | None) -> int:
    model = model_for(kernel)
    programs = [p for directory in (*SEED_DIRS, corpus) if Path(directory).is_dir()
                for _, p in load_directory(directory)[0]]
    return len(frozenset().union(*(program_features(p, model) for p in programs)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="10m")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--kernel", default=None)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--every", type=float, default=30.0, help="seconds between RSS samples")
    parser.add_argument("--restart", default="150s", help="budget of the second campaign on the corpus ('0': none)")
    parser.add_argument("--out", default=None, help="keep the campaigns' output here (default: a temporary directory)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    scratch = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="procfuzz-bench-longrun-"))
    scratch.mkdir(parents=True, exist_ok=True)
    first = campaign(args, scratch / "first", args.budget, args.every)
    corpus = scratch / "first" / "corpus"
    result = {"benchmark": "longrun", "command": " ".join(["procfuzz", "bench", "longrun", *sys.argv[1:]]),
              "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
              "kernel": first["summary"].get("kernel"),
              "machine": {"host": platform.node(), "cores": os.cpu_count(), "python": platform.python_version(),
                          "kvm": os.access("/dev/kvm", os.R_OK | os.W_OK)},
              "budget_seconds": parse_duration(args.budget), "workers": args.workers, "first": first,
              "rss_growth": growth(first["samples"], min(300, parse_duration(args.budget) / 2)),
              "corpus_after": corpus_size(corpus), "corpus_features_with_seeds": coverage(corpus, args.kernel)}
    if parse_duration(args.restart) > 0:
        second = campaign(args, scratch / "restart", args.restart, args.every, corpus=corpus, watch_new=True)
        result["restart"] = second
    write(result, args.json)


def write(result: dict, path: str | None) -> None:
    first, restart = result["first"], result.get("restart", {})
    summary = first["summary"]
    print(f"first campaign: exit {first['exit']}, {summary.get('programs')} programs, "
          f"corpus {summary.get('corpus')}, features seen {summary.get('model_features')}, "
          f"corpus+seeds cover {result['corpus_features_with_seeds']}")
    print(f"RSS growth: {result['rss_growth']} (goal <= {RSS_GROWTH_GOAL}x)")
    if restart:
        print(f"restart: exit {restart['exit']}, start corpus {restart['summary'].get('start_corpus')}, "
              f"first new program after {restart['first_new_program_seconds']} s (goal <= {RESTART_GOAL_SECONDS} s), "
              f"features {restart['summary'].get('model_features')}")
    target = Path(path) if path else ROOT / "bench" / "results" / f"longrun-{time.strftime('%Y%m%d-%H%M%S')}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"written to {target}")


if __name__ == "__main__":
    main()
