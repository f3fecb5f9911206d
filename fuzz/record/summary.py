"""summary.json: a run's counters (Stats) and what the run was, or, for a merged directory, each
source run's summary once and their sums.  This module alone writes and reads it."""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .programs import atomic_write

SUMMARY = "summary.json"
MAX_JSON_BYTES = 1 << 20          # a summary larger than this is not ours


# Where a worker's wall time goes, program by program (fuzz/campaign/worker.py): the guest's
# three parts come from the agent's own clocks (trace extra: ops_us, total_us, wall_us).
PHASES = ("generate", "model", "guest ops", "guest sandbox", "transport", "compare", "reruns",
          "leak", "record")


@dataclass
class Breakdown:
    wall: Counter = field(default_factory=Counter)       # phase -> wall seconds
    cpu: Counter = field(default_factory=Counter)        # phase -> CPU seconds of the worker process
    qemu_cpu: float = 0.0                                # CPU seconds of the worker's QEMU processes

    def merge(self, other: "Breakdown"):
        self.wall.update(other.wall)
        self.cpu.update(other.cpu)
        self.qemu_cpu += other.qemu_cpu

    def to_json(self) -> dict:
        return {"wall_seconds": {phase: round(self.wall[phase], 3) for phase in PHASES},
                "cpu_seconds": {phase: round(self.cpu[phase], 3) for phase in PHASES},
                "qemu_cpu_seconds": round(self.qemu_cpu, 3)}

    @classmethod
    def from_json(cls, doc: dict) -> "Breakdown":
        return cls(Counter({str(k): float(v) for k, v in doc["wall_seconds"].items()}),
                   Counter({str(k): float(v) for k, v in doc["cpu_seconds"].items()}),
                   float(doc["qemu_cpu_seconds"]))


@dataclass
class Stats:
    programs: int = 0
    ops: int = 0
    findings: Counter = field(default_factory=Counter)     # class -> new findings recorded
    duplicates: int = 0
    leak_suspects: int = 0                                  # programs the leak oracle re-ran
    unconfirmed: int = 0                                    # leaks that did not confirm in a fresh VM
    corpus_added: int = 0
    from_others: int = 0                                    # programs run that other workers added (exchange)
    features: int = 0
    kernel_functions: int = 0                               # probed kernel functions reached (run --kernel-coverage)
    restarts: int = 0
    host_faults: int = 0                                    # guests lost without a kernel report
    guest_us: int = 0
    errors: list = field(default_factory=list)              # worker-level failures (tool bugs)
    stopped: list = field(default_factory=list)             # workers that could not boot their kernel, with why
    time: Breakdown = field(default_factory=Breakdown)

    def merge(self, other: "Stats"):
        self.programs += other.programs
        self.ops += other.ops
        self.findings.update(other.findings)
        self.duplicates += other.duplicates
        self.unconfirmed += other.unconfirmed
        self.leak_suspects += other.leak_suspects
        self.corpus_added += other.corpus_added
        self.from_others += other.from_others
        self.features = max(self.features, other.features)
        # Workers count what they saw: the max is a lower bound of the union, as for features.
        self.kernel_functions = max(self.kernel_functions, other.kernel_functions)
        self.restarts += other.restarts
        self.host_faults += other.host_faults
        self.guest_us += other.guest_us
        self.errors += other.errors
        self.stopped += other.stopped
        self.time.merge(other.time)

    def to_json(self) -> dict:
        return {"programs": self.programs, "ops": self.ops, "findings": dict(self.findings),
                "duplicates": self.duplicates, "unconfirmed_leaks": self.unconfirmed,
                "leak_suspects": self.leak_suspects, "corpus_added": self.corpus_added,
                "programs_from_others": self.from_others, "model_features": self.features,
                "kernel_functions": self.kernel_functions, "vm_restarts": self.restarts,
                "host_faults": self.host_faults, "guest_seconds": round(self.guest_us / 1e6, 3), "errors": self.errors,
                "stopped_workers": self.stopped, "breakdown": self.time.to_json()}

    @classmethod
    def from_json(cls, doc: dict) -> "Stats":
        """The counters of a summary (to_json's inverse), for merging runs; raises KeyError,
        TypeError, ValueError or AttributeError on a malformed one."""
        return cls(programs=int(doc["programs"]), ops=int(doc["ops"]),
                   findings=Counter({str(cls_): int(n) for cls_, n in doc["findings"].items()}),
                   duplicates=int(doc["duplicates"]), unconfirmed=int(doc.get("unconfirmed_leaks", 0)),
                   leak_suspects=int(doc.get("leak_suspects", 0)),
                   corpus_added=int(doc["corpus_added"]), from_others=int(doc.get("programs_from_others", 0)),
                   features=int(doc["model_features"]),
                   kernel_functions=int(doc.get("kernel_functions", 0)),
                   restarts=int(doc["vm_restarts"]), host_faults=int(doc.get("host_faults", 0)),
                   guest_us=round(float(doc["guest_seconds"]) * 1e6),
                   errors=[str(error) for error in _json_list(doc["errors"])],
                   stopped=[str(why) for why in _json_list(doc.get("stopped_workers", []))],
                   time=Breakdown.from_json(doc["breakdown"]) if "breakdown" in doc else Breakdown())


def _json_list(value) -> list:
    if not isinstance(value, list):
        raise TypeError(f"expected a list, got {type(value).__name__}")
    return value


def write_summary(out: Path, stats: Stats, extra: dict) -> Path:
    path = Path(out) / SUMMARY
    atomic_write(path, json.dumps({**extra, **stats.to_json()}, indent=1, sort_keys=True))
    return path


def read_summary(out: Path) -> dict:
    """The summary of a run output (ValueError or OSError if it has none or it is malformed)."""
    doc = _read_json(Path(out) / SUMMARY)
    if not isinstance(doc, dict):
        raise ValueError(f"{Path(out) / SUMMARY}: not a procfuzz summary")
    return doc


# ---- summaries -----------------------------------------------------------------------------------

def _read_json(path: Path):
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            return None
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _is_run_summary(doc) -> bool:
    try:
        Stats.from_json(doc)
        return True
    except (AttributeError, KeyError, TypeError, ValueError):
        return False


def run_summaries(out: Path) -> list[dict]:
    """The run summaries a summary.json stands for: itself, or the runs of a merged one."""
    path = Path(out) / SUMMARY
    if not path.exists():
        return []
    doc = _read_json(path)
    runs = doc["runs"] if isinstance(doc, dict) and isinstance(doc.get("runs"), list) else [doc]
    valid = [run for run in runs if _is_run_summary(run)]
    if len(valid) != len(runs):
        print(f"procfuzz: merge: {path}: not a procfuzz summary ({len(runs) - len(valid)} bad runs), ignored",
              file=sys.stderr)
    return valid


def write_merged_summary(out: Path, runs: list[dict], distinct_findings: int, corpus_programs: int) -> dict:
    """Each run once (identical summaries are the same run merged twice), and their sums."""
    unique = {json.dumps(run, sort_keys=True): run for run in runs}
    ordered = [unique[key] for key in sorted(unique)]
    total = Stats()
    for run in ordered:
        total.merge(Stats.from_json(run))
    summary = {**total.to_json(),
            "runs": ordered,
            "kernels": sorted({str(run.get("kernel", "")) for run in ordered}),
            "workers": sum(int(run.get("workers", 0)) for run in ordered),
            "programs_per_second": round(sum(float(run.get("programs_per_second", 0)) for run in ordered), 2),
            "interrupted": any(run.get("interrupted") for run in ordered),
            "distinct_findings": distinct_findings, "corpus_programs": corpus_programs}
    atomic_write(Path(out) / SUMMARY, json.dumps(summary, indent=1, sort_keys=True))
    return summary
