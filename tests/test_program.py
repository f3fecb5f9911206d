"""The program language: canonical forms, round trips and clear errors for bad input."""

import json

import pytest

from fuzz.record.programs import load_directory, load_program
from reference.program import MAX_OPS, Program, ProgramError, make_op, parse, parse_json, parse_text

SAMPLE = """\
p2 = spawn p1 newpid=1
t1 = spawn_thread p2
m1 = mount_proc p2 hidepid=invisible subset=pid
f1 = open p2 {m1}/{p2}/task/{t1}/status
lookup p1 {m1}/{p2}/task/{t1}
read p2 f1
getdents p2 cwd
exec t1
umount p1 m1 lazy=1
drop_caches
"""


def test_text_round_trips_exactly():
    program = parse_text(SAMPLE)
    assert program.to_text() == SAMPLE
    assert parse_text(program.to_text()) == program


def test_json_is_canonical_and_round_trips():
    program = parse_text(SAMPLE)
    doc = program.to_json()
    assert json.loads(doc)["version"] == 1
    assert list(json.loads(doc)) == ["ops", "version"]      # sorted keys
    assert parse_json(doc) == program
    assert parse(doc).to_json() == doc


def test_id_is_a_content_hash():
    a, b = parse_text(SAMPLE), parse_text(SAMPLE + "drop_caches\n")
    assert a.id == parse_text(SAMPLE).id
    assert a.id != b.id and len(a.id) == 16


def test_defaults_are_omitted_from_text():
    op = make_op("mount_proc", "m1", actor="p1")
    assert op.to_text() == "m1 = mount_proc p1"
    assert op.arg("hidepid") == "off" and op.arg("subset") == "none"


@pytest.mark.parametrize("text, problem", [
    ("frobnicate p1\n", "unknown op 'frobnicate'"),
    ("lookup p1\n", "takes 2 positional"),
    ("lookup p9 {m1}/x\n", "handle p9 is used before it is created"),
    ("m1 = mount_proc p1 hidepid=3\n", "expected one of off"),
    ("p2 = spawn p1 newpid=yes\n", "expected 0 or 1"),
    ("setuid p1 -4\n", "uid/gid"),
    ("lookup p1 /proc/1\n", "absolute paths"),
    ("m1 = mount_proc p1\nlookup p1 {m1}/{p1}/../{m1}\n", "first component"),
    ("lookup p1 {p1}/status\n", "need a {mN} prefix"),
    ("m1 = mount_proc p1\nlookup p1 {m1}/{p1\n", "malformed"),
    ("p2 = spawn p1\np2 = spawn p1\n", "created twice"),
    ("exit p1\n", "sandbox init"),
    ("close p1 m1\n", "expected a fd handle"),
    ("lookup = spawn p1\n", "expected a process handle"),
    ("drop_caches p1\n", "takes 0 positional"),
])
def test_bad_text_gives_a_clear_error(text, problem):
    with pytest.raises(ProgramError) as info:
        parse_text(text, source="case.prog")
    message = str(info.value)
    assert message.startswith("case.prog")
    assert problem in message


def test_error_names_the_op_index():
    with pytest.raises(ProgramError) as info:
        parse_text("p2 = spawn p1\nlookup p3 x\n", source="c")
    assert info.value.index == 1 and "op 1" in str(info.value)


@pytest.mark.parametrize("doc, problem", [
    ("{", "invalid JSON"),
    ('{"version": 2, "ops": []}', "version 1"),
    ('{"version": 1, "ops": [{"op": "spawn", "args": {"actor": "p1"}}]}', "creates a process"),
    ('{"version": 1, "ops": [{"op": "lookup", "args": {"actor": 7, "path": "x"}}]}', "expected a process or thread"),
    ('{"version": 1, "ops": [{"op": "lookup", "args": {"actor": "p1", "path": "x", "z": 1}}]}', "unknown argument"),
    ('{"version": 1, "ops": [["lookup"]]}', "each op must be an object"),
])
def test_bad_json_gives_a_clear_error(doc, problem):
    with pytest.raises(ProgramError) as info:
        parse_json(doc, source="case.json")
    assert problem in str(info.value)


def test_oversized_program_is_rejected():
    with pytest.raises(ProgramError, match="limit"):
        parse_text("drop_caches\n" * (MAX_OPS + 1))


def test_loader_reports_bad_files_and_keeps_going(tmp_path):
    (tmp_path / "good.prog").write_text("p2 = spawn p1\n")
    (tmp_path / "bad.prog").write_text("p2 = spawn\n")
    (tmp_path / "binary.prog").write_bytes(b"\xff\xfe\x00")
    (tmp_path / "notes.txt").write_text("ignored")
    programs, errors = load_directory(tmp_path)
    assert [path.name for path, _ in programs] == ["good.prog"]
    assert sorted(e.source.rsplit("/", 1)[1] for e in errors) == ["bad.prog", "binary.prog"]
    with pytest.raises(ProgramError, match="cannot read"):
        load_program(tmp_path / "missing.prog")


def test_program_equality_is_structural():
    assert Program() == parse_text("")
