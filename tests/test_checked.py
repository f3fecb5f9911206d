"""What the oracle checks: exact results, alternatives and unchecked ones, and the episode cells
of a program."""

import pytest

from fuzz.compare.checked import CheckedTally, episodes, family, result_check
from reference.program import parse_text
from targets.kernels import load_profile
from targets.model_target import ModelTarget


@pytest.mark.parametrize("expected, check", [
    ("ok:dir", "exact"), ("ENOENT | ESRCH", "alternatives"), ("ok:*", "unchecked"), ("*", "unchecked"),
    ("ok | ENOENT", "unchecked"),        # success or an error: either passes, nothing is checked
])
def test_result_check(expected, check):
    assert result_check(expected) == check


def test_families():
    assert family("{m1}/sys/net/ipv4/conf/d0") == "sysctl device"
    assert family("{m1}/sys/net/ipv4/conf/all/forwarding") == "sysctl view"
    assert family("{m1}/{p2}/fd/{f1}") == "fd" and family("{m1}/{p2}/net/dev") == "task net"
    assert family("{m1}/{p2}/task/{t1}/comm") == "thread" and family("{m1}/{p2}/status") == "task"
    assert family("{m1}/self") == "mount" and family("status") is None


def test_an_episode_is_an_observation_a_change_and_an_observation_again():
    program = parse_text("m1 = mount_proc p1\np2 = spawn p1\nlookup p1 {m1}/{p2}\nexit p2\nreap p1 p2\n"
                         "lookup p1 {m1}/{p2}\nf1 = open p1 {m1}/{p2}/comm\nreadlink p1 {m1}/{p1}/fd/{f1}\n")
    results = ModelTarget(load_profile()).run(program).results
    assert episodes(program, results) == {("task", "reap", "lookup")}
    tally = CheckedTally()
    tally.add(program, results)
    assert tally.hits[("task", "reap")] == 1 and tally.programs == 1
    assert ("fd", "close") in tally.missed_cells()
