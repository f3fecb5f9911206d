"""Signatures and triage (no VM): finding directories from several workers, two nights and two
kernels, with duplicates, a known issue and broken directories, become one Bug per bug."""

import json
from pathlib import Path

import pytest

from fuzz.record import store
from fuzz.record.finding import Finding
from fuzz.record.signature import object_pattern
from fuzz.cli import main
from fuzz.record.known import load_known_issues
from fuzz.compare.leaks import Leak
from fuzz.compare.oracle import Divergence, compare
from fuzz.record.programs import load_program
from fuzz.triage.bugs import collect
from reference.program import parse_text
from reference.trace import Trace
from targets.kernels import load_profile
from targets.model_target import ModelTarget

ROOT = Path(__file__).resolve().parent.parent
KNOWN_FILE = ROOT / "corpus" / "known-issues.toml"
K61 = "linux-image-6.1.0-50-cloud-amd64-unsigned=6.1.176-1"
K612 = "linux-image-6.12.117+deb12-cloud-amd64-unsigned=6.12.117-1~deb12u1"
NIGHT1, NIGHT2 = 1_700_000_000, 1_700_086_400

ZOMBIE = "m1 = mount_proc p1\np2 = spawn p1\nexit p2\nreap p1 p2\nlookup p1 {m1}/{p2}\n"
ZOMBIE_NOISY = ("m1 = mount_proc p1\np2 = spawn p1\np3 = spawn p1\nexit p3\nexit p3\nreap p1 p3\n"
                "drop_caches\nlookup p1 {m1}/{p3}\n")
RENAMED = ("m1 = mount_proc p1\nlink_add p1 d0\nlookup p1 {m1}/sys/net/ipv4/conf/d0\n"
           "link_rename p1 d0 e0\nlookup p1 {m1}/sys/net/ipv4/conf/d0\n")
IPV6_DEV = (ROOT / "corpus" / "regressions" / "ipv6-forwarding-short-write.prog").read_text()
IPV6_ALL = "m1 = mount_proc p1\nf1 = open p1 {m1}/sys/net/ipv6/conf/all/forwarding rw=1\nwrite p1 f1 1\n"
CRASH_TITLE = "BUG: unable to handle page fault in proc_sys_compare"
HOSTILE_CONSOLE = ("[   12.345678] BUG: unable to handle page fault\n</pre><script>document.title='pwned'</script>"
                   "<img src=x onerror=\"document.title='pwned'\">\x1b[31m\x00 RIP: 0010:proc_sys_compare+0x1\n")

SIGNATURES = {
    "zombie": "stale lookup /proc/<pid> after reap",
    "renamed": "stale lookup /proc/sys/net/ipv4/conf/<dev> after link_rename",
    "ipv6_dev": "errno write /proc/sys/net/ipv6/conf/<dev>/forwarding",
    "ipv6_all": "errno write /proc/sys/net/ipv6/conf/all/forwarding",
    "crash": f"crash: {CRASH_TITLE}",
    "leak": "leak pid, task_struct",
}
# Triage's rows: one per bug key (class, object, kind of removal), each listing its signatures.
KEYS = {**SIGNATURES,
        "zombie": "stale /proc/<pid> after exit",
        "renamed": "stale /proc/sys/net after link_del",
        "ipv6_dev": "errno /proc/sys/net/ipv6/conf/<dev>",
        "ipv6_all": "errno /proc/sys/net/ipv6/conf/all"}


def _run(text: str, index: int, result: str, kernel: str, console: str = "") -> Finding:
    """A finding whose kernel answered ``result`` at op ``index`` where the model agreed otherwise."""
    program = parse_text(text)
    expected = ModelTarget(load_profile()).run(program)
    results = list(expected.results)
    results[index] = result
    actual = Trace(tuple(results), kernel=kernel)
    return Finding(program, expected, actual, compare(program, expected, actual), kernel, console)


def _crash(title: str, kernel: str) -> Finding:
    program = parse_text(RENAMED)
    expected = ModelTarget(load_profile()).run(program)
    actual = Trace(expected.results[:3], outcome="crash", title=title, kernel=kernel)
    return Finding(program, expected, actual, compare(program, expected, actual), kernel, HOSTILE_CONSOLE)


def _leak(kernel: str) -> Finding:
    program = parse_text(ZOMBIE)
    trace = ModelTarget(load_profile()).run(program)
    leak = Leak.of({"task_struct": [100, 101, 102, 103], "pid": [50, 51, 52, 53]})
    return Finding(program, trace, trace, Divergence.of_leak(leak), kernel, "", (3, 3))


FINDINGS = {
    "zombie": lambda k: _run(ZOMBIE, 4, "ok:dir", k),
    "zombie_noisy": lambda k: _run(ZOMBIE_NOISY, 7, "ok:dir", k),
    "renamed": lambda k: _run(RENAMED, 4, "ok:dir", k),
    "ipv6_dev": lambda k: _run(IPV6_DEV, 2, "ok:1", k),
    "ipv6_all": lambda k: _run(IPV6_ALL, 2, "ok:1", k),
    "crash": lambda k: _crash(CRASH_TITLE, k),
    "crash_spaced": lambda k: _crash(CRASH_TITLE.replace(" in ", "  in\t"), k),
    "leak": _leak,
}

# (shard directory, finding, kernel, recorded)
LAYOUT = [
    ("night1/worker0", "zombie", K61, NIGHT1), ("night1/worker1", "zombie", K61, NIGHT1 + 60),
    ("night1/worker1", "zombie_noisy", K61, NIGHT1 + 120), ("night2/6.12/worker0", "zombie", K612, NIGHT2),
    ("night1/worker0", "ipv6_dev", K61, NIGHT1 + 5), ("night2/6.12/worker0", "ipv6_dev", K612, NIGHT2 + 5),
    ("night1/worker1", "ipv6_all", K61, NIGHT1 + 7), ("night2/6.1/worker0", "ipv6_all", K61, NIGHT2 + 7),
    ("night2/6.12/worker1", "renamed", K612, NIGHT2 + 9),
    ("night2/6.1/worker0", "crash", K61, NIGHT2 + 11), ("night2/6.1/worker1", "crash_spaced", K61, NIGHT2 + 13),
    ("night2/6.1/worker1", "leak", K61, NIGHT2 + 15),
]


def record_at(out: Path, finding: Finding, recorded: int) -> Path:
    directory, _ = store.record(out, finding)
    meta = json.loads((directory / "meta.json").read_text())
    (directory / "meta.json").write_text(json.dumps({**meta, "recorded": recorded}))
    return directory


def build_runs(root: Path) -> dict[str, list[Path]]:
    """The nightly tree: finding name -> its directories; plus two broken findings, a staging
    leftover, and what minimise/reproduce/export-c leave next to the smallest zombie program."""
    made: dict[str, list[Path]] = {}
    for shard, name, kernel, recorded in LAYOUT:
        made.setdefault(name, []).append(record_at(root / shard, FINDINGS[name](kernel), recorded))
    broken = root / "night1" / "worker0" / "findings"
    (broken / "0000badbadbad000").mkdir()
    (broken / "0000badbadbad000" / "meta.json").write_text("{")
    half = broken / "1111half1111half"
    half.mkdir()
    (half / "program.json").write_text(parse_text(ZOMBIE).to_json())
    (broken / ".tmp-staging").mkdir()
    first, *_ = sorted(made["zombie"])
    (first / "minimized.prog").write_text("m1 = mount_proc p1\np2 = spawn p1\nexit p2\nreap p1 p2\nlookup p1 {m1}/{p2}\n")
    (first / "repro.c").write_text("int main(void) { /* </pre><script>alert(1)</script> */ return 0; }\n")
    for directory, kernel, counts in ((made["zombie"][0], K61, (3, 3)), (made["zombie"][2], K612, (1, 3)),
                                      (made["renamed"][0], K612, (0, 2))):
        (directory / "reproducibility.json").write_text(
            json.dumps({kernel: {"diverged": counts[0], "runs": counts[1]}}))
    (made["zombie"][1] / "reproducibility.json").write_text(json.dumps({K61: {"diverged": 4, "runs": 2}}))
    return made


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "nightly"
    return root, build_runs(root)


def triage(root: Path, *more: Path):
    warnings: list[str] = []
    bugs = collect([root, *more], load_known_issues(KNOWN_FILE), warn=warnings.append)
    return {bug.signature: bug for bug in bugs}, [b.signature for b in bugs], warnings


# ---- signatures ----------------------------------------------------------------------------------

def _signature(text: str, index: int, cls: str = "stale") -> str:
    program = parse_text(text)
    trace = Trace(("ok",) * len(program))
    return Finding(program, trace, trace, Divergence(cls, index, "", "", ""), "k").signature


@pytest.mark.parametrize("text, index, signature", [
    (ZOMBIE, 4, "stale lookup /proc/<pid> after reap"),
    ("m1 = mount_proc p1\np2 = spawn p1\nt1 = spawn_thread p2\np3 = spawn p1\nexit t1\nexit p3\n"
     "readdir p1 {m1}/{p2}/task\n", 6, "stale readdir /proc/<pid>/task after exit"),
    ("m1 = mount_proc p1\np2 = spawn p1\nt1 = spawn_thread p2\nf1 = open p1 {m1}/{p2}/task/{t1}/comm\n"
     "exec t1\nread p1 f1\n", 5, "stale read /proc/<pid>/task/<pid>/comm after exec"),
    ("m1 = mount_proc p1\nlink_add p1 v0 kind=veth peer=v1\nf1 = open p1 {m1}/sys/net/ipv4/conf/v1/forwarding rw=1\n"
     "link_rename p1 v1 w1\nlink_rename p1 v0 x0\nlink_up p1 x0\nwrite p1 f1 1\n", 6,
     "stale write /proc/sys/net/ipv4/conf/<dev>/forwarding after link_rename"),
    ("m1 = mount_proc p1\nlink_add p1 v0 kind=veth peer=v1\nlink_add p1 d0\nlink_del p1 v0\n"
     "link_set_netns p1 d0 p1\nlookup p1 {m1}/sys/net/ipv4/conf/v1\n", 5,
     "stale lookup /proc/sys/net/ipv4/conf/<dev> after link_del"),
    ("m1 = mount_proc p1\np2 = spawn p1\nlink_add p1 d0\nunshare_net p1\nlink_del p1 d0\n"
     "readdir p1 {m1}/sys/net/ipv4/conf\n", 5, "stale readdir /proc/sys/net/ipv4/conf after link_del"),
    ("m1 = mount_proc p1\np2 = spawn p1\nunshare_net p2\nsetns_net p1 p2\nexit p2\n"
     "lookup p1 {m1}/sys/net/ipv4/conf/lo\n", 5, "stale lookup /proc/sys/net/ipv4/conf/<dev> after setns_net"),
    ("m1 = mount_proc p1 hidepid=invisible\np2 = spawn p1\nsetuid p1 1000\nexit p2\nlookup p1 {m1}/{p2}\n", 4,
     "stale lookup /proc/<pid> after exit"),
    ("m1 = mount_proc p1 hidepid=invisible\np2 = spawn p1\nsetuid p1 1000\nlookup p1 {m1}/{p2}\n", 3,
     "stale lookup /proc/<pid> after setuid"),
    ("m1 = mount_proc p1\nm2 = mount_proc p1\nchdir p1 {m1}/self\numount p1 m2\numount p1 m1 lazy=1\n"
     "readdir p1 fd\n", 5, "stale readdir fd after umount"),
    ("m1 = mount_proc p1\nf1 = open p1 {m1}/meminfo\nf2 = open p1 {m1}/meminfo\nclose p1 f1\nclose p1 f2\n"
     "lookup p1 {m1}/{p1}/fd/{f1}\n", 5, "stale lookup /proc/<pid>/fd/<fd> after close"),
    ("m1 = mount_proc p1\np2 = spawn p1\ndrop_caches\nlink_add p1 d0\nlookup p1 {m1}/{p2}/status\n", 4,
     "stale lookup /proc/<pid>/status"),
    ("p2 = spawn p1\nexit p2\nreap p1 p2\n", 2, "stale reap"),
])
def test_divergence_signature_names_the_op_that_removed_the_object(text, index, signature):
    assert _signature(text, index) == signature


@pytest.mark.parametrize("incidental", [
    "setns_net p1 p2\n", "unshare_net p1\n", "umount p1 m1 lazy=1\n", "setuid p1 1000\n",
    "link_del p1 d0\n", "link_rename p1 d0 e0\n", "exit p2\n", "drop_caches\nlink_down p1 d0\n",
])
def test_ops_that_leave_a_held_fd_s_object_alone_do_not_split_the_known_short_write(incidental):
    """The fd keeps the table it opened: later netns, mount or credential changes, and other
    devices' removal, are not what makes its write short."""
    text = ("m1 = mount_proc p1\np2 = spawn p1\nunshare_net p2\nlink_add p1 d0\n"
            "f1 = open p1 {m1}/sys/net/ipv6/conf/all/forwarding rw=1\n" + incidental + "write p1 f1 1\n")
    assert _signature(text, len(parse_text(text)) - 1, "errno") == SIGNATURES["ipv6_all"]


def test_signature_ignores_handles_devices_and_unrelated_ops():
    variants = [RENAMED, RENAMED.replace("d0", "eth7").replace("e0", "foo"),
                "m1 = mount_proc p1\np2 = spawn p1\nlink_add p1 d3\nlink_add p1 d9\nexit p2\ndrop_caches\n"
                "link_rename p1 d3 q3\nlink_up p1 d9\nlookup p1 {m1}/sys/net/ipv4/conf/d3\n"]
    assert {_signature(text, len(parse_text(text)) - 1) for text in variants} == {SIGNATURES["renamed"]}


def test_crash_hang_and_leak_signatures():
    assert FINDINGS["crash"](K61).signature == FINDINGS["crash_spaced"](K612).signature == SIGNATURES["crash"]
    program = parse_text(ZOMBIE)
    hang = Divergence("hang", 0, "", "", "hang", "INFO: task hung:\n  agent")
    assert Finding(program, Trace(()), Trace(()), hang, "k").signature == "hang: INFO: task hung: agent"
    assert _leak(K61).signature == SIGNATURES["leak"]


def test_known_ipv6_short_write_matches_its_known_issue_entry():
    finding = FINDINGS["ipv6_dev"](K61)
    assert (finding.divergence.cls, finding.divergence.index) == ("errno", 2)
    assert finding.program == load_program(ROOT / "corpus" / "regressions" / "ipv6-forwarding-short-write.prog")
    entry = load_known_issues(KNOWN_FILE).match(finding.program, finding.expected, finding.divergence, K61)
    assert "addrconf_fixup_forwarding" in entry.note and K61 in entry.kernels
    assert (entry.expected, entry.actual) == ("ok", "ok:1")
    assert load_known_issues(KNOWN_FILE).match(finding.program, finding.expected, finding.divergence, K612) is None


# ---- collect -------------------------------------------------------------------------------------

def test_one_bug_per_key_across_workers_nights_and_kernels(runs):
    root, made = runs
    bugs, order, warnings = triage(root)
    assert sorted(bugs) == sorted(KEYS.values())
    zombie = bugs[KEYS["zombie"]]
    assert dict(zombie.symptoms) == {SIGNATURES["zombie"]: zombie.count}
    assert (zombie.cls, zombie.count, zombie.kernels) == ("stale", 4, (K61, K612))
    assert (zombie.first_seen, zombie.last_seen) == (NIGHT1, NIGHT2)
    assert zombie.representative.program == parse_text(ZOMBIE)       # the smallest of the programs
    assert zombie.directory == sorted(made["zombie"])[0]
    assert set(zombie.directories) == set(made["zombie"] + made["zombie_noisy"])
    crash = bugs[KEYS["crash"]]
    assert (crash.count, crash.kernels, crash.first_seen, crash.last_seen) == (2, (K61,), NIGHT2 + 11, NIGHT2 + 13)
    assert bugs[KEYS["leak"]].cls == "leak"
    assert bugs[KEYS["renamed"]].count == 1


def test_known_issues_are_matched_per_kernel_and_new_bugs_come_first(runs):
    root, _ = runs
    bugs, order, _ = triage(root)
    known_everywhere = bugs[KEYS["ipv6_all"]]
    assert not known_everywhere.is_new and known_everywhere.status() == "known"
    assert known_everywhere.count == 2 and known_everywhere.note
    partly = bugs[KEYS["ipv6_dev"]]        # known on 6.1.176 only, also seen on 6.12
    assert partly.is_new and partly.known_on == (K61,) and partly.status() == f"new on {K612}"
    # A bug that re-runs showed on no kernel is unconfirmed: neither new nor known.
    renamed = bugs[KEYS["renamed"]]
    assert not renamed.is_new and not renamed.is_known and renamed.status() == "unconfirmed"
    assert renamed.unconfirmed == f"did not reproduce on {K612}"
    assert [bugs[s].status().split()[0] for s in order] == ["new"] * 4 + ["unconfirmed", "known"]
    assert order[0] == KEYS["zombie"]      # then by count


def test_an_entry_without_kernels_matches_every_kernel(runs, tmp_path):
    root, _ = runs
    known = tmp_path / "known.toml"
    known.write_text(f'[[issue]]\nsignature = "{SIGNATURES["zombie"]}"\nexpected = "ENOENT"\nactual = "ok:dir"\n'
                     'note = "reported upstream"\n')
    bugs = {b.signature: b for b in collect([root], load_known_issues(known), warn=lambda m: None)}
    assert not bugs[KEYS["zombie"]].is_new and bugs[KEYS["zombie"]].note == "reported upstream"
    assert bugs[KEYS["ipv6_all"]].is_new   # not in this file


def test_broken_findings_are_skipped_with_a_warning(runs):
    root, _ = runs
    _, _, warnings = triage(root, root / "vanished")
    assert f"skipped {root / 'vanished'}: No such file or directory" in warnings
    assert len([w for w in warnings if "not a readable finding" in w]) == 2
    assert any("0000badbadbad000" in w for w in warnings) and any("1111half1111half" in w for w in warnings)
    assert not any(".tmp-staging" in w for w in warnings)


def test_overlapping_directories_count_each_finding_once(runs):
    root, _ = runs
    bugs, _, _ = triage(root, root / "night1", root / "night2" / "6.12" / "worker0" / "findings")
    assert bugs[KEYS["zombie"]].count == 4


def test_artifacts_of_minimisation_and_reproduction(runs):
    root, made = runs
    bugs, _, warnings = triage(root)
    zombie = bugs[KEYS["zombie"]]
    assert zombie.minimized == parse_text(ZOMBIE)
    assert zombie.repro_c == zombie.directory / "repro.c"
    assert zombie.reproducibility == {K61: (3, 3), K612: (1, 3)}
    assert zombie.verdict(K61) == "reliable (3 of 3)" and zombie.verdict(K612) == "flaky (1 of 3)"
    renamed = bugs[KEYS["renamed"]]
    assert renamed.verdict(K612) == "not reproducible (0 of 2)" and renamed.minimized is None
    assert any("reproducibility.json: ignored" in w for w in warnings)      # 4 of 2 runs
    assert bugs[KEYS["crash"]].reproducibility == {}


# ---- the command ---------------------------------------------------------------------------------

def test_triage_command_prints_one_line_per_bug_and_exits_1_on_new_bugs(runs, tmp_path, capsys):
    root, _ = runs
    out = tmp_path / "report"
    assert main(["triage", str(root), "--known", str(KNOWN_FILE), "--report", str(out)]) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == len(SIGNATURES) + 1 and lines[-1].startswith("6 bugs, 4 new, 1 unconfirmed")
    assert lines[-3].startswith("unconfirmed") and lines[-3].endswith("(did not reproduce on " + K612 + ")")
    assert lines[0].startswith("new") and KEYS["zombie"] in lines[0]
    assert lines[-2].startswith("known") and KEYS["ipv6_all"] in lines[-2]
    assert "1111half1111half" in captured.err and "Traceback" not in captured.err
    for name in ("report.md", "report.html", "report.json", "junit.xml", "report.sarif"):
        assert (out / name).is_file()


def test_triage_command_exits_0_when_everything_is_known(tmp_path, capsys):
    record_at(tmp_path / "run", FINDINGS["ipv6_all"](K61), NIGHT1)
    assert main(["triage", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "report" / "report.html").is_file()
    assert capsys.readouterr().out.splitlines()[-1].startswith("1 bugs, 0 new")


def test_triage_command_with_no_findings_writes_empty_reports(tmp_path):
    (tmp_path / "clean-night").mkdir()
    assert main(["triage", str(tmp_path / "clean-night"), "--report", str(tmp_path / "r")]) == 0
    assert json.loads((tmp_path / "r" / "report.json").read_text())["bugs"] == []


@pytest.mark.parametrize("setup, args, message", [
    (lambda d: None, ["{d}/nope"], "not a directory"),
    (lambda d: None, ["{d}", "--known", "{d}/missing.toml"], "no known-issues file"),
    (lambda d: (d / "bad.toml").write_text("[[issue]]\nnote = 1\n"), ["{d}", "--known", "{d}/bad.toml"],
     "needs a 'signature' string"),
    (lambda d: (d / "file").write_text(""), ["{d}", "--report", "{d}/file/sub"], "cannot write the reports"),
])
def test_triage_command_errors_exit_2(tmp_path, capsys, setup, args, message):
    setup(tmp_path)
    assert main(["triage", *(a.format(d=tmp_path) for a in args)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bug_key_groups_one_object_across_ops_files_and_removals():
    def key(text: str, cls: str) -> str:
        program = parse_text(text)
        trace = Trace(("ok",) * len(program))
        return Finding(program, trace, trace, Divergence(cls, len(program) - 1, "", "", ""), "k").bug_key
    stale = {key("m1 = mount_proc p1\np2 = spawn p1\nexit p2\nreap p1 p2\n" + last, "stale")
             for last in ("lookup p1 {m1}/{p2}", "readdir p1 {m1}/{p2}/task", "readlink p1 {m1}/{p2}/cwd")}
    stale.add(key("m1 = mount_proc p1\np2 = spawn p1\nt1 = spawn_thread p2\nexec t1\nlookup p1 {m1}/{p2}/comm\n",
                  "stale"))
    assert stale == {"stale /proc/<pid> after exit"}
    # A missing device is one the observer should see: the move that brought it is no removal.
    moved = "m1 = mount_proc p1\np2 = spawn p1\nunshare_net p2\nlink_add p1 d0\nlink_set_netns p1 d0 p2\n"
    assert key(moved + "lookup p2 {m1}/sys/net/ipv4/conf/d0\n", "missing") == \
        key("m1 = mount_proc p1\np2 = spawn p1\nunshare_net p2\nlink_add p2 d1\n"
            "lookup p2 {m1}/sys/net/ipv4/conf/d1/forwarding\n", "missing") == \
        "wrong /proc/sys/net"


def test_the_exit_of_a_pid_namespace_init_removes_the_tasks_inside():
    text = "m1 = mount_proc p1\np2 = spawn p1 newpid=1\np3 = spawn p2\nexit p2\nlookup p1 {m1}/{p3}\n"
    assert _signature(text, 4) == "stale lookup /proc/<pid> after exit"


def _model_finding(text: str, actual_of_last: str) -> Finding:
    """A finding whose last op answered ``actual_of_last`` where the model (run here) says
    otherwise; every other op as the model says."""
    program = parse_text(text)
    model = ModelTarget(load_profile()).run(program)
    actual = Trace(model.results[:-1] + (actual_of_last,))
    divergence = compare(program, model, actual)
    assert divergence is not None and divergence.index == len(program) - 1
    return Finding(program, model, actual, divergence, "k")


CWD_IN_DEAD_TASK = ("m1 = mount_proc p1\np2 = spawn p1\np3 = spawn p1\nchdir p3 {m1}/{p2}\n"
                    "umount p1 m1\nexit p2\nreap p1 p2\nreadlink p3 {m1}/{p3}/cwd\n")


def test_a_readlink_missing_only_deleted_is_about_the_link_target():
    """d_path adds " (deleted)" for an unhashed dentry: without it the target's dentry outlived
    its task, so the finding joins that task's row, and the failed umount (EBUSY: the cwd is in
    the mount) removed nothing."""
    finding = _model_finding(CWD_IN_DEAD_TASK, "ok:/mnt/m1/2")
    assert finding.divergence.expected == "ok:/mnt/m1/2 (deleted)"
    assert finding.expected.results[4] == "EBUSY"
    assert finding.signature == "stale readlink /proc/<pid>/cwd -> /proc/<pid> after reap"
    assert finding.bug_key == "stale /proc/<pid> after exit"
    # A readlink that fails is about the link's own task directory (alive: no removal).
    failed = _model_finding(CWD_IN_DEAD_TASK, "ENOENT")
    assert failed.bug_key == "wrong /proc/<pid>"


def test_sysctl_dentries_are_one_object_for_lifetime_bugs():
    """A held fd in ipv6/neigh/<dev> after link_del and a lookup in ipv4/conf/<dev> after a
    rename show the same bug (a dead table's dentry stays); so do a lookup that finds another
    namespace's table (stale) and one that misses its own (missing) through a cwd inherited
    at spawn.  errno keys keep the table."""
    held = ("m1 = mount_proc p1\nlink_add p1 d0\nf1 = open p1 {m1}/sys/net/ipv6/neigh/d0/retrans_time\n"
            "link_del p1 d0\nreadlink p1 {m1}/{p1}/fd/{f1}\n")
    finding = _model_finding(held, "ok:/mnt/m1/sys/net/ipv6/neigh/d0/retrans_time")
    assert finding.signature == ("stale readlink /proc/<pid>/fd/<fd> -> /proc/sys/net/ipv6/neigh/<dev>/retrans_time "
                                 "after link_del")
    renamed = _model_finding(RENAMED, "ok:dir")
    assert finding.bug_key == renamed.bug_key == "stale /proc/sys/net after link_del"
    other_netns = ("m1 = mount_proc p1\np2 = spawn p1\nunshare_net p2\nlink_add p2 d1\n"
                   "lookup p2 {m1}/sys/net/ipv4/conf/d1\nlookup p1 {m1}/sys/net/ipv4/conf/d1\n")
    inherited_cwd = ("m1 = mount_proc p1\np3 = spawn p1\nchdir p1 {m1}/sys/net/ipv4/neigh\nunshare_net p1\n"
                     "p2 = spawn p1\ngetdents p2 cwd\n")      # p3 keeps the first namespace alive
    assert _model_finding(other_netns, "ok:dir").bug_key == _model_finding(inherited_cwd, "ENOENT").bug_key == \
        "wrong /proc/sys/net"
    assert object_pattern("{m1}/sys/net/ipv6/conf/d0/forwarding") == "/proc/sys/net/ipv6/conf/<dev>"


@pytest.mark.parametrize("last", ["setns_net p1 p2", "link_set_netns p1 d0 p2",
                                  "link_add p1 v0 kind=veth peer=v1 peer_in=p2"])
def test_ops_naming_a_task_are_keyed_on_that_task(last):
    """setns_net and link_set_netns open the target's /proc/<pid>/ns/net: ESRCH there is the
    dead task's stale /proc/<pid> dentry, the same bug a lookup shows (so does a veth whose
    peer goes to that task's netns)."""
    text = ("m1 = mount_proc p1\np2 = spawn p1\nlink_add p1 d0\nunshare_net p2\nexit p2\nreap p1 p2\n"
            "unshare_net p1\n" + last + "\n")
    finding = _model_finding(text, "ESRCH")
    assert finding.divergence.cls == "stale"
    assert finding.signature == f"stale {last.split()[0]} /proc/<pid>/ns/net after reap"   # not unshare_net
    assert finding.bug_key == _model_finding(ZOMBIE, "ok:dir").bug_key == "stale /proc/<pid> after exit"


def test_the_end_of_an_object_outranks_a_later_change_of_the_observer():
    """After the task's exit, the observer's setuid explains nothing a hidepid lookup shows."""
    text = ("m1 = mount_proc p1 hidepid=invisible\np2 = spawn p1\nexit p2\nreap p1 p2\nsetuid p1 1000\n"
            "lookup p1 {m1}/{p2}\n")
    finding = _model_finding(text, "ok:dir")
    assert finding.divergence.cls == "stale"
    assert finding.signature == "stale lookup /proc/<pid> after reap"
    assert finding.bug_key == "stale /proc/<pid> after exit"


def test_a_leak_seen_with_fewer_caches_joins_the_fuller_leak_of_its_kernel(tmp_path):
    """A count that dipped once drops out of a leak's signature (fuzz/leaks.py leaking)."""
    model = ModelTarget(load_profile())

    def leak(text: str, caches: tuple[str, ...], kernel: str) -> Finding:
        program = parse_text(text)
        trace = model.run(program)
        leak = Leak.of({cache: [10, 11, 12, 13] for cache in caches})
        return Finding(program, trace, trace, Divergence.of_leak(leak), kernel)
    full = ("dentry", "pid_namespace", "proc_inode_cache")
    record_at(tmp_path / "a", leak(ZOMBIE, full, K61), NIGHT1)
    record_at(tmp_path / "a", leak(RENAMED, ("pid_namespace",), K61), NIGHT1)
    record_at(tmp_path / "a", leak(IPV6_ALL, ("dentry", "pid_namespace"), K61), NIGHT1)
    record_at(tmp_path / "b", leak(ZOMBIE, ("pid_namespace",), K612), NIGHT2)   # no fuller leak there
    rows = {bug.signature: (bug.count, bug.kernels) for bug in collect([tmp_path])}
    assert rows == {"leak dentry, pid_namespace, proc_inode_cache": (3, (K61,)),
                    "leak pid_namespace": (1, (K612,))}


def test_a_change_of_view_is_no_end_of_the_object():
    """After unshare_net the name means the new namespace's table: finding the old one is a
    wrong lookup (measured with sysctl_wrong_netns), not a dentry that outlived its table.
    /proc/<pid>/net goes with its task."""
    other_view = ("m1 = mount_proc p1\nlink_add p1 d0\nlookup p1 {m1}/sys/net/ipv4/conf/d0\np2 = spawn p1\n"
                  "unshare_net p1\nlookup p1 {m1}/sys/net/ipv4/conf/d0\n")
    finding = _model_finding(other_view, "ok:dir")
    assert finding.signature == "stale lookup /proc/sys/net/ipv4/conf/<dev> after unshare_net"
    assert finding.bug_key == "wrong /proc/sys/net"
    task_net = "m1 = mount_proc p1\np2 = spawn p1\nexit p2\nreap p1 p2\nlookup p1 {m1}/{p2}/net/dev\n"
    assert _model_finding(task_net, "ok:reg").bug_key == "stale /proc/<pid> after exit"


def test_an_unconfirmed_leak_is_neither_new_nor_known(tmp_path, capsys):
    program = parse_text(ZOMBIE)
    trace = ModelTarget(load_profile()).run(program)
    leak = Divergence.of_leak(Leak.of({"dentry": [10, 11, 12, 13]}))
    record_at(tmp_path / "run", Finding(program, trace, trace, leak, K61, "", (3, 8)), NIGHT1)
    [bug] = collect([tmp_path])
    assert (bug.status(), bug.unconfirmed) == ("unconfirmed", "the leak did not confirm in a fresh VM")
    assert main(["triage", str(tmp_path / "run")]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("1 bugs, 0 new, 1 unconfirmed")
