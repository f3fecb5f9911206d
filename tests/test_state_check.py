"""The end-of-program state check without a VM: what it looks at, its bounds, how a checked program
splits, and a stale name no generated op looked at again, found by the check against a planted
model mistake (reaping does not release the task) under the same signature and bug key as when
a generated op looks, through the campaign, minimisation and export-c."""

import random
import time

import pytest

from fuzz.campaign.run import parse_state_check
from fuzz.campaign.startup import StartCorpus
from fuzz.campaign.worker import WorkerConfig, run_worker
from fuzz.compare.oracle import STATE_CHECK, compare
from fuzz.errors import ToolError
from fuzz.generate.source import ProgramSource
from fuzz.record import store
from fuzz.record.programs import load_directory
from fuzz.record.signature import bug_key, signature
from fuzz.triage.export_c import export_c
from fuzz.triage.minimize import minimize
from fuzz.triage.rerun import Goal
from reference.program import MAX_OPS, OBSERVING_KINDS, Program, parse_text
from reference.state_check import CAP, split_state_check, state_check, with_state_check
from targets.model_target import ModelTarget
from test_engine import BuggyTarget
from test_model import PROFILE

MODEL, BUGGY = ModelTarget(PROFILE), BuggyTarget(PROFILE)
# Removes p2 and never looks at it again: only the check can see the stale /proc/<pid>.
UNSEEN = parse_text("m1 = mount_proc p1\np2 = spawn p1\nlookup p1 {m1}/{p2}/status\nexit p2\nreap p1 p2\n")
SEEN = parse_text(UNSEEN.to_text() + "lookup p1 {m1}/{p2}/status\n")


def texts(ops) -> list[str]:
    return [op.to_text() for op in ops]


def test_the_check_looks_again_at_paths_listings_fds_cwds_tasks_and_sysctl_tables():
    program = parse_text("""\
m1 = mount_proc p1
p2 = spawn p1
t1 = spawn_thread p2
f1 = open p2 {m1}/{p2}/comm
chdir p2 {m1}/{p2}/task
readdir p2 {m1}/{p2}/task
unshare_net p2
link_add p2 d0
""")
    check = texts(state_check(program))
    assert check[:4] == ["lookup p2 {m1}/{p2}/comm", "lookup p2 {m1}/{p2}/task", "lookup p1 {m1}/{p2}/comm",
                         "lookup p1 {m1}/{p2}/task"]
    for wanted in ("readdir p2 {m1}/{p2}/task",                      # the listing again
                   "read p2 f1", "readlink p2 {m1}/{p2}/fd/{f1}",   # the held fd and its link
                   "getdents p2 cwd", "readlink p2 {m1}/{p2}/cwd",  # the cwd and its link
                   "readdir p1 {m1}", "lookup p1 {m1}/{p2}", "readdir p1 {m1}/{p2}/fd",
                   "readdir p1 {m1}/{p2}/net", "lookup p1 {m1}/{p2}/task/{t1}", "lookup p1 {m1}/{t1}",
                   "readdir p1 {m1}/sys/net/ipv6/neigh",            # per network namespace: p1's
                   "readdir p2 {m1}/sys/net/ipv4/conf", "lookup p2 {m1}/sys/net/ipv4/conf/d0"):  # and p2's
        assert wanted in check
    assert len(check) == len(set(check))
    assert all(op.kind in OBSERVING_KINDS for op in state_check(program))


def test_dead_actors_and_closed_fds_are_left_out_and_root_is_p1_only_while_root():
    program = parse_text("""\
m1 = mount_proc p1
p2 = spawn p1
f1 = open p2 {m1}/{p2}/status
lookup p2 {m1}/{p2}/status
close p2 f1
exit p2
setuid p1 1000
""")
    check = texts(state_check(program))
    assert not [text for text in check if text.split()[1] == "p2"]           # p2 exited
    assert not [text for text in check if "f1" in text]                      # f1 closed
    assert "lookup p1 {m1}/{p2}/status" not in check                         # p1 is no longer root
    assert "lookup p1 {m1}/{p2}" in check                                    # but walks its sandbox


def test_the_check_is_capped_and_deterministic():
    lines = ["m1 = mount_proc p1", "m2 = mount_proc p1"] + [f"p{n} = spawn p1" for n in range(2, 40)]
    lines += [f"lookup p{n} {{m2}}/{{p{n}}}/status" for n in range(2, 40)]
    program = parse_text("\n".join(lines) + "\n")
    assert len(state_check(program)) == min(CAP, MAX_OPS - len(program))
    assert len(state_check(program, cap=10)) == 10
    assert state_check(program) == state_check(parse_text(program.to_text()))


def test_a_checked_program_splits_into_its_base_and_its_check():
    source = ProgramSource(PROFILE, [], random.Random(3), 40)
    for program in [UNSEEN, SEEN] + [source.next() for _ in range(40)]:
        checked = with_state_check(program)
        assert split_state_check(checked) <= len(program)      # a generated tail may equal the check's start
        assert with_state_check(checked) == checked               # the check is never checked again
        assert MODEL.run(checked).outcome == "ok"


def test_the_check_finds_what_no_generated_op_looked_at_under_the_same_signature_and_bug_key():
    assert compare(UNSEEN, MODEL.run(UNSEEN), BUGGY.run(UNSEEN)) is None
    checked = with_state_check(UNSEEN)
    expected = MODEL.run(checked)
    found = compare(checked, expected, BUGGY.run(checked))
    assert found.index >= len(UNSEEN) and found.detail == STATE_CHECK
    assert "of the state check" in found.summary()
    seen_expected = MODEL.run(SEEN)
    by_generated_op = compare(SEEN, seen_expected, BUGGY.run(SEEN))
    assert by_generated_op.detail == ""
    assert signature(checked, expected.results, found) == \
        signature(SEEN, seen_expected.results, by_generated_op) == "stale lookup /proc/<pid>/status after reap"
    assert bug_key(checked, expected.results, found) == "stale /proc/<pid> after exit"


def test_minimising_a_finding_of_the_check_rederives_the_check_of_each_candidate():
    padding = "".join(f"p{n} = spawn p1\nlookup p1 {{m1}}/{{p{n}}}/comm\n" for n in range(3, 7))
    program = with_state_check(parse_text(UNSEEN.to_text().replace("exit p2", padding + "exit p2")))
    expected = MODEL.run(program)
    goal = Goal(signature(program, expected.results, compare(program, expected, BUGGY.run(program))))
    result = minimize(program, goal, BUGGY.run, MODEL, retries=1)
    base = split_state_check(result.program)
    assert result.program.ops[:base] == UNSEEN.ops                  # the padding went, the check came back
    assert result.program == with_state_check(Program(result.program.ops[:base]))
    expected = MODEL.run(result.program)
    assert signature(result.program, expected.results,
                     compare(result.program, expected, BUGGY.run(result.program))) == goal.signature


def test_the_c_reproducer_holds_the_check_ops_marked():
    checked = with_state_check(UNSEEN)
    source = export_c(checked, MODEL.run(checked), kernel="k", summary="s")
    header = [line[7:] for line in source.split("*/")[0].splitlines() if line.startswith(" *     ")]
    marker = header.index("# the state check: what the program touched, looked at again")
    assert header[:marker] == texts(UNSEEN.ops) and header[marker + 1:] == texts(checked.ops[len(UNSEEN):])
    for op in checked.ops:
        assert '\t"' + op.to_text() + '",' in source               # OP_TEXT: printed when it diverges


def test_a_campaign_checks_every_nth_program_and_saves_the_base_to_the_corpus(tmp_path):
    def campaign(every: int, name: str):
        config = WorkerConfig(0, 1, PROFILE, "buggy-kernel", tmp_path / name, tmp_path / f"corpus-{name}",
                              deadline=time.monotonic() + 60, max_programs=1, state_check=every)
        (tmp_path / f"corpus-{name}").mkdir()
        stats = run_worker(config, BUGGY, lambda s: None, lambda: False, start=StartCorpus((UNSEEN,), ()))
        return stats, [store.load(d) for d in store.list_findings(tmp_path / name)]
    stats, findings = campaign(0, "off")
    assert (stats.findings, findings) == ({}, [])
    stats, [finding] = campaign(1, "every")
    assert finding.program == with_state_check(UNSEEN) and finding.divergence.detail == STATE_CHECK
    assert finding.bug_key == "stale /proc/<pid> after exit" and stats.ops == len(finding.program)
    config = WorkerConfig(0, 1, PROFILE, "model", tmp_path / "out", tmp_path / "corpus", time.monotonic() + 60,
                          max_programs=20, state_check=1)
    (tmp_path / "corpus").mkdir()
    run_worker(config, MODEL, lambda s: None, lambda: False, start=StartCorpus((), ()))
    saved = [program for _, program in load_directory(tmp_path / "corpus")[0]]
    # programs without their checks: each gets its whole check when it runs again
    assert saved and all(len(with_state_check(p)) == len(p) + len(state_check(p)) for p in saved)


@pytest.mark.parametrize("text, every", [("every", 1), ("off", 0), ("5", 5), (" 1 ", 1)])
def test_state_check_option(text, every):
    assert parse_state_check(text) == every


@pytest.mark.parametrize("text", ["sometimes", "-1", "", "1.5"])
def test_bad_state_check_option(text):
    with pytest.raises(ToolError, match="--state-check"):
        parse_state_check(text)


def test_cli_refuses_a_bad_state_check(tmp_path, capsys):
    from fuzz.cli import main
    assert main(["run", "--state-check", "sometimes", "--out", str(tmp_path)]) == 2
    assert "bad --state-check 'sometimes'" in capsys.readouterr().err
