"""Coverage guidance with atheris over the instrumented reference model.

libFuzzer mutates byte strings; Hypothesis decodes each one into a program through the same
generator the campaign uses (fuzz/generate/strategy.py, its choices drawn by Hypothesis from
the bytes with `fuzz_one_input`), and the model runs it.  The model's code is
instrumented, so inputs that reach new model behaviour are what libFuzzer keeps: it writes them
to a raw-input directory, and `grow_corpus` decodes those into program files of the corpus.

atheris ends its process when the run is over, so it runs in a child process
(`python -m fuzz.campaign.atheris_driver RAWDIR RUNS MAX_OPS KERNEL`).
"""

from __future__ import annotations

import random
import subprocess
import sys
import tempfile
from pathlib import Path

from reference.profile import KernelProfile


def grow_corpus(profile: KernelProfile, corpus: Path, runs: int, max_ops: int, kernel: str | None = None) -> int:
    from fuzz.record.programs import program_files, save_program

    from fuzz.generate.source import ProgramSource
    corpus.mkdir(parents=True, exist_ok=True)
    before = {p.name for p in program_files(corpus)}
    with tempfile.TemporaryDirectory(prefix="procfuzz-atheris-") as raw:
        root = Path(__file__).resolve().parents[2]
        subprocess.run([sys.executable, "-m", "fuzz.campaign.atheris_driver", raw, str(runs), str(max_ops), kernel or ""],
                       cwd=root, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        source = ProgramSource(profile, [], random.Random(0), max_ops)
        for path in sorted(Path(raw).iterdir()):
            program = source.decode(path.read_bytes())
            if program is not None and len(program):
                save_program(corpus, program)
    return len({p.name for p in program_files(corpus)} - before)


def _fuzz(raw: str, runs: int, max_ops: int, kernel: str) -> None:
    import atheris
    with atheris.instrument_imports(include=["reference"]):
        import reference.model  # noqa: F401 - instrumented before anything else imports it
    # Imported only now: the model must be imported (and instrumented) first.
    from targets.kernels import load_profile
    from targets.model_target import ModelTarget

    from fuzz.generate.source import ProgramSource
    profile = load_profile(kernel or None)
    source = ProgramSource(profile, [], random.Random(0), max_ops)
    model = ModelTarget(profile)

    def test_one_input(data: bytes) -> None:
        program = source.decode(data)
        if program is not None:
            trace = model.run(program)
            if trace.outcome != "ok":
                raise RuntimeError(trace.title)   # a model bug: libFuzzer saves the crashing input

    atheris.Setup([sys.argv[0], raw, f"-runs={runs}", "-max_len=8192"], test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    _fuzz(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
