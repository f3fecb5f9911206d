"""Sharding and `procfuzz merge` (no VM: shards run on the model with a planted reaping bug)."""

import hashlib
import json
import shutil
import time
from pathlib import Path

import pytest

from fuzz.record import store
from fuzz.campaign.worker import WorkerConfig, run_worker
from fuzz.record.summary import Stats, write_summary
from fuzz.cli import main
from fuzz.scale.merge import merge
from fuzz.campaign.shards import Shard
from fuzz.record.programs import load_directory
from test_engine import ZOMBIE, BuggyTarget
from reference.state_check import with_state_check
from test_model import PROFILE

FOUND = with_state_check(ZOMBIE).id      # the finding's program: ZOMBIE run with its state check

SEED = 7


def run_shard(root: Path, shard: Shard, seeds: Path, kernel="buggy-kernel", workers=1, programs=40) -> Path:
    """What `procfuzz run --shard` does, with the buggy model standing in for the VM."""
    out = root / shard.dirname
    total = Stats()
    for stream in shard.streams(workers):
        config = WorkerConfig(stream, SEED, PROFILE, kernel, out, out / "corpus", time.monotonic() + 60,
                              max_programs=programs, seed_dirs=(seeds,))
        total.merge(run_worker(config, BuggyTarget(PROFILE), lambda s: None, lambda: False))
    write_summary(out, total, {"kernel": kernel, "seed": SEED, "workers": workers, "shard": str(shard)})
    return out


def tree(directory: Path) -> dict[str, str]:
    """Every file under a directory -> hash of its content."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def finding_keys(out: Path) -> set[tuple[str, str]]:
    return {(d.name, store.load(d).signature) for d in store.list_findings(out)}


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    directory = tmp_path_factory.mktemp("seeds")
    (directory / "zombie.prog").write_text(ZOMBIE.to_text())     # every shard finds this one
    return directory


@pytest.fixture(scope="module")
def shard_runs(tmp_path_factory, seeds):
    runs = tmp_path_factory.mktemp("runs")
    for i in range(2):
        run_shard(runs, Shard(i, 2), seeds)
    return runs


@pytest.fixture
def shards(tmp_path, shard_runs):
    """A fresh copy of two shards' outputs, for each test to merge or spoil."""
    runs = shutil.copytree(shard_runs, tmp_path / "runs")
    return [runs / Shard(i, 2).dirname for i in range(2)]


def test_shard_parsing_is_zero_based_with_clear_errors():
    assert Shard.parse("0/2") == Shard(0, 2) and Shard.parse(" 1 / 2 ") == Shard(1, 2)
    assert Shard(1, 2).dirname == "shard-1-of-2" and str(Shard(1, 2)) == "1/2"
    for bad in ("2/2", "1/0", "-1/2", "a/b", "1"):
        with pytest.raises(ValueError, match="0-based|I/N"):
            Shard.parse(bad)


def test_bad_shard_is_exit_2_before_any_work(tmp_path, capsys):
    assert main(["run", "--shard", "2/2", "--out", str(tmp_path)]) == 2
    assert "0-based" in capsys.readouterr().err and not any(tmp_path.iterdir())


def test_shard_streams_are_disjoint_and_splitting_keeps_them():
    streams = [set(Shard(i, 3).streams(2)) for i in range(3)]
    assert set().union(*streams) == set(range(6)) and sum(map(len, streams)) == 6
    # one shard of two workers runs the very streams of two one-worker shards
    assert [list(s.streams(1)) for s in Shard(0, 1).split(2)] == [[0], [1]] == [[w] for w in Shard(0, 1).streams(2)]
    assert Shard(1, 2).split(2) == [Shard(2, 4), Shard(3, 4)]


def test_shards_draw_different_programs(shards):
    corpora = [{p.id for _, p in load_directory(shard / "corpus")[0]} for shard in shards]
    assert corpora[0] and corpora[1] and corpora[0] != corpora[1]


def test_merge_is_the_union_with_summed_counters(tmp_path, shards):
    out = tmp_path / "merged"
    summary = merge(out, shards)
    assert finding_keys(out) == finding_keys(shards[0]) | finding_keys(shards[1])
    assert FOUND in {d.name for d in store.list_findings(out)}
    corpus = {p.id for _, p in load_directory(out / "corpus")[0]}
    assert corpus == {p.id for s in shards for _, p in load_directory(s / "corpus")[0]}
    assert summary["corpus_programs"] == len(corpus) and summary["distinct_findings"] == len(finding_keys(out))
    runs = [json.loads((s / "summary.json").read_text()) for s in shards]
    assert summary["programs"] == sum(r["programs"] for r in runs) == 80
    assert sorted(r["shard"] for r in summary["runs"]) == ["0/2", "1/2"]
    assert json.loads((out / "summary.json").read_text()) == summary


def test_merge_is_idempotent_also_into_itself(tmp_path, shards):
    out = tmp_path / "merged"
    merge(out, shards)
    before = tree(out)
    merge(out, shards)
    assert tree(out) == before
    merge(out, [out])
    assert tree(out) == before
    merge(out, [shards[1], out, shards[0]])
    assert tree(out) == before


def test_sources_may_be_a_folder_of_shards_merged_in_place(tmp_path, shards):
    runs = tmp_path / "runs"
    assert main(["merge", str(runs), str(runs)]) == 0
    assert finding_keys(runs) == finding_keys(shards[0]) | finding_keys(shards[1])
    assert len(json.loads((runs / "summary.json").read_text())["runs"]) == 2


def test_corpus_files_are_renamed_by_content_and_finding_files_all_kept(tmp_path, shards):
    source = tmp_path / "odd"
    (source / "corpus").mkdir(parents=True)
    (source / "corpus" / "my-name.prog").write_text(ZOMBIE.to_text())
    (source / "corpus" / "broken.prog").write_text("frobnicate p1\n")
    finding = store.list_findings(shards[0])[0]
    copied = source / "findings" / finding.name
    copied.mkdir(parents=True)
    for path in finding.iterdir():
        (copied / path.name).write_bytes(path.read_bytes())
    (copied / "minimized.prog").write_text("# a later tool's extra file\n")
    (copied / "reruns").mkdir()
    (copied / "reruns" / "6.12.json").write_text("{}")
    out = tmp_path / "merged"
    merge(out, [source])
    assert sorted(p.name for p in (out / "corpus").iterdir()) == [f"{ZOMBIE.id}.prog"]
    assert tree(out / "findings" / finding.name) == tree(copied)


def test_same_program_on_two_kernels_keeps_both(tmp_path, seeds):
    old = run_shard(tmp_path / "old", Shard(0, 1), seeds, kernel="kernel-a=1", programs=5)
    new = run_shard(tmp_path / "new", Shard(0, 1), seeds, kernel="kernel-b=2", programs=5)
    out = tmp_path / "merged"
    merge(out, [old, new])
    merge(out, [new, old])
    kernels = {store.load(d).kernel for d in store.list_findings(out) if d.name.startswith(FOUND)}
    assert kernels == {"kernel-a=1", "kernel-b=2"}
    assert sorted(d.name for d in store.list_findings(out) if d.name.startswith(FOUND)) == \
        [FOUND, f"{FOUND}@kernel-b=2"]
    assert json.loads((out / "summary.json").read_text())["kernels"] == ["kernel-a=1", "kernel-b=2"]


def test_malformed_summary_is_ignored_but_findings_merged(tmp_path, shards, capsys):
    (shards[1] / "summary.json").write_text("{not json")
    out = tmp_path / "merged"
    summary = merge(out, shards)
    assert "not a procfuzz summary" in capsys.readouterr().err
    assert [r["shard"] for r in summary["runs"]] == ["0/2"]
    assert finding_keys(out) >= finding_keys(shards[1])


def test_missing_or_empty_source_is_exit_2(tmp_path, capsys):
    assert main(["merge", str(tmp_path / "out"), str(tmp_path / "nope")]) == 2
    assert "no such directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["merge", str(tmp_path / "out"), str(tmp_path / "empty")]) == 2
    assert "no run output" in capsys.readouterr().err
