"""A corpus that stays small: distillation (library, `procfuzz corpus distill`, `procfuzz merge`)
and the bounded start-up replay."""

import errno
import random
import time
from collections import Counter
from pathlib import Path

import pytest

from fuzz.campaign.startup import ReplayLimits, StartSource, load_start
from fuzz.cli import main
from fuzz.generate.source import ProgramSource
from fuzz.record import corpus as corpus_module
from fuzz.record.corpus import distill, distill_directory, program_features
from fuzz.record.programs import load_directory, save_program
from fuzz.scale.merge import merge
from targets.model_target import ModelTarget
from test_model import PROFILE

MODEL = ModelTarget(PROFILE)


@pytest.fixture(scope="module")
def generated():
    """A corpus as a campaign saves it: each program showed a feature the earlier ones had not,
    and many are covered by later (or smaller) ones."""
    source, seen, saved = ProgramSource(PROFILE, [], random.Random(11), max_ops=25), set(), []
    for _ in range(300):
        program = source.next()
        fresh = program_features(program, MODEL) - seen
        if fresh and program not in saved:
            seen |= fresh
            saved.append(program)
            source.corpus.append(program)
    return saved


def features_of(programs) -> frozenset:
    return frozenset().union(*(program_features(p, MODEL) for p in programs))


def write_corpus(directory: Path, programs) -> Path:
    for program in programs:
        save_program(directory, program)
    return directory


def test_distilling_keeps_every_feature_with_fewer_programs_and_is_idempotent(generated):
    result = distill(generated, MODEL)
    assert len(result.kept) < 0.9 * len(generated)
    assert features_of(result.kept) == features_of(generated) == result.features
    again = distill(result.kept, MODEL)
    assert [p.id for p in again.kept] == [p.id for p in result.kept]
    assert distill(list(reversed(generated)), MODEL).kept == result.kept      # order-free


def test_every_kept_program_shows_a_feature_no_other_kept_program_shows(generated):
    shown = [program_features(program, MODEL) for program in distill(generated, MODEL).kept]
    holders = Counter(feature for features in shown for feature in features)
    assert all(any(holders[feature] == 1 for feature in features) for features in shown)


def test_distilling_a_directory_in_place(tmp_path, generated):
    corpus = write_corpus(tmp_path / "corpus", generated)
    (corpus / "by-hand.prog").write_text(generated[0].to_text())          # a non-content name
    (corpus / "broken.prog").write_text("frobnicate p1\n")
    report = distill_directory(corpus, MODEL)
    programs = [p for _, p in load_directory(corpus)[0]]
    assert report.before == len(generated) + 1 and report.after == len(programs) < len(generated)
    assert features_of(programs) == features_of(generated) and report.unreadable == 1
    assert (corpus / "broken.prog").exists() and not (corpus / "by-hand.prog").exists()
    assert all(path.name == f"{program.id}.prog" for path, program in load_directory(corpus)[0])
    files = sorted(p.name for p in corpus.iterdir())
    assert distill_directory(corpus, MODEL).after == report.after
    assert sorted(p.name for p in corpus.iterdir()) == files


def test_nothing_is_deleted_before_the_replacement_is_written(tmp_path, generated, monkeypatch):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for index, program in enumerate(generated):          # none under its content name
        (corpus / f"hand-{index}.prog").write_text(program.to_text())
    before = sorted(p.name for p in corpus.iterdir())
    real_save, saved = corpus_module.save_program, []

    def full_after_ten(directory, program):
        if len(saved) == 10:
            raise OSError(errno.ENOSPC, "No space left on device")
        saved.append(program)
        return real_save(directory, program)
    monkeypatch.setattr(corpus_module, "save_program", full_after_ten)
    with pytest.raises(OSError):
        distill_directory(corpus, MODEL)
    assert set(before) <= {p.name for p in corpus.iterdir()}              # nothing removed
    assert not list(corpus.glob(".tmp-*"))

    removed, kept = [], {p.id for p in distill(generated, MODEL).kept}
    real_unlink = Path.unlink

    def checked_unlink(path, missing_ok=False):
        assert all((corpus / f"{i}.prog").exists() for i in kept), "removed before the kept were written"
        removed.append(path)
        return real_unlink(path, missing_ok=missing_ok)
    monkeypatch.setattr(corpus_module, "save_program", real_save)
    monkeypatch.setattr(Path, "unlink", checked_unlink)
    distill_directory(corpus, MODEL)
    assert removed


def test_corpus_distill_command(tmp_path, generated, capsys):
    corpus = write_corpus(tmp_path / "corpus", generated)
    assert main(["corpus", "distill", str(corpus)]) == 0
    assert "programs, all" in capsys.readouterr().out
    assert len(list(corpus.glob("*.prog"))) < len(generated)
    assert main(["corpus", "distill", str(tmp_path / "nope")]) == 2


def test_merge_distills_the_merged_corpus(tmp_path, generated):
    for name, part in (("a", generated[:90]), ("b", generated[60:])):
        write_corpus(tmp_path / name / "corpus", part)
    summary = merge(tmp_path / "merged", [tmp_path / "a", tmp_path / "b"], MODEL)
    merged = [p for _, p in load_directory(tmp_path / "merged" / "corpus")[0]]
    assert summary["corpus_programs"] == len(merged) < len(generated)
    assert features_of(merged) == features_of(generated)


def test_start_up_replay_is_bounded_by_count_and_time_but_restores_every_feature(tmp_path, generated):
    seeds = write_corpus(tmp_path / "seeds", generated[:3])
    corpus = write_corpus(tmp_path / "corpus", generated)
    start = load_start([seeds], corpus, ReplayLimits(programs=10, seconds=3600))
    assert {p.id for p in start.always} == {p.id for p in generated[:3]}
    assert len(start.working) == len(generated) - 3
    assert [len(p) for p in start.working] == sorted(len(p) for p in start.working)   # smallest first
    source = StartSource(PROFILE, start, random.Random(1), 25)
    replayed = [source.next() for _ in range(13)]
    assert replayed == [*start.always, *start.working[:10]] and not source.queue
    assert source.seen_features == features_of(start.working[10:])
    assert len(source.corpus) == len(generated)                 # all of them are parents

    timed = StartSource(PROFILE, load_start([seeds], corpus, ReplayLimits(10**6, seconds=0.2)),
                        random.Random(1), 25)
    first = [timed.next() for _ in range(3)]                    # the seeds, whatever the time
    time.sleep(0.3)
    timed.next()
    assert first == list(start.always) and not timed.queue
    assert features_of(start.programs) <= timed.seen_features | features_of([*first, *start.working[:1]])
