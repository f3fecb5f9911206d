"""Render the measured results under bench/results/ into docs/benchmarks.md.

    python bench/render.py            # (re)write docs/benchmarks.md
    python bench/render.py --check    # exit 1 if docs/benchmarks.md is not what this would write

Each bench/results/*.json is one measurement: ``title``, ``command``, ``date``, ``kernel``,
``machine``, then either ``columns`` and ``rows`` (a table) or ``figures`` (an object of
name -> value, rendered as a two-column table); ``notes`` (a list of strings) is optional.
Sections are sorted by title, then date.  Standard library only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
OUTPUT = ROOT / "docs" / "benchmarks.md"
REQUIRED = ("title", "command", "date", "kernel", "machine")
HEADER = """# Benchmarks

Measured results of procfuzz's benchmarks and campaigns, one section per measurement. Each
section is rendered from a JSON file under `bench/results/` by `python bench/render.py`; edit
the JSON, not this page (`python bench/render.py --check` fails when the two disagree). Times are
wall-clock seconds; "TCG" means QEMU without KVM. Figures depend on the machine, its load, the
seed and the generator's version: compare figures of one machine and one version only.
"""


class ResultError(Exception):
    """A result file that does not have the expected shape."""


def load(path: Path) -> dict:
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ResultError(f"{path}: {err}") from None
    if not isinstance(result, dict):
        raise ResultError(f"{path}: not a JSON object")
    missing = [key for key in REQUIRED if not isinstance(result.get(key), str)]
    if missing:
        raise ResultError(f"{path}: needs string field(s) {', '.join(missing)}")
    has_table = "columns" in result or "rows" in result
    if has_table == ("figures" in result):
        raise ResultError(f"{path}: needs either columns and rows, or figures")
    if has_table and not (isinstance(result.get("columns"), list) and isinstance(result.get("rows"), list)
                          and all(isinstance(row, list) and len(row) == len(result["columns"])
                                  for row in result["rows"])):
        raise ResultError(f"{path}: every row needs one value per column")
    if not has_table and not isinstance(result["figures"], dict):
        raise ResultError(f"{path}: figures must be an object of name -> value")
    return result


def cell(value) -> str:
    if value is None:
        return "-"
    text = value if isinstance(value, str) else json.dumps(value)
    return text.replace("|", "\\|").replace("\n", " ")


def table(columns: list, rows: list) -> list[str]:
    lines = ["| " + " | ".join(cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return lines


def section(result: dict, source: str) -> list[str]:
    lines = [f"## {result['title']}", "",
             f"- command: `{result['command']}`",
             f"- date: {result['date']}",
             f"- kernel: {result['kernel']}",
             f"- machine: {result['machine']}",
             f"- data: [{source}](../{source})", ""]
    if "figures" in result:
        lines += table(["figure", "value"], [[name, value] for name, value in result["figures"].items()])
    else:
        lines += table(result["columns"], result["rows"])
    notes = result.get("notes") or []
    if notes:
        lines += [""] + [f"- {note}" for note in notes]
    return lines + [""]


def render(results_dir: Path = RESULTS) -> str:
    results = [(load(path), f"bench/results/{path.name}") for path in sorted(results_dir.glob("*.json"))]
    results.sort(key=lambda item: (item[0]["title"], item[0]["date"], item[1]))
    lines = HEADER.splitlines() + [""]
    if not results:
        lines += ["No results yet.", ""]
    for result, source in results:
        lines += section(result, source)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if docs/benchmarks.md is not up to date, write nothing")
    args = parser.parse_args(argv)
    try:
        text = render(RESULTS)
    except ResultError as err:
        print(f"render: {err}", file=sys.stderr)
        return 2
    if args.check:
        current = OUTPUT.read_text() if OUTPUT.is_file() else ""
        if current != text:
            print(f"render: {OUTPUT} is out of date: run python bench/render.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
