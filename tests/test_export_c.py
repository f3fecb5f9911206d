"""Standalone C reproducers: every corpus program exports to C that compiles with -Wall -Werror,
the command writes repro.c, and (-m kernel) the reproducer of the stale_pid zoo bug reports the bug
on the injected kernel and nothing on the stock one."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from corpus import SEED_DIRS
from fuzz.cli import main
from fuzz.triage.export_c import ExportError, _agent_code, c_string, export_c
from fuzz.record.programs import load_directory
from reference.program import parse_text
from reference.trace import Trace
from targets.kernels import load_profile
from targets.model_target import ModelTarget
from test_minimize import CORE, STALE_PID_CORE, _finding_dir

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
CORPUS = [(path, program) for directory in SEED_DIRS for path, program in load_directory(directory)[0]]


def build(source: str, directory: Path) -> Path:
    """A static binary of the C source; fails the test with gcc's messages."""
    (directory / "repro.c").write_text(source)
    binary = directory / "repro"
    result = subprocess.run(["gcc", "-static", "-O2", "-Wall", "-Werror", "-o", str(binary),
                             str(directory / "repro.c")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    return binary


def reproducer(program, summary="test") -> str:
    expected = ModelTarget(load_profile()).run(program)
    return export_c(program, expected, kernel="test-kernel", summary=summary)


@needs_gcc
@pytest.mark.parametrize("path, program", CORPUS, ids=[path.stem for path, _ in CORPUS])
def test_every_corpus_program_compiles_warning_free(path, program, tmp_path):
    source = reproducer(program)
    assert f"program {program.id}" in source and "procfuzz-repro: DIVERGES" in source
    build(source, tmp_path)


def test_header_says_what_where_and_how():
    source = reproducer(parse_text(STALE_PID_CORE), summary="stale lookup /proc/<pid>")
    header = source[:source.index("*/")]
    assert "What it shows: stale lookup /proc/<pid>" in header and "Found on: test-kernel" in header
    assert "    lookup p1 {m1}/{p2}" in header and "gcc -static -O2 -Wall" in header
    assert "runs itself as /agent" not in header    # only programs that exec or read exe do
    assert "runs itself as /agent" in reproducer(parse_text("p2 = spawn p1\nexec p2\n"))[:3000]


def test_only_the_ops_used_are_mirrored():
    lookups = reproducer(parse_text("m1 = mount_proc p1\nlookup p1 {m1}\n"))
    assert "act_lookup" in lookups and "act_link" not in lookups and "act_readdir" not in lookups
    links = reproducer(parse_text("link_add p1 d0\n"))
    assert "RTM_NEWLINK" in links and "act_lookup" not in links


def test_incomplete_model_trace_is_an_error():
    with pytest.raises(ExportError, match="no complete trace"):
        export_c(parse_text(CORE), Trace((), outcome="error", title="model bug"), kernel="k", summary="s")


def test_a_definition_missing_from_the_agent_is_named():
    with pytest.raises(ExportError, match="no definition of act_frobnicate"):
        _agent_code({"act_frobnicate", "put_errno"})


def test_c_strings_escape_everything_unusual():
    assert c_string('a"b\\c?d\n1') == '"a\\042b\\134c\\077d\\0121"'


@needs_gcc
def test_cli_writes_repro_c_of_the_minimised_program(tmp_path, capsys):
    directory, finding = _finding_dir(tmp_path, parse_text(CORE + "readdir p1 {m1}\n"))
    assert main(["export-c", str(directory)]) == 2      # no profile of the fake kernel
    assert "buggy-kernel" in capsys.readouterr().err
    assert main(["export-c", str(directory), "--kernel", "6.1-cloud"]) == 0
    assert "original program (6 ops)" in capsys.readouterr().out
    assert "readdir p1 {m1}" in (directory / "repro.c").read_text()
    (directory / "minimized.prog").write_text(CORE)
    out = tmp_path / "elsewhere.c"
    assert main(["export-c", str(directory), "--kernel", "6.1-cloud", "-o", str(out)]) == 0
    source = out.read_text()
    assert "readdir p1 {m1}" not in source and finding.signature in source
    build(source, tmp_path)


@needs_gcc
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_without_root_it_says_so_and_exits_2(tmp_path):
    binary = build(reproducer(parse_text(CORE)), tmp_path)
    tmp_path.chmod(0o755)
    run = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(binary)],
                         capture_output=True, text=True, timeout=60)
    assert (run.returncode, run.stdout) == (2, "procfuzz-repro: cannot set up: run me as root (namespaces, mounts)\n")

LEAK_CORE = "m1 = mount_proc p1\nlookup p1 {m1}/{p1}\n"    # leak_dentry pins that dentry


def leak_reproducer() -> str:
    program = parse_text(LEAK_CORE)
    return export_c(program, ModelTarget(load_profile()).run(program), kernel="test-kernel",
                    summary="leak dentry", leaked=("dentry", "proc_inode_cache"))


@needs_gcc
def test_a_leak_reproducer_counts_the_leaked_caches_over_runs(tmp_path):
    source = leak_reproducer()
    header = source[:source.index("*/")]
    assert "runs the program 4 times" in header and "slab_nomerge" in header
    assert 'static const char *const LEAKED[N_LEAKED] = {\n\t"dentry",\n\t"proc_inode_cache",\n};' in source
    assert "EXPECTED" not in source and "settle_slab_counts" in source
    build(source, tmp_path)


# ---- in the guest --------------------------------------------------------------------------------

@pytest.mark.kernel
@needs_gcc
def test_a_leak_reproducer_reports_the_zoo_leak_and_is_silent_on_stock(tmp_path):
    from targets.qemu import QemuTarget
    files = {"opt/repro": build(leak_reproducer(), tmp_path).read_bytes()}
    with QemuTarget(zoo="leak_dentry", files=files) as target:
        leaking = target.run_file("/opt/repro")
    with QemuTarget(files=files) as target:
        stock = target.run_file("/opt/repro")
    assert leaking.status == "exit 1" and leaking.output.endswith("procfuzz-repro: LEAKS (2 caches)\n"), \
        leaking.output
    assert "dentry active objects after each run:" in leaking.output
    assert (stock.status, stock.output.splitlines()[-1]) == ("exit 0", "procfuzz-repro: OK"), stock.output

@pytest.fixture(scope="module")
def stale_pid_binary(tmp_path_factory):
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc")
    return build(reproducer(parse_text(STALE_PID_CORE)), tmp_path_factory.mktemp("repro")).read_bytes()


@pytest.mark.kernel
def test_reproducer_reports_the_zoo_bug(stale_pid_binary):
    from targets.qemu import QemuTarget
    with QemuTarget(zoo="stale_pid", files={"opt/repro": stale_pid_binary}) as target:
        run = target.run_file("/opt/repro")
    lines = run.output.splitlines()
    assert run.status == "exit 1", run.output
    assert lines == ["procfuzz-repro: op 5 `lookup p1 {m1}/{p2}`: expected ENOENT, got ok:dir",
                     "procfuzz-repro: DIVERGES (1 ops)"], run.output


@pytest.mark.kernel
def test_reproducer_is_silent_on_the_stock_kernel(stale_pid_binary):
    from targets.qemu import QemuTarget
    with QemuTarget(files={"opt/repro": stale_pid_binary}) as target:
        run = target.run_file("/opt/repro")
    assert (run.status, run.output) == ("exit 0", "procfuzz-repro: OK\n")


def test_an_op_kind_without_recipe_is_named(monkeypatch):
    from fuzz.triage import export_c as module
    monkeypatch.delitem(module.ACTOR_RECIPES, "readlink")
    with pytest.raises(ExportError, match="does not support the op.s. readlink"):
        reproducer(parse_text("m1 = mount_proc p1\nreadlink p1 {m1}/self\n"))


# The other zoo bugs (tests/test_zoo.py programs): threads, netlink, network namespaces, hidepid.
OTHER_ZOO_BUGS = ("stale_tid", "stale_sysctl", "sysctl_wrong_netns", "hidepid_wrong_mount")


@pytest.fixture(scope="module")
def zoo_binaries(tmp_path_factory):
    import test_zoo
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc")
    return {f"opt/{bug}": build(reproducer(getattr(test_zoo, bug.upper())), tmp_path_factory.mktemp(bug)).read_bytes()
            for bug in OTHER_ZOO_BUGS}


@pytest.mark.kernel
@pytest.mark.slow
@pytest.mark.parametrize("bug", OTHER_ZOO_BUGS)
def test_reproducers_of_the_other_zoo_bugs(bug, zoo_binaries):
    from targets.qemu import QemuTarget
    with QemuTarget(zoo=bug, files=zoo_binaries) as target:
        run = target.run_file(f"/opt/{bug}")
    assert run.status == "exit 1" and run.output.endswith("procfuzz-repro: DIVERGES (1 ops)\n"), run.output


@pytest.mark.kernel
@pytest.mark.slow
def test_reproducers_of_the_other_zoo_bugs_are_silent_on_the_stock_kernel(zoo_binaries):
    from targets.qemu import QemuTarget
    with QemuTarget(files=zoo_binaries) as target:
        runs = {path: target.run_file("/" + path) for path in zoo_binaries}
    assert {path: (run.status, run.output) for path, run in runs.items()} == \
        {path: ("exit 0", "procfuzz-repro: OK\n") for path in zoo_binaries}
