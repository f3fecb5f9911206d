"""Fold run outputs (shards, nights, kernels) into one output directory.

A run output is a directory with ``findings/``, ``corpus/`` and ``summary.json`` (what
``procfuzz run`` writes, per shard under ``OUT/shard-I-of-N/``).  Merging is content-addressed
and idempotent:

- a finding directory is identified by (program id, kernel): the first copy of it wins and is
  copied whole (every file it has), under its program id, or ``<program id>@<kernel>`` when
  the id is already taken by the same program's finding on another kernel;
- a corpus program is saved under its program id (storage.save_program), and the merged
  corpus is distilled (fuzz/record/corpus.py): what no smaller program covers stays;
- summary.json lists each source run's summary once and the sums over them.

Each entry is assembled under a temporary name and renamed into place, so an interrupted merge
leaves whole entries only and can simply be run again.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

from targets.cache import publish

from fuzz.record.corpus import distill_directory
from fuzz.record.programs import load_directory, save_program
from fuzz.record.store import kernel_of, list_findings
from fuzz.record.summary import SUMMARY, run_summaries, write_merged_summary

_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]")


class MergeError(Exception):
    """A source that cannot be merged (missing, or holding no run output)."""


def is_run_output(directory: Path) -> bool:
    return any((directory / name).exists() for name in (SUMMARY, "findings", "corpus"))


def run_outputs(source: Path) -> list[Path]:
    """The run outputs at or under ``source``: itself if it is one, else those below it (an
    ``OUT`` of sharded runs, or a folder of downloaded CI artifacts)."""
    source = Path(source)
    if not source.is_dir():
        raise MergeError(f"{source}: no such directory")
    if is_run_output(source):
        return [source]
    found = [out for child in sorted(source.iterdir())
             if child.is_dir() and not child.name.startswith(".") for out in run_outputs(child)]
    if not found:
        raise MergeError(f"{source}: no run output (summary.json, findings/ or corpus/) in it or below it")
    return found


def merge(out: Path, sources: list[Path], model=None) -> dict:
    """Merge every run output found in ``sources`` into ``out``; returns the merged summary.
    With ``model`` (a model Target, fuzz.execute.kernels.model_for) the merged corpus is distilled
    by that model's coverage."""
    out = Path(out)
    outputs = [run for source in sources for run in run_outputs(source)]
    out.mkdir(parents=True, exist_ok=True)
    summaries = run_summaries(out)
    index = _finding_index(out)
    for run in outputs:
        for directory in list_findings(run):
            _merge_finding(out, directory, index)
        if (run / "corpus").is_dir():
            _merge_corpus(out, run / "corpus")
        summaries += run_summaries(run)
    corpus = out / "corpus"
    if model is not None and corpus.is_dir():
        distill_directory(corpus, model)
    return write_merged_summary(out, summaries, len(list_findings(out)),
                                len(list(corpus.glob("*.prog"))) if corpus.is_dir() else 0)


# ---- findings ------------------------------------------------------------------------------------

def _finding_index(out: Path) -> dict[tuple[str, str], Path]:
    """(program id, kernel) -> finding directory already in ``out``."""
    return {(d.name.split("@", 1)[0], kernel_of(d)): d for d in list_findings(out)}


def _merge_finding(out: Path, source: Path, index: dict[tuple[str, str], Path]) -> None:
    program_id, kernel = source.name.split("@", 1)[0], kernel_of(source)
    if (program_id, kernel) in index:
        return
    root = out / "findings"
    name = program_id if not (root / program_id).exists() else f"{program_id}@{_UNSAFE.sub('_', kernel)}"
    final = root / name
    if final.exists():         # another merge published it meanwhile
        index[(program_id, kernel)] = final
        return
    with publish(final) as staging:     # a dot-named directory beside it, renamed into place
        for path in sorted(source.rglob("*")):
            target = staging / path.relative_to(source)
            if path.is_symlink():
                continue                # never follow a link out of the finding
            if path.is_dir():
                target.mkdir(exist_ok=True)
            else:
                _copy_synced(path, target)
    index[(program_id, kernel)] = final


def _copy_synced(source: Path, target: Path) -> None:
    with open(source, "rb") as reader, open(target, "wb") as writer:
        shutil.copyfileobj(reader, writer)
        writer.flush()
        os.fsync(writer.fileno())


# ---- corpus --------------------------------------------------------------------------------------

def _merge_corpus(out: Path, corpus: Path) -> None:
    programs, errors = load_directory(corpus)
    for _, program in programs:
        save_program(out / "corpus", program)
    for err in errors:
        print(f"procfuzz: merge: skipped corpus file: {err}", file=sys.stderr)


