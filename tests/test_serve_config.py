"""procfuzz.toml and the command line of the service: the documented example parses, mistakes
are one clear line, and `serve`/`push` refuse what they cannot do with exit 2."""

import re
from pathlib import Path

import pytest

from fuzz.cli import main
from fuzz.errors import EXIT_TOOL, ToolError
from fuzz.serve import config as config_module
from fuzz.serve.config import KernelConfig, load_config
from test_serve_fakes import fake_kernel

ROOT = Path(__file__).resolve().parent.parent


def toml_blocks(text: str) -> list[str]:
    return re.findall(r"```toml\n(.*?)```", text, re.S)


def test_the_documented_configuration_parses(tmp_path):
    path = tmp_path / "procfuzz.toml"
    path.write_text(toml_blocks((ROOT / "docs" / "serve.md").read_text())[0])
    config = load_config(path)
    assert config.kernels == (KernelConfig("6.1-zoo", "6.1-cloud", "stale_pid", 1, 10),
                              KernelConfig("6.1", "6.1-cloud", None, 1, 10, kernel_coverage=True))
    assert (config.guests, config.budget, config.runs, config.follow_up_pins) == (2, 1800, 5, ("6.12-cloud",))
    module_example = "\n".join(line[4:] for line in config_module.__doc__.splitlines() if line.startswith("    "))
    path.write_text(module_example)
    assert load_config(path).database == "postgresql://fuzz@db/procfuzz"


def test_defaults_without_a_file():
    config = load_config(None)
    assert [k.name for k in config.kernels] == ["default"] and config.guests == 1 and config.database is None


def test_a_service_without_kernels_only_receives(tmp_path):
    path = tmp_path / "procfuzz.toml"
    path.write_text("kernel = []\n[follow_up]\nenabled = false\n")
    config = load_config(path)
    assert (config.kernels, config.guests, config.follow_up) == ((), 1, False)


@pytest.mark.parametrize("text, words", [
    ("guests = 0", "guests must be an integer >= 1"),
    ("guests = 1\n[[kernel]]\nworkers = 2", "more workers than guests"),
    ("[[kernel]]\nname = 'a/../b'", "letters, digits"),
    ("[[kernel]]\nname = 'a'\n[[kernel]]\nname = 'a'", "names must differ"),
    ("[campaign]\nbudget = 'soon'", "bad budget"),
    ("[follow_up]\nkernels = '6.12-cloud'", "must be a list"),
    ("guests = [", "procfuzz.toml"),
])
def test_mistakes_are_one_clear_line(tmp_path, text, words):
    path = tmp_path / "procfuzz.toml"
    path.write_text(text)
    with pytest.raises(ToolError, match=re.escape(words)):
        load_config(path)


def test_serve_beyond_loopback_without_a_token_is_exit_2(tmp_path, capsys):
    code = main(["serve", "--state", str(tmp_path / "state"), "--listen", "0.0.0.0:0"], open_target=fake_kernel)
    assert code == EXIT_TOOL and "needs a token" in capsys.readouterr().err
    short = tmp_path / "token"
    short.write_text("short")
    code = main(["serve", "--state", str(tmp_path / "state"), "--token-file", str(short)], open_target=fake_kernel)
    assert code == EXIT_TOOL and "at least 16 characters" in capsys.readouterr().err


def test_push_to_nowhere_is_exit_2(tmp_path, capsys):
    from test_serve_fakes import _free_port, record_finding
    record_finding(tmp_path / "run")
    assert main(["push", f"http://127.0.0.1:{_free_port()}", str(tmp_path / "run")]) == EXIT_TOOL
    assert "/api/import" in capsys.readouterr().err
