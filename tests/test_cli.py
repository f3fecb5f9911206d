"""The command line: output, exit codes and clear errors for bad input (no VM)."""

from pathlib import Path

import pytest

from fuzz.campaign.run import parse_duration as parse_budget
from fuzz.cli import main
from fuzz.errors import ToolError

SEED = Path(__file__).resolve().parent.parent / "corpus" / "seeds" / "zombie-until-reaped.prog"


def test_show_prints_the_canonical_text(capsys):
    assert main(["show", str(SEED)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1] == "m1 = mount_proc p1" and "reap p1 p2" in out


def test_show_json(capsys):
    assert main(["show", "--json", str(SEED)]) == 0
    assert '"version":1' in capsys.readouterr().out


def test_model_prints_one_result_per_op(capsys):
    assert main(["model", str(SEED)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 14 and lines[1].endswith("ok:2") and lines[10].endswith("ENOENT")


@pytest.mark.parametrize("text, message", [
    ("frobnicate p1\n", "op 0: line 1: unknown op 'frobnicate'"),
    ("p2 = spawn p1\nlookup p3 x\n", "op 1: handle p3 is used before it is created"),
])
def test_bad_case_file_is_a_clear_error_with_exit_2(tmp_path, capsys, text, message):
    case = tmp_path / "bad.prog"
    case.write_text(text)
    assert main(["model", str(case)]) == 2
    assert message in capsys.readouterr().err


def test_missing_file_and_unknown_kernel(tmp_path, capsys):
    assert main(["show", str(tmp_path / "nope.prog")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["model", str(SEED), "--kernel", "no-such-kernel"]) == 2
    assert "no-such-kernel" in capsys.readouterr().err


def test_budget_parsing():
    assert parse_budget("90s") == 90 and parse_budget("10m") == 600 and parse_budget("2h") == 7200
    with pytest.raises(ToolError):
        parse_budget("ten minutes")


@pytest.mark.kernel
def test_repro_with_an_injected_bug_reproduces_and_a_bad_module_is_a_clear_error(tmp_path, capsys):
    from tests.test_zoo import STALE_PID
    case = tmp_path / "stale.prog"
    case.write_text(STALE_PID.to_text())
    assert main(["repro", str(case), "--zoo", "stale_pid"]) == 1
    assert "reproduced: stale" in capsys.readouterr().out
    assert main(["exec", str(case), "--load-module", str(tmp_path / "missing.ko")]) == 2
    assert "no such file" in capsys.readouterr().err
