"""The program stream of a seeded campaign is fixed: with --seed and --max-programs, no corpus
exchange and no kernel feedback, the programs a worker runs, the results it gets and the
findings it records are those of the committed golden list (tests/data/golden-stream.json).

Work on throughput (pipelining, transport, caching) must leave the stream alone; a change that
means to change it (the generator, the mutator, the model, the oracle) records the list again:

    PROCFUZZ_RECORD_GOLDEN=1 python3 -m pytest tests/test_golden_stream.py

and says so in its commit.
"""

import hashlib
import json
import os
from pathlib import Path

from fuzz.campaign.startup import StartCorpus
from fuzz.campaign.worker import WorkerConfig, run_worker
from fuzz.record import store
from test_engine import BuggyTarget
from test_model import PROFILE

GOLDEN = Path(__file__).parent / "data" / "golden-stream.json"
SEED, PROGRAMS = 1, 300


class LoggingKernel(BuggyTarget):
    """The planted-bug kernel, writing down every program it runs and what it answered."""

    def __init__(self, profile):
        super().__init__(profile)
        self.log = []

    def run(self, program):
        trace = super().run(program)
        digest = hashlib.sha256("\n".join(trace.results).encode()).hexdigest()[:16]
        self.log.append(f"{program.id} {len(program)} {digest}")
        return trace


def campaign_stream(tmp_path) -> dict:
    kernel = LoggingKernel(PROFILE)
    config = WorkerConfig(0, SEED, PROFILE, "buggy-kernel", tmp_path / "out", tmp_path / "corpus",
                          float("inf"), max_programs=PROGRAMS)
    stats = run_worker(config, kernel, lambda s: None, lambda: False, start=StartCorpus((), ()))
    findings = sorted(f"{finding.program.id} {finding.signature}"
                      for finding in map(store.load, store.list_findings(tmp_path / "out")))
    corpus = sorted(path.name for path in (tmp_path / "corpus").iterdir())
    return {"seed": SEED, "programs": stats.programs, "runs": kernel.log, "findings": findings,
            "corpus": corpus}


def test_a_seeded_campaign_runs_the_golden_programs_and_finds_the_golden_findings(tmp_path):
    stream = campaign_stream(tmp_path)
    if os.environ.get("PROCFUZZ_RECORD_GOLDEN"):
        GOLDEN.write_text(json.dumps(stream, indent=1) + "\n")
    golden = json.loads(GOLDEN.read_text())
    assert stream["programs"] == PROGRAMS and stream["findings"], "the planted bug must show"
    for key in ("runs", "findings", "corpus"):
        first = next((i for i, (a, b) in enumerate(zip(stream[key], golden[key])) if a != b),
                     min(len(stream[key]), len(golden[key])))
        assert stream[key] == golden[key], (
            f"{key} differ from {GOLDEN.name} from entry {first} on (see this module's docstring "
            f"to record the list again if the stream is meant to change)")
