"""The differential loop on the real kernel: every corpus program must give the kernel trace
the model predicts, and a planted model mistake must be found, stored and reproduced."""

import time
from pathlib import Path

import pytest

from fuzz.record import store
from fuzz.campaign.worker import WorkerConfig, run_worker
from fuzz.cli import main as procfuzz
from fuzz.record.known import load_known_issues
from fuzz.compare.oracle import KNOWN as KNOWN_ROLE, compare_all
from fuzz.record.programs import load_directory
from reference import model as model_module
from reference.model import Errno
from targets.kernels import load_profile
from targets.model_target import ModelTarget

pytestmark = pytest.mark.kernel
CORPUS = Path(__file__).resolve().parent.parent / "corpus"
CASES = load_directory(CORPUS / "seeds")[0] + load_directory(CORPUS / "regressions")[0]


@pytest.fixture(scope="module")
def model():
    return ModelTarget(load_profile())


KNOWN = load_known_issues(CORPUS / "known-issues.toml")


def assert_agrees_or_known(program, expected, actual):
    """No divergence, or exactly documented kernel inconsistencies of this kernel."""
    comparison = compare_all(program, expected, actual, KNOWN.explainer(actual.kernel))
    unexplained = [d.summary() for d in comparison.divergences if d.role != KNOWN_ROLE]
    assert unexplained == []


@pytest.mark.parametrize("path, program", CASES, ids=[p.stem for p, _ in CASES])
def test_corpus_program_matches_the_model(qemu_target, model, path, program):
    assert_agrees_or_known(program, model.run(program), qemu_target.run(program))


@pytest.mark.parametrize("path, program", CASES, ids=[p.stem for p, _ in CASES])
def test_corpus_program_matches_the_model_on_6_12(qemu_target_612, path, program):
    assert_agrees_or_known(program, ModelTarget(load_profile("6.12-cloud")).run(program),
                           qemu_target_612.run(program))


def test_known_ipv6_forwarding_short_write_is_still_there_on_6_1_only(qemu_target, qemu_target_612):
    from fuzz.record.programs import load_program
    program = load_program(CORPUS / "regressions" / "ipv6-forwarding-short-write.prog")
    assert qemu_target.run(program).results[2] == "ok:1"
    assert qemu_target_612.run(program).results[2] == "ok"


class ForgetfulReap(model_module.Kernel):
    """A planted model mistake: reaping leaves the task in place."""

    def op_reap(self, actor, op):
        child = self.handles.get(op.arg("child"))
        if child is None or child.parent is not actor.process:
            raise Errno("ECHILD")
        return "ok" if child.state == "zombie" else "ok:alive"


def test_planted_model_mistake_is_found_stored_and_reproduced(qemu_target, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "zombie.prog").write_text((CORPUS / "seeds" / "zombie-until-reaped.prog").read_text())
    forgetful = ModelTarget(load_profile(), ForgetfulReap)
    config = WorkerConfig(0, 1, load_profile(), qemu_target.label, tmp_path / "out", corpus,
                          deadline=time.monotonic() + 120, max_programs=3)
    stats = run_worker(config, qemu_target, lambda s: None, lambda: False, model=forgetful)
    assert stats.findings["missing"] >= 1
    directory = store.list_findings(tmp_path / "out")[0]
    finding = store.load(directory)
    assert finding.divergence.cls == "missing" and finding.kernel == qemu_target.label
    assert procfuzz(["repro", str(directory)], model_for=lambda kernel: forgetful) == 1
    assert "reproduced: missing" in capsys.readouterr().out
    assert procfuzz(["repro", str(directory)]) == 0      # the correct model agrees with the kernel


def test_hidepid_ptraceable_answer_depends_on_the_dcache(qemu_target):
    """Documents a real kernel inconsistency (docs/model-gaps.md): the same lookup by the same
    reader is ENOENT before another task caches the dentry and EPERM after."""
    from fuzz.record.programs import load_program
    program = load_program(CORPUS / "regressions" / "hidepid-ptraceable-cached.prog")
    results = qemu_target.run(program).results
    assert (results[4], results[5], results[6]) == ("ENOENT", "ok:reg", "EPERM")
