"""The differential loop on the real kernel: every corpus program must give the kernel trace
the model predicts, and a planted model mistake must be found, stored and reproduced."""

import time
from pathlib import Path

import pytest

from fuzz import findings
from fuzz.campaign import WorkerConfig, run_worker
from fuzz.cli import main as procfuzz
from fuzz.oracle import compare
from fuzz.storage import load_directory
from reference import model as model_module
from reference.model import Errno
from targets.kernels import load_profile
from targets.model import ModelTarget

pytestmark = pytest.mark.kernel
CORPUS = Path(__file__).resolve().parent.parent / "corpus"
CASES = load_directory(CORPUS / "seeds")[0] + load_directory(CORPUS / "regressions")[0]


@pytest.fixture(scope="module")
def model():
    return ModelTarget(load_profile())


@pytest.mark.parametrize("path, program", CASES, ids=[p.stem for p, _ in CASES])
def test_corpus_program_matches_the_model(qemu_target, model, path, program):
    expected = model.run(program)
    actual = qemu_target.run(program)
    divergence = compare(program, expected, actual)
    assert divergence is None, divergence.summary()


@pytest.mark.parametrize("path, program", CASES, ids=[p.stem for p, _ in CASES])
def test_corpus_program_matches_the_model_on_6_12(qemu_target_612, path, program):
    expected = ModelTarget(load_profile("6.12-cloud")).run(program)
    divergence = compare(program, expected, qemu_target_612.run(program))
    assert divergence is None, divergence.summary()


def _forgetful_reap(self, actor, op):
    """A planted model mistake: reaping leaves the task in place."""
    child = self.handles.get(op.arg("child"))
    if child is None or child.parent is not actor.process:
        raise Errno("ECHILD")
    return "ok" if child.state == "zombie" else "ok:alive"


def test_planted_model_mistake_is_found_stored_and_reproduced(qemu_target, tmp_path, monkeypatch, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "zombie.prog").write_text((CORPUS / "seeds" / "zombie-until-reaped.prog").read_text())
    monkeypatch.setattr(model_module.Kernel, "op_reap", _forgetful_reap)
    config = WorkerConfig(0, 1, load_profile(), qemu_target.label, tmp_path / "out", corpus,
                          deadline=time.monotonic() + 120, max_programs=3)
    stats = run_worker(config, qemu_target, lambda s: None, lambda: False)
    assert stats.findings["missing"] >= 1
    directory = findings.list_findings(tmp_path / "out")[0]
    finding = findings.load(directory)
    assert finding.divergence.cls == "missing" and finding.kernel == qemu_target.label
    assert procfuzz(["repro", str(directory)]) == 1
    assert "reproduced: missing" in capsys.readouterr().out
    monkeypatch.undo()
    assert procfuzz(["repro", str(directory)]) == 0      # the correct model agrees with the kernel


def test_hidepid_ptraceable_answer_depends_on_the_dcache(qemu_target):
    """Documents a real kernel inconsistency (docs/model-gaps.md): the same lookup by the same
    reader is ENOENT before another task caches the dentry and EPERM after."""
    from fuzz.storage import load_program
    program = load_program(CORPUS / "regressions" / "hidepid-ptraceable-cached.prog")
    results = qemu_target.run(program).results
    assert (results[4], results[5], results[6]) == ("ENOENT", "ok:reg", "EPERM")
