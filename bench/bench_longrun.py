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
    load_before = round(os.getloadavg()[0], 2)
    first = campaign(args, scratch / "first", args.budget, args.every)
    corpus = scratch / "first" / "corpus"
    data = {"first": first, "corpus_after": corpus_size(corpus), "corpus_features_with_seeds": coverage(corpus, args.kernel),
            "rss_growth": growth(first["samples"], min(300, parse_duration(args.budget) / 2))}
    if parse_duration(args.restart) > 0:
        data["restart"] = campaign(args, scratch / "restart", args.restart, args.every, corpus=corpus, watch_new=True)
    write(result_of(args, data, load_before), args.json)


def result_of(args, data: dict, load_before: float) -> dict:
    """The measurement in bench/render.py's shape (figures), with the raw samples under ``data``."""
    first, restart, growth_ = data["first"], data.get("restart", {}), data["rss_growth"]
    summary, ratio = first["summary"], growth_.get("ratio", {})
    last = first["samples"][-1] if first["samples"] else {}
    figures = {
        "programs": summary.get("programs"), "programs/s": summary.get("programs_per_second"),
        "corpus programs before distillation": (summary.get("corpus") or {}).get("before_distill"),
        "corpus programs after distillation": data["corpus_after"]["programs"],
        "corpus KiB after distillation": round(data["corpus_after"]["bytes"] / 1024),
        "features seen (largest worker)": summary.get("model_features"),
        "features of the distilled corpus and the seeds": data["corpus_features_with_seeds"],
        "parent RSS MiB at the end": last.get("parent"),
        "worker RSS MiB at the end (sum)": round(sum(last.get("workers", {}).values()), 1),
        "QEMU RSS MiB at the end (sum)": round(sum(last.get("qemus", {}).values()), 1),
        f"RSS growth from {growth_.get('from_seconds')} s to the end (parent, workers, QEMUs)":
            [ratio.get("parent"), ratio.get("workers"), ratio.get("qemus")],
    }
    if restart:
        figures.update({"restart: working corpus loaded": restart["summary"].get("start_corpus"),
                        "restart: seconds to the first new program (boot included)": restart["first_new_program_seconds"],
                        "restart: features at its end": restart["summary"].get("model_features")})
    kvm = "KVM" if _kvm_used() else "QEMU TCG"
    return {"title": f"Long campaign: memory, corpus and restart ({args.budget}, {args.workers} workers)",
            "command": " ".join(["procfuzz", "bench", "longrun", *sys.argv[1:]]),
            "date": time.strftime("%Y-%m-%d", time.gmtime()),
            "kernel": str(summary.get("kernel", "")),
            "machine": f"{os.cpu_count()} cores, {kvm}, load average {load_before} before the run",
            "figures": figures,
            "notes": [f"Goals (issue 15): RSS growth at most {RSS_GROWTH_GOAL}x, the distilled corpus covering every "
                      f"feature seen, a restart generating new programs within {RESTART_GOAL_SECONDS} s.",
                      "A worker's RSS follows its in-memory corpus (about 16 KiB a program, parsed), which "
                      "grows with the features it finds."],
            "data": data}


def _kvm_used() -> bool:
    """What the targets chose (their cached verdict: /dev/kvm may exist and not work)."""
    from targets.cache import cache_root
    try:
        return any(json.loads((cache_root() / "kvm-verdict.json").read_text()).values())
    except (OSError, ValueError):
        return False


def write(result: dict, path: str | None) -> None:
    for name, value in result["figures"].items():
        print(f"{name:60} {value}")
    target = Path(path) if path else ROOT / "bench" / "results" / f"longrun-{time.strftime('%Y-%m-%d-%H%M%S')}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result, indent=1) + "\n")
    print(f"written to {target}")


if __name__ == "__main__":
    main()
