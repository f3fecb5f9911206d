"""The guest agent parses programs exactly as reference/program.py does: `agent parse` on the
host (no VM, no namespaces) against parse_text, over mutated programs full of edge cases
(handles out of range, options twice, odd whitespace and bytes)."""

import random
import subprocess

import pytest

from reference.program import ProgramError, parse_text
from targets.initramfs import AGENT_SOURCE


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    binary = tmp_path_factory.mktemp("agent") / "agent"
    subprocess.run(["gcc", "-static", "-O2", "-Wall", "-Wextra", "-Werror", "-pthread", "-o", str(binary),
                    str(AGENT_SOURCE)], check=True)
    return binary


def test_agent_parse_accepts_exactly_what_the_model_accepts(agent, n=1500):
    rng = random.Random(7)
    seeds = ["p2 = spawn p1 newpid=1", "t1 = spawn_thread p2", "m1 = mount_proc p1 hidepid=invisible",
             "f1 = open p1 {m1}/sys/net/ipv4/conf/d0/forwarding rw=1", "write p1 f1 -12", "unshare_net t1",
             "setns_net p1 t1", "link_add p1 d0", "link_add p2 v0 kind=veth peer=v1 peer_in=p1",
             "link_add p1 d1 kind=dummy peer_in=t1", "link_del p1 d0", "link_rename p1 v1 w1",
             "link_set_netns p1 w1 p2", "link_up p1 lo", "link_down t1 lo", "read p1 f1",
             "getdents p1 cwd", "reap p1 p2", "setuid p1 1000", "umount p1 m1 lazy=1", "exit p2"]
    vocab = ["p1", "p2", "t1", "t9", "m1", "f1", "p65", "p0", "p999", "p1000", "d0", "lo", "a" * 15,
             "a" * 16, "kind=veth", "kind=dummy", "kind=", "peer=v9", "peer=", "peer=p1", "peer_in=p1",
             "peer_in=", "peer_in=t9", "peer_in=d0", "newpid=1", "newpid=2", "lazy=1", "x=1", "=", "=x",
             "1", "-1", "01", "-", "+1", "1234567890", "12345678901", "cwd", "{m1}", "{m1}/x", "A0", "rw=1",
             "rw=0", "rw=",
             "a_b", "Ab", "0a", "write", "link_add", "#", "hidepid=off"]
    chars = [" ", "\t", "\r", "\n", "\x0b", "\x0c", "\x1c", "\x1f", "\x85", "\xa0", "\u2000",
             "\u200b", "\u2028", "\u3000", "\x00", "#", "=", "{", "}", "\xe9", "\r\n"]
    counts = [0, 0]
    for _ in range(n):
        body = [rng.choice(seeds) for _ in range(rng.randint(1, 4))]
        for _ in range(rng.choice((0, 1, 1, 1, 2))):
            line = rng.randrange(len(body))
            words = body[line].split(" ")
            spot = rng.randrange(len(words))
            choice = rng.random()
            if choice < 0.4:
                words[spot] = rng.choice(vocab)
            elif choice < 0.6:
                words.insert(spot, rng.choice(vocab))
            elif choice < 0.8:
                cut = rng.randrange(len(words[spot]) + 1)
                words[spot] = words[spot][:cut] + rng.choice(chars) + words[spot][cut:]
            else:
                words.append(rng.choice([w for w in words if "=" in w] or ["kind=veth"]))
            body[line] = " ".join(words)
        text = "\n".join(["p2 = spawn p1", "t1 = spawn_thread p2", "m1 = mount_proc p1",
                          "f1 = open p1 {m1}/x"] + body) + "\n"
        try:
            parse_text(text)
            python = True
        except ProgramError:
            python = False
        out = subprocess.run([str(agent), "parse"], input=text.encode(), capture_output=True).stdout
        assert (out == b"ok\n") == python, (text, out)
        counts[python] += 1
    assert counts[0] and counts[1]          # both verdicts were exercised
