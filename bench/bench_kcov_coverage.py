"""What a corpus reaches of the probed proc/sysctl functions, per file, on several kernels.

    python bench/bench_kcov_coverage.py [--kernels 6.1-cloud,6.12-cloud] [CORPUS_DIR] [--json]

The library call of `procfuzz coverage` (fuzz/triage/kernel_coverage.py) on each kernel; default
corpus: corpus/seeds + corpus/regressions. Prints reached / probed per source file and kernel,
and the never-reached functions; --json writes bench/results/kcov-coverage-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import corpus  # noqa: E402
from fuzz.execute.kernels import KernelSpec, open_qemu  # noqa: E402
from fuzz.record.programs import load_directory  # noqa: E402
from fuzz.triage.kernel_coverage import KernelCoverage, measure  # noqa: E402
from targets.coverage.lists import load_probe_list  # noqa: E402

from bench_kcov_probe import write_result  # noqa: E402  (bench/ is the script's directory)


def measure_kernels(kernels: list[str], directories) -> dict[str, KernelCoverage]:
    programs = [entry for directory in directories for entry in load_directory(Path(directory))[0]]
    found = {}
    for kernel in kernels:
        with open_qemu(KernelSpec(kernel, coverage=EXACT)) as target:
            found[kernel] = measure(programs, target, load_probe_list(kernel))
    return found


def table(found: dict[str, KernelCoverage]) -> list[list]:
    """One row per source file: reached/probed on each kernel, then the totals."""
    per_kernel = {kernel: {path: f"{reached}/{total}" for path, reached, total in coverage.by_file()}
                  for kernel, coverage in found.items()}
    files = sorted({path for cells in per_kernel.values() for path in cells})
    rows = [[path] + [per_kernel[kernel].get(path, "-") for kernel in found] for path in files]
    rows.append(["all probed functions"] + [f"{c.reached}/{len(c.probes.names)} ({c.fraction:.1%})"
                                            for c in found.values()])
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", nargs="?", default=None)
    parser.add_argument("--kernels", default="6.1-cloud,6.12-cloud")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    kernels = args.kernels.split(",")
    found = measure_kernels(kernels, [args.corpus] if args.corpus else corpus.SEED_DIRS)
    rows = table(found)
    for row in rows:
        print("  ".join(f"{cell:28}" for cell in row))
    notes = [f"{kernel}: {coverage.runs} programs; never reached: "
             + ", ".join(f"{name} ({path.rsplit('/', 1)[-1]})" for path, name in coverage.unreached())
             for kernel, coverage in found.items()]
    for note in notes:
        print(note)
    if args.json:
        today = datetime.date.today().isoformat()
        labels = "; ".join(f"{kernel}: {coverage.kernel}" for kernel, coverage in found.items())
        doc = {"title": "Kernel coverage of the shipped corpus",
               "command": f"python bench/bench_kcov_coverage.py --kernels {args.kernels}"
                          + (f" {args.corpus}" if args.corpus else "") + " --json",
               "date": today, "kernel": labels, "machine": "2 cores shared, QEMU TCG",
               "columns": ["source file"] + [f"{kernel} reached/probed" for kernel in kernels],
               "rows": rows,
               "notes": [f"corpus: {args.corpus or 'corpus/seeds + corpus/regressions'}; unreached functions "
                         "are explained in docs/model-gaps.md (Kernel code the corpus does not reach)."] + notes}
        write_result("kcov-coverage", doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
